"""The real `milcompress` console script, in a subprocess, for each command and each bad input."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import coremltools as ct
from milcompress._coremltools import IOS17, IOS18, mb, types

SCRIPT = shutil.which("milcompress", path=str(Path(sys.executable).parent)) or "milcompress"


def cli(*args, cwd=None):
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _program(opset, nested=False):
    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.normal(0, 0.1, s).astype(np.float16) for s in [(128, 64), (64, 128), (64, 64)])

    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=opset)
    def prog(x):
        y = mb.relu(x=mb.linear(x=x, weight=mb.const(val=w1, name="w1"), name="fc1"))
        y = mb.linear(x=y, weight=mb.const(val=w2, name="w2"), name="fc2")
        if nested:
            flag = mb.greater(x=mb.reduce_sum(x=y), y=np.float16(0))
            y = mb.cond(
                pred=flag,
                _true_fn=lambda: mb.linear(x=y, weight=mb.const(val=w3, name="w3"), name="inner"),
                _false_fn=lambda: mb.relu(x=y),
                name="branch",
            )
        return y

    return prog


def _save(prog, path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset, pass_pipeline=ct.PassPipeline.EMPTY).save(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "ios18": _save(_program(IOS18), root / "dense18.mlpackage", IOS18),
        "ios17": _save(_program(IOS17), root / "dense17.mlpackage", IOS17),
        "nested": _save(_program(IOS18, nested=True), root / "nested.mlpackage", IOS18),
    }


def _digest(package: Path) -> dict:
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*")) if p.is_file()}


def test_run_with_a_pipeline_writes_a_compressed_package(models, tmp_path):
    out = tmp_path / "out.mlpackage"
    result = cli("run", models["ios18"], "-o", out, "--pipeline", "PALETTIZE_4BIT", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("passes: milcompress::palettize_weights_4bit\n")
    assert "w1" in result.stdout and "LUT 4-bit" in result.stdout and "compressed 2 of 2 weights" in result.stdout
    assert out.is_dir() and not list(tmp_path.glob(".out.mlpackage.*"))  # no staging left behind
    report = json.loads((tmp_path / "r.json").read_text())
    assert report[0]["totals"]["compressed"] == 2
    inspected = json.loads(cli("inspect", out, "--json").stdout)
    forms = {w["name"]: w["form"] for w in inspected["weights"]}
    assert forms == {"w1_palettized": "LUT 4-bit", "w2_palettized": "LUT 4-bit", "fc1_bias_0": "dense float16", "fc2_bias_0": "dense float16"}
    assert inspected["opsets"] == {"main": "iOS18"}


def test_the_same_input_and_config_give_byte_identical_packages(models, tmp_path):
    outputs = []
    for i in range(2):
        out = tmp_path / f"out{i}.mlpackage"
        assert cli("run", models["ios18"], "-o", out, "--pipeline", "INT4_BLOCK32").returncode == 0
        outputs.append(_digest(out))
    assert outputs[0] == outputs[1]


def test_passes_spec_prints_back_as_parsed_and_config_files_work(models, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("config_type: OpPalettizerConfig\nglobal_config:\n  nbits: 2\n  weight_threshold: 100\n")
    spec = f"palettize_weights{{config={config}, on_unsupported = skip}} ,common::dead_code_elimination"
    result = cli("run", models["ios18"], "-o", tmp_path / "a.mlpackage", "--passes", spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"passes: milcompress::palettize_weights{{config={config},on_unsupported=skip}},common::dead_code_elimination"
    assert "LUT 2-bit" in result.stdout
    ours = tmp_path / "ours.yaml"
    ours.write_text("config_type: LinearQuantizeConfig\nglobal_config:\n  dtype: int4\n  granularity: per_block\n  block_size: 16\n")
    result = cli("run", models["ios18"], "-o", tmp_path / "b.mlpackage", "--config", ours)
    assert result.returncode == 0 and "int4 blocks 1x16" in result.stdout


def test_dry_run_writes_nothing(models, tmp_path):
    result = cli("run", models["ios18"], "--pipeline", "PRUNE_2_4", "--dry-run")
    assert result.returncode == 0 and "dry run: nothing written" in result.stdout and "sparse 50%" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_replaced_only_with_force(models, tmp_path):
    out = tmp_path / "out.mlpackage"
    assert cli("run", models["ios18"], "-o", out, "--pipeline", "INT8").returncode == 0
    before = _digest(out)
    result = cli("run", models["ios18"], "-o", out, "--pipeline", "PALETTIZE_4BIT")
    assert result.returncode == 2 and "already exists (pass --force to replace it)" in result.stderr
    assert _digest(out) == before
    assert cli("run", models["ios18"], "-o", out, "--pipeline", "PALETTIZE_4BIT", "--force").returncode == 0
    assert _digest(out) != before


def test_the_input_is_never_modified(models, tmp_path):
    before = _digest(models["ios18"])
    assert cli("run", models["ios18"], "-o", tmp_path / "o.mlpackage", "--pipeline", "PRUNE_75").returncode == 0
    assert _digest(models["ios18"]) == before


def test_nested_blocks(models, tmp_path):
    result = cli("run", models["nested"], "-o", tmp_path / "o.mlpackage", "--pipeline", "PALETTIZE_6BIT")
    assert result.returncode == 0, result.stderr
    assert "compressed 3 of 3 weights" in result.stdout


def test_models_with_several_functions_keep_them_and_share_weights(models, tmp_path):
    descriptor = ct.utils.MultiFunctionDescriptor()
    descriptor.add_function(str(models["ios18"]), "main", "plain")
    descriptor.add_function(str(models["nested"]), "main", "nested")
    descriptor.default_function_name = "plain"
    multi = tmp_path / "multi.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.utils.save_multifunction(descriptor, str(multi))
    out = tmp_path / "o.mlpackage"
    result = cli("run", multi, "-o", out, "--pipeline", "PALETTIZE_4BIT")
    assert result.returncode == 0, result.stderr
    assert "compressed 5 of 5 weights" in result.stdout and "plain/w1" in result.stdout and "nested/w3" in result.stdout
    spec = ct.utils.load_spec(str(out))
    assert spec.description.defaultFunctionName == "plain"
    assert sorted(f.name for f in spec.description.functions) == ["nested", "plain"]
    inspected = json.loads(cli("inspect", out, "--json").stdout)
    assert inspected["opsets"] == {"nested": "iOS18", "plain": "iOS18"}
    assert {(w["function"], w["form"]) for w in inspected["weights"] if w["name"] == "w1_palettized"} == {("plain", "LUT 4-bit"), ("nested", "LUT 4-bit")}
    # w1 and w2 are stored once for both functions, as save_multifunction stored them dense.
    blob = out / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    stored = sum(w["stored_bytes"] for w in inspected["weights"])
    shared = sum(w["stored_bytes"] for w in inspected["weights"] if w["function"] == "plain")
    assert blob.stat().st_size < stored - shared // 2


def test_inspect_pipelines_and_passes():
    from milcompress.passes.pipelines import PIPELINES

    result = cli("pipelines")
    assert result.returncode == 0 and [line.split()[0] for line in result.stdout.splitlines()] == list(PIPELINES)
    result = cli("passes")
    assert result.returncode == 0 and "milcompress::palettize_weights " in result.stdout
    assert "milcompress::decompress_weights" in result.stdout


def test_inspect_table(models):
    result = cli("inspect", models["ios18"])
    assert result.returncode == 0
    assert "w1" in result.stdout and "dense float16" in result.stdout and "opset main: iOS18" in result.stdout


def _truncated(models, tmp_path):
    broken = tmp_path / "truncated.mlpackage"
    shutil.copytree(models["ios18"], broken)
    weights = next(broken.rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:100])
    return broken


def _garbage_manifest(models, tmp_path):
    broken = tmp_path / "manifest.mlpackage"
    shutil.copytree(models["ios18"], broken)
    (broken / "Manifest.json").write_text("{not json")
    return broken


def _garbage_model(models, tmp_path):
    broken = tmp_path / "model.mlpackage"
    shutil.copytree(models["ios18"], broken)
    next(broken.rglob("model.mlmodel")).write_bytes(b"\x00garbage" * 10)
    return broken


def _neural_network(models, tmp_path):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.specificationVersion = 4
    spec.neuralNetwork.SetInParent()
    path = tmp_path / "old.mlmodel"
    path.write_bytes(spec.SerializeToString())
    return path


def _not_a_package(models, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m, t: t / "missing.mlpackage", "missing.mlpackage: no such file or directory"),
        (_not_a_package, "a directory without Manifest.json, so not an .mlpackage"),
        (_truncated, "truncated package: the program reads weights beyond the end of its weight file"),
        (_garbage_manifest, "corrupted package: Manifest.json is not valid JSON"),
        (_garbage_model, "corrupted package"),
        (_neural_network, "a neuralNetwork model; milcompress compresses ML programs (.mlpackage)"),
    ],
    ids=["missing", "not-a-package", "truncated-weights", "bad-manifest", "bad-model", "neural-network"],
)
def test_bad_inputs_get_one_clear_line_and_exit_2(models, tmp_path, make, message):
    path = make(models, tmp_path)
    result = cli("run", path, "-o", tmp_path / "out.mlpackage", "--pipeline", "INT8")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "out.mlpackage").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pipeline", "PALETTIZE_5BIT"], "unknown pipeline 'PALETTIZE_5BIT'; known pipelines: DEFAULT_PALETTIZATION"),
        (["--passes", "palettize_weightz"], "unknown pass 'milcompress::palettize_weightz'; milcompress passes are"),
        (["--passes", "palettize_weights{nbits=4}"], "unknown option 'nbits'; options are config"),
        (["--pipeline", "INT8", "--config", "x.yaml"], "give exactly one of --pipeline, --config, --passes"),
        (["--config", "missing.yaml"], "missing.yaml: no such config file"),
    ],
)
def test_bad_pipelines_and_passes(models, tmp_path, args, message):
    result = cli("run", models["ios18"], "-o", tmp_path / "o.mlpackage", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("config_type: PalettizeConfig\nglobal_config:\n  nbits: 4\n  groupsize: 8\n", "global_config.groupsize: unknown key"),
        ("config_type: PalettizeConfig\nglobal_config:\n  nbits: four\n", "global_config.nbits: must be an integer, got 'four'"),
        ("config_type: OpPalettizerConfig\nglobal_config:\n  mode: unique\n  nbits: 4\n", "coremltools rejects this OpPalettizerConfig"),
    ],
)
def test_bad_config_files_name_the_field(models, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = cli("run", models["ios18"], "-o", tmp_path / "o.mlpackage", "--config", config)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_config_needing_a_newer_opset_names_the_target(models, tmp_path):
    result = cli("run", models["ios17"], "-o", tmp_path / "o.mlpackage", "--pipeline", "INT4_BLOCK32")
    assert result.returncode == 2
    assert "needs minimum_deployment_target=ct.target.iOS18; the program targets iOS17" in result.stderr
    assert not (tmp_path / "o.mlpackage").exists()
    result = cli("run", models["ios17"], "-o", tmp_path / "o.mlpackage", "--pipeline", "INT4_BLOCK32", "--on-unsupported", "skip")
    assert result.returncode == 0 and "skipped: opset too old" in result.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback(models, tmp_path, where):
    args = ["run", models["ios18"], "-o", tmp_path / "o.mlpackage", "--pipeline", "NOPE"]
    result = cli(*(["--verbose", *args] if where == "before" else [*args, "--verbose"]))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_python_dash_m_works_too():
    result = subprocess.run([sys.executable, "-m", "milcompress", "pipelines"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "PALETTIZE_4BIT" in result.stdout


def test_verify_compares_outputs_on_random_and_given_inputs(models, tmp_path):
    small = tmp_path / "4bit.mlpackage"
    assert cli("run", models["nested"], "-o", small, "--pipeline", "PALETTIZE_4BIT").returncode == 0
    result = cli("verify", models["nested"], small, "--random", "3")
    assert result.returncode == 0, result.stderr
    assert "3 samples (3 random), computed in float32 by the reference executor" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("branch")]
    snr, psnr, cosine, min_cosine, max_error, top1 = row.split()[1:]
    assert 10 < float(snr) < 40 and 0.9 < float(cosine) < 1.0 and 0 <= float(top1) <= 1

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((5, 1, 64)).astype(np.float16))
    result = cli("verify", models["nested"], models["nested"], "--inputs", inputs, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 5 and report["precision"] == "float32"
    (output,) = report["outputs"]
    assert output["max_abs_error"] == 0.0 and output["cosine"] == 1.0 and output["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of --inputs FILE.npz or --random N"),
        (["--random", "2", "--inputs", "x.npz"], "give exactly one of --inputs FILE.npz or --random N"),
        (["--inputs", "missing.npz"], "missing.npz: no such file"),
        (["--random", "0"], "random must be a positive number of samples"),
    ],
)
def test_verify_usage_errors_exit_2(models, args, message):
    result = cli("verify", models["ios18"], models["ios18"], *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_verify_names_the_inputs_a_model_takes(models, tmp_path):
    inputs = tmp_path / "wrong.npz"
    np.savez(inputs, image=np.zeros((1, 64), np.float16))
    result = cli("verify", models["ios18"], models["ios18"], "--inputs", inputs)
    assert result.returncode == 2
    assert "unknown input(s) image; the model takes x [1, 64]" in result.stderr


def test_run_to_a_target_size(models, tmp_path):
    out, report = tmp_path / "sized.mlpackage", tmp_path / "report.json"
    result = cli("run", models["ios18"], "-o", out, "--target-bpw", "5", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "passes: milcompress::compress_to_size{target_bits_per_weight=5}" in result.stdout
    assert "size allocation: " in result.stdout
    assert re.search(r"time: calibration \d+\.\d s, evaluation \d+\.\d s, sensitivity \d+\.\d s, allocation \d+\.\d s, rewrite \d+\.\d s", result.stdout)
    summary = json.loads(report.read_text())[0]["summary"]
    assert summary["bits_per_weight"] <= 5.0 and len(summary["choices"]) == 2
    assert set(summary["seconds"]) == {"calibration", "evaluation", "sensitivity", "allocation", "rewrite"}

    inputs = tmp_path / "calibration.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((4, 1, 64)).astype(np.float16))
    result = cli("run", models["ios18"], "-o", tmp_path / "calibrated.mlpackage", "--target-bpw", "5", "--calibration", inputs,
                 "--error-feedback", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "activation-weighted" in result.stdout and "error_feedback=true" in result.stdout
    notes = [note for record in json.loads(report.read_text())[0]["consts"] for note in record.get("notes") or []]
    assert any("error feedback" in note for note in notes)

    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--target-bpw", "0.5")
    assert result.returncode == 2 and "below the smallest size the candidate forms reach" in result.stderr
    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--pipeline", "INT8", "--calibration", inputs)
    assert result.returncode == 2 and "--calibration, --sensitivity-seconds and --error-feedback go with --target-bpw" in result.stderr
    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--target-bpw", "5", "--error-feedback")
    assert result.returncode == 2 and "--error-feedback needs --calibration" in result.stderr
