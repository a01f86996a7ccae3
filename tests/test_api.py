"""The public entry points not covered elsewhere: prune_weights, compress_weights,
joint_compress_weights, milcompress.verify, and milcompress.pipelines' get / names / describe.
Each on a small saved model, checking what the returned model holds, not only that a call returns."""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

import coremltools as ct
import milcompress
from milcompress import (
    CompressionConfig,
    ConfigError,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
)
from milcompress._coremltools import IOS18, mb, types
from milcompress.passes.pipelines import PIPELINES

RNG = np.random.default_rng(0)
W1 = RNG.normal(0, 0.1, (128, 64)).astype(np.float16)
W2 = RNG.normal(0, 0.1, (32, 128)).astype(np.float16)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        y = mb.relu(x=mb.linear(x=x, weight=mb.const(val=W1, name="w1"), name="fc1"))
        return mb.linear(x=y, weight=mb.const(val=W2, name="w2"), name="fc2")

    path = tmp_path_factory.mktemp("api") / "dense.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18, pass_pipeline=ct.PassPipeline.EMPTY).save(str(path))
    return path


@pytest.fixture
def model(package):
    return ct.models.MLModel(str(package), skip_model_load=True)


def _digest(package: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file())).hexdigest()


def _weights(mlmodel):
    """w1 and w2 (not the biases), by the name they now have."""
    return {n: m for n, m in milcompress.get_weights_metadata(mlmodel, weight_threshold=0).items() if n.startswith("w")}


def test_prune_weights_zeroes_exactly_the_smallest_and_stores_them_sparse(model, package):
    before = _digest(package)
    small = milcompress.prune_weights(model, MagnitudePruneConfig(target_sparsity=0.5, weight_threshold=0))
    assert _digest(package) == before  # the input is never modified
    for name, dense in (("w1", W1), ("w2", W2)):
        (meta,) = [m for n, m in _weights(small).items() if n.startswith(name)]
        assert meta.form == "sparse 50%" and meta.sparsity == 0.5
        kept = meta.val != 0
        np.testing.assert_array_equal(meta.val[kept], dense[kept])  # survivors are exact
        assert np.abs(dense[~kept]).max() <= np.abs(dense[kept]).min()  # the smallest were pruned
    report = milcompress.report_of(small)
    assert report.pass_name == "milcompress::prune_weights" and report.totals()["compressed"] == 2


def test_compress_weights_mixes_algorithms_per_op_and_takes_coremltools_configs(model):
    config = CompressionConfig(global_config=PalettizeConfig(nbits=4, weight_threshold=0),
                               op_name_configs={"fc2": LinearQuantizeConfig(dtype="int8", weight_threshold=0)})
    small = milcompress.compress_weights(model, config)
    forms = {name.split("_")[0]: meta.form for name, meta in _weights(small).items()}
    assert forms["w1"] == "LUT 4-bit" and forms["w2"].startswith("int8 per channel")
    records = {r.name: r for r in milcompress.report_of(small).records}
    assert records["w2"].snr_db > records["w1"].snr_db > 15

    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    theirs = milcompress.compress_weights(model, OptimizationConfig(global_config=OpLinearQuantizerConfig(weight_threshold=0)))
    assert len(_weights(theirs)) == 2 and all(meta.form.startswith("int8 per channel") for meta in _weights(theirs).values())
    with pytest.raises(ConfigError, match="expected a CompressionConfig, an algorithm config or a coremltools OptimizationConfig"):
        milcompress.compress_weights(model, {"nbits": 4})


def test_compress_weights_warns_about_entries_that_match_nothing_and_strict_refuses(model):
    config = CompressionConfig(global_config=PalettizeConfig(nbits=4, weight_threshold=0), op_name_configs={"fc_2": None})
    small = milcompress.compress_weights(model, config)
    assert milcompress.report_of(small).warnings == [
        "op_name_configs['fc_2'] matches no weight or op reading a weight, so it applies to nothing (closest: fc2, fc1)"
    ]
    assert [meta.form for meta in _weights(small).values()] == ["LUT 4-bit"] * 2  # the typo left fc2 compressed
    with pytest.raises(ConfigError, match=r"op_name_configs\['fc_2'\] matches no weight"):
        milcompress.compress_weights(model, config, strict=True)


def test_joint_compress_weights_prunes_then_palettizes_the_survivors(model):
    config = JointConfig(MagnitudePruneConfig(target_sparsity=0.75, weight_threshold=0), PalettizeConfig(nbits=2, weight_threshold=0))
    small = milcompress.joint_compress_weights(model, config)
    for name, dense in (("w1", W1), ("w2", W2)):
        (meta,) = [m for n, m in _weights(small).items() if n.startswith(name)]
        assert meta.form == "sparse 75% + LUT 2-bit" and meta.sparsity == 0.75
        assert len(np.unique(meta.val[meta.val != 0])) <= 4  # the survivors share a 2-bit table
        assert meta.bits_per_weight < 2.0
    with pytest.raises(ConfigError, match="accepts JointConfig; got PalettizeConfig"):
        milcompress.joint_compress_weights(model, PalettizeConfig(nbits=4))


def test_verify_compares_paths_models_and_programs_on_given_and_random_inputs(model, package):
    small = milcompress.linear_quantize_weights(model, LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=0))
    x = RNG.standard_normal((6, 1, 64)).astype(np.float16)
    report = milcompress.verify(str(package), small, {"x": x})
    (output,) = report.outputs
    assert report.samples == 6 and report.precision == "float32" and report.ok and report[output.name] is output
    # The same numbers from the test's own float64 forward pass of both models' weights.
    small_w1, small_w2 = (next(m.val for n, m in _weights(small).items() if n.startswith(w)) for w in ("w1", "w2"))
    dense_out = [np.maximum(s.astype(np.float64) @ W1.T.astype(np.float64), 0) @ W2.T.astype(np.float64) for s in x]
    small_out = [np.maximum(s.astype(np.float64) @ small_w1.T.astype(np.float64), 0) @ small_w2.T.astype(np.float64) for s in x]
    noise = sum(float(np.sum((a - b) ** 2)) for a, b in zip(dense_out, small_out))
    signal = sum(float(np.sum(a**2)) for a in dense_out)
    assert output.snr_db == pytest.approx(10 * np.log10(signal / noise), abs=0.05)
    agree = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(dense_out, small_out)])
    assert output.top1_agreement == agree

    same = milcompress.verify(model, milcompress.api.program_of(model), random=3, seed=1)
    assert same.samples == 3 and same.outputs[0].max_abs_error == 0.0 and same.outputs[0].snr_db == np.inf
    with pytest.raises(milcompress.InputError, match="give either inputs or random=N"):
        milcompress.verify(model, small)


def test_pipelines_get_names_and_describe():
    assert milcompress.pipelines.names() == list(PIPELINES)
    described = milcompress.pipelines.describe()
    assert [name for name, _ in described] == list(PIPELINES) and all(doc for _, doc in described)
    assert dict(described)["INT8"] == "int8 per channel"
    first, second = milcompress.pipelines.get("palettize_4bit"), milcompress.pipelines.get("MILCOMPRESS_PALETTIZE_4BIT")
    assert first is not second and first.passes == second.passes  # fresh each time, case and prefix alike
    assert "milcompress::palettize_weights_4bit" in first.passes
    assert first.passes.index("milcompress::palettize_weights_4bit") > first.passes.index("common::const_deduplication")
    with pytest.raises(ConfigError, match="unknown pipeline 'PALETTIZE_5BIT'"):
        milcompress.pipelines.get("palettize_5bit")
