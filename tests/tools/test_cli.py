"""The command line, each command and each bad input: in-process through the console script's
`main(argv)` (its output and exit code exactly as a shell sees them), and, where only a real
process can tell (the installed entry point, `python -m`, tracebacks, exit codes, what a fast
command imports), in a subprocess."""

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import coremltools as ct
from milcompress._coremltools import IOS17, IOS18, mb, types
from milcompress.tools.cli import main

SCRIPT = shutil.which("milcompress", path=str(Path(sys.executable).parent)) or "milcompress"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args) -> Result:
    """`milcompress ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def script(*args, timeout=300) -> Result:
    """`milcompress ARGS` as a real process, through the installed console script."""
    done = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


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


def _flat_output_program():
    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        return mb.reduce_sum(x=x, axes=[1], keep_dims=False)  # shape [1]: not class scores

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


def test_dry_run_writes_nothing(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing in the working directory either (no staging, no report)
    before = _digest(models["ios18"])
    result = cli("run", models["ios18"], "-o", tmp_path / "out.mlpackage", "--pipeline", "PRUNE_2_4", "--dry-run")
    assert result.returncode == 0 and "dry run: nothing written" in result.stdout and "sparse 50%" in result.stdout
    assert list(tmp_path.iterdir()) == []
    assert _digest(models["ios18"]) == before


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


def test_pipelines_and_passes():
    from milcompress.catalog import expected_bits_per_weight
    from milcompress.passes import ALL_PASSES
    from milcompress.passes.pipelines import PIPELINES

    result = cli("pipelines")
    assert result.returncode == 0
    table = result.stdout.split("\n\n")[0].splitlines()
    assert table[0].split()[:2] == ["pipeline", "bits/weight"]
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert list(rows) == list(PIPELINES)
    assert rows["INT4_BLOCK32"] == f"{expected_bits_per_weight('INT4_BLOCK32'):.2f}" and rows["DEFAULT_PRUNING"] == "as"  # "as trained"
    assert all(len(line) <= 120 for line in result.stdout.splitlines())
    result = cli("passes")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(ALL_PASSES)
    assert "milcompress::palettize_weights " in result.stdout and "milcompress::decompress_weights" in result.stdout


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
        (["--pipeline", "PALETTIZE_4BIT_GROUPPED"], "unknown pipeline 'PALETTIZE_4BIT_GROUPPED' (did you mean PALETTIZE_4BIT_GROUPED?); known pipelines: DEFAULT_PALETTIZATION"),
        (["--passes", "palettize_weightz"], "unknown pass 'milcompress::palettize_weightz' (did you mean milcompress::palettize_weights?); milcompress passes are"),
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
def test_verbose_raises_for_the_traceback(models, tmp_path, where):
    from milcompress.errors import ConfigError

    args = ["run", models["ios18"], "-o", tmp_path / "o.mlpackage", "--pipeline", "NOPE"]
    with pytest.raises(ConfigError, match="unknown pipeline 'NOPE'"):
        cli(*(["--verbose", *args] if where == "before" else [*args, "--verbose"]))


def test_the_console_script_and_its_exit_codes(models, tmp_path):
    result = script("run", models["ios18"], "-o", tmp_path / "o.mlpackage", "--pipeline", "INT8", "--report", tmp_path / "r.json")
    assert result.returncode == 0 and (tmp_path / "o.mlpackage").is_dir() and "compressed 2 of 2 weights" in result.stdout
    result = script("run")
    assert result.returncode == 2 and "the following arguments are required: model" in result.stderr


def test_fast_commands_import_neither_coremltools_nor_torch():
    check = (
        "import sys, contextlib, io\n"
        "from milcompress.tools.cli import main\n"
        "for argv in (['--help'], ['--version'], ['pipelines'], ['passes'], ['run', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0, argv\n"
        "heavy = sorted(m for m in ('coremltools', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_and_version():
    import coremltools

    import milcompress

    result = subprocess.run([sys.executable, "-m", "milcompress", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"milcompress {milcompress.__version__} (coremltools {coremltools.__version__})"


@pytest.mark.parametrize("command", ["", "run", "inspect", "verify", "sweep", "pipelines", "passes", "demo"])
def test_every_help_has_examples(command):
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "example" in result.stdout and f"milcompress {command}".strip() in result.stdout.split("example", 1)[1]


def test_verify_compares_outputs_on_random_and_given_inputs(models, tmp_path):
    small = tmp_path / "4bit.mlpackage"
    assert cli("run", models["nested"], "-o", small, "--pipeline", "PALETTIZE_4BIT").returncode == 0
    result = cli("verify", models["nested"], small, "--random", "3")
    assert result.returncode == 0, result.stderr
    assert "3 samples (3 random), computed in float32 by the reference executor" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("branch")]
    snr, psnr, cosine, min_cosine, max_error, top1, kl = row.split()[1:]
    assert 10 < float(snr) < 40 and 0.9 < float(cosine) < 1.0 and 0 <= float(top1) <= 1 and 0 < float(kl) < 0.1

    assert "note: top-1 agreement on random inputs" in result.stdout  # the random-inputs caveat

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((5, 1, 64)).astype(np.float16))
    result = cli("verify", models["nested"], models["nested"], "--inputs", inputs, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 5 and report["precision"] == "float32" and report["random_inputs"] is False
    (output,) = report["outputs"]
    assert output["max_abs_error"] == 0.0 and output["cosine"] == 1.0 and output["top1_agreement"] == 1.0
    assert output["kl_divergence"] == 0.0 and report["failed"] == []
    result = cli("verify", models["nested"], small, "--inputs", inputs)
    assert "note: top-1 agreement on random inputs" not in result.stdout


def test_verify_thresholds_set_the_exit_code(models, tmp_path):
    small = tmp_path / "4bit.mlpackage"
    assert cli("run", models["nested"], "-o", small, "--pipeline", "PALETTIZE_4BIT").returncode == 0
    measured = json.loads(cli("verify", models["nested"], small, "--random", "3", "--json").stdout)["outputs"][0]
    cosine, top1, kl = measured["cosine"], measured["top1_agreement"], measured["kl_divergence"]
    assert 0 < kl and cosine < 1
    passing = ["--min-cosine", cosine - 1e-6, "--min-top1", top1, "--max-kl", kl * 1.001]
    result = cli("verify", models["nested"], small, "--random", "3", *passing)
    assert result.returncode == 0 and "passed: --min-cosine" in result.stdout, result.stdout
    for flag, value, message in (
        ("--min-cosine", cosine + 1e-6, f"branch: cosine {cosine:.5f} < "),
        ("--min-top1", top1 + 0.01, f"branch: top-1 agreement {top1:.4g} < "),
        ("--max-kl", kl * 0.999, f"branch: KL divergence {kl:.4g} > "),
    ):
        result = cli("verify", models["nested"], small, "--random", "3", flag, value)
        assert result.returncode == 1 and "FAILED: " + flag in result.stdout and message in result.stdout, result.stdout
        result = cli("verify", models["nested"], small, "--random", "3", flag, value, "--json")
        assert result.returncode == 1 and len(json.loads(result.stdout)["failed"]) == 1


def test_class_score_thresholds_need_class_scores(models, tmp_path):
    flat = tmp_path / "flat.mlpackage"
    _save(_flat_output_program(), flat, IOS18)
    result = cli("verify", flat, flat, "--random", "2", "--min-top1", "0.5")
    assert result.returncode == 2 and "--min-top1: no output looks like class scores" in result.stderr


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
    report_lines = result.stdout.split("\n\n")[1].splitlines()  # between the pass spec and the sizes on disk
    assert report_lines[0] == "milcompress::compress_to_size" and all(len(line) <= 120 for line in report_lines), result.stdout
    assert "chosen by the size allocation" not in result.stdout  # each form once; the details are in the report
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
    assert result.returncode == 2 and "--calibration goes with --target-bpw or --activations" in result.stderr
    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--pipeline", "INT8", "--no-synthetic-check")
    assert result.returncode == 2 and "--sensitivity-seconds, --(no-)error-feedback and --no-synthetic-check go with --target-bpw" in result.stderr
    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--target-bpw", "5", "--error-feedback")
    assert result.returncode == 2 and "--error-feedback needs --calibration" in result.stderr
    result = cli("run", models["ios18"], "-o", tmp_path / "x.mlpackage", "--target-bpw", "5", "--error-feedback", "--no-error-feedback")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


@pytest.fixture(scope="module")
def demo_converted():
    from milcompress.tools.demo import convert_demo_model

    return convert_demo_model()


@pytest.fixture
def demo_converted_once(demo_converted, monkeypatch):
    """The demo command converts the built-in model each time: here it is converted once per module."""
    monkeypatch.setattr("milcompress.tools.demo.convert_demo_model", lambda: demo_converted)


def test_demo_saves_a_model_and_inputs_the_other_commands_take(tmp_path, demo_converted_once):
    result = cli("demo", "--save", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    package, inputs, calibration = (tmp_path / "demo" / name for name in ("demo.mlpackage", "inputs.npz", "calibration.npz"))
    assert f"wrote {package}" in result.stdout and f"wrote {inputs}" in result.stdout and f"wrote {calibration}" in result.stdout
    with np.load(inputs) as samples, np.load(calibration) as calibrating:
        assert samples["image"].shape == (32, 1, 3, 32, 32) and calibrating["image"].shape == (16, 1, 3, 32, 32)
        assert not np.array_equal(samples["image"][:16], calibrating["image"])  # calibration is not the evaluation
    again = cli("demo", "--save", tmp_path / "demo")
    assert again.returncode == 2 and "already exists (pass --force to replace it)" in again.stderr
    assert cli("demo", "--save", tmp_path / "demo", "--force").returncode == 0
    small = tmp_path / "small.mlpackage"
    assert cli("run", package, "-o", small, "--pipeline", "PALETTIZE_4BIT").returncode == 0
    result = cli("verify", package, small, "--inputs", inputs, "--min-cosine", "0.95")
    assert result.returncode == 0 and "32 samples" in result.stdout, result.stdout + result.stderr


def test_demo_compresses_the_built_in_model_every_named_way(demo_converted_once):
    from milcompress.catalog import PIPELINES

    result = cli("demo")  # the README's `make demo`
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"^\S+ +\d+/\d+ ", line)]
    assert [row[0] for row in rows] == [name for name in PIPELINES if name != "DECOMPRESS"]
    by_name = {row[0]: row for row in rows}
    assert by_name["DEFAULT_PALETTIZATION"][1:2] == ["1/8"] and by_name["DEFAULT_PALETTIZATION"][5:7] == ["lossless", "lossless"]
    assert by_name["PALETTIZE_4BIT"][1] == "7/8" and 3.5 < float(by_name["PALETTIZE_4BIT"][4].rstrip("x")) < 4.0


def test_sweep_writes_a_table_and_a_plot(models, tmp_path):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((3, 1, 64)).astype(np.float16))
    out = tmp_path / "sweep"
    result = cli("sweep", models["ios18"], "--inputs", inputs, "--targets", "4,6", "--pipelines", "int8,palettize_4bit", "--out", out)
    assert result.returncode == 0, result.stderr
    table = json.loads((out / "sweep.json").read_text())
    points = {(p["series"], p["label"]): p for p in table["points"]}
    assert set(points) == {("compress_to_size", "target 4"), ("compress_to_size", "target 6"),
                           ("one config (named pipeline)", "INT8"), ("one config (named pipeline)", "PALETTIZE_4BIT")}
    assert points["compress_to_size", "target 4"]["bits_per_weight"] <= 4.0 < points["compress_to_size", "target 6"]["bits_per_weight"] <= 6.0
    assert 8.0 < points["one config (named pipeline)", "INT8"]["bits_per_weight"] < 8.2
    assert points["one config (named pipeline)", "INT8"]["cosine"] > points["one config (named pipeline)", "PALETTIZE_4BIT"]["cosine"]
    assert table["samples"] == 3 and table["metric"] == "top1_agreement" and table["dense_bits_per_weight"] == 16.0
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PALETTIZE_4BIT" in (out / "sweep.md").read_text() and "target 6" in result.stdout
    result = cli("sweep", models["ios18"], "--inputs", inputs, "--pipelines", "int9")
    assert result.returncode == 2 and "unknown pipeline 'INT9' (did you mean INT8?)" in result.stderr


def test_sweep_without_matplotlib_says_how_to_get_it(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as where it is not installed
    result = cli("sweep", models["ios18"], "--random", "2", "--out", tmp_path / "sweep")
    assert result.returncode == 2 and "sweep draws its plot with matplotlib: pip install 'milcompress[plot]'" in result.stderr
    assert not (tmp_path / "sweep").exists()  # refused before any work
