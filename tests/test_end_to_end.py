"""Torch models converted with each named pipeline, and saved packages through the Python API."""

import numpy as np
import pytest
import torch
from torch import nn

import coremltools as ct
import milcompress
from milcompress.passes.pipelines import PIPELINES


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def _model(clustered: bool = False, pruned: bool = False):
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        for p in (model.conv2.weight, model.fc1.weight):
            if clustered:  # as training-time palettization leaves weights: 16 values per tensor
                p.copy_(torch.linspace(-0.1, 0.1, 16)[torch.randint(0, 16, p.shape)])
            if pruned:  # as training-time pruning leaves them: 60% zeros
                p.mul_(torch.rand(p.shape) > 0.6)
    return model


def _convert(model, pipeline, target=ct.target.iOS18):
    example = torch.rand(1, 3, 16, 16)
    traced = torch.jit.trace(model, example)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=example.shape)],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        pass_pipeline=pipeline,
    )


@pytest.fixture(scope="module")
def dense():
    return _convert(_model(), ct.PassPipeline.DEFAULT)


def _weights(mlmodel):
    return {n: m for n, m in milcompress.get_weights_metadata(mlmodel, weight_threshold=1000).items()}


@pytest.mark.parametrize("name", [n for n in PIPELINES if n not in ("DEFAULT_PALETTIZATION", "DEFAULT_PRUNING", "DECOMPRESS")])
def test_each_named_pipeline_converts_and_compresses(name, dense):
    mlmodel = _convert(_model(), getattr(milcompress.pipelines, name))
    report = milcompress.report_of(mlmodel)
    assert report is not None and report.pass_name.startswith("milcompress::")
    compressed = {r.name for r in report.compressed}
    assert len(compressed) >= 2, report.to_json()
    weights = _weights(mlmodel)
    assert sum(m.form is not None for m in weights.values()) == len(compressed)
    for m in weights.values():
        if m.form is not None:
            assert m.bits_per_weight < 16


def test_default_palettization_is_lossless_on_clustered_weights():
    reference = _convert(_model(clustered=True), ct.PassPipeline.DEFAULT)
    mlmodel = _convert(_model(clustered=True), milcompress.pipelines.DEFAULT_PALETTIZATION)
    report = milcompress.report_of(mlmodel)
    assert {r.form for r in report.compressed} == {"LUT 4-bit"}
    assert {r.snr_db for r in report.compressed} == {float("inf")}
    dense = milcompress.decompress_weights(mlmodel)
    before, after = _weights(reference), _weights(dense)
    for name, meta in after.items():
        np.testing.assert_array_equal(meta.val, before[name].val)


def test_default_pruning_stores_training_time_zeros_sparsely_and_exactly():
    reference = _weights(_convert(_model(pruned=True), ct.PassPipeline.DEFAULT))
    mlmodel = _convert(_model(pruned=True), milcompress.pipelines.DEFAULT_PRUNING)
    report = milcompress.report_of(mlmodel)
    assert len(report.compressed) == 2 and all(r.form.startswith("sparse 6") for r in report.compressed)
    for name, meta in _weights(milcompress.decompress_weights(mlmodel)).items():
        np.testing.assert_array_equal(meta.val, reference[name].val)
    unpruned = milcompress.report_of(_convert(_model(), milcompress.pipelines.DEFAULT_PRUNING))
    assert all("minimum_sparsity_percentile" in r.reason for r in unpruned.skipped if r.elements > 2048)


def test_default_palettization_skips_unclustered_weights_with_a_reason():
    mlmodel = _convert(_model(), milcompress.pipelines.DEFAULT_PALETTIZATION)
    reasons = {r.reason for r in milcompress.report_of(mlmodel).skipped if r.elements > 2048}
    assert any("distinct values" in r for r in reasons)


def test_saved_package_through_the_api_and_back(tmp_path, dense):
    path = tmp_path / "dense.mlpackage"
    dense.save(str(path))
    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    compressed = milcompress.palettize_weights(loaded, milcompress.PalettizeConfig(nbits=4, weight_threshold=1000))
    assert milcompress.report_of(compressed).totals()["compressed"] == 3
    out = tmp_path / "palettized.mlpackage"
    compressed.save(str(out))
    reloaded = ct.models.MLModel(str(out), skip_model_load=True)
    weights = _weights(reloaded)
    assert {m.form for m in weights.values()} == {"LUT 4-bit"}
    original = _weights(loaded)
    for name, meta in weights.items():
        assert milcompress.ops.snr_db(original[name.removesuffix("_palettized")].val, meta.val) > 15
    # The input model was not modified.
    assert all(m.form is None for m in _weights(ct.models.MLModel(str(path), skip_model_load=True)).values())


def test_coremltools_optimization_config_through_the_api(dense):
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=1000))
    quantized = milcompress.linear_quantize_weights(dense, config)
    assert {m.form for m in _weights(quantized).values() if m.form} == {"int4 blocks 1x16x3x3", "int4 blocks 1x16"}


def test_neural_network_models_are_refused_clearly():
    class Fake:
        def get_spec(self):
            from coremltools.proto import Model_pb2

            spec = Model_pb2.Model()
            spec.neuralNetwork.SetInParent()
            return spec

    with pytest.raises(milcompress.InputError, match="ML program models; this model is a neuralNetwork"):
        milcompress.palettize_weights(Fake(), milcompress.PalettizeConfig(nbits=4))
    with pytest.raises(TypeError):  # what coremltools raises for it, so `except TypeError` keeps working
        milcompress.palettize_weights(Fake(), milcompress.PalettizeConfig(nbits=4))
