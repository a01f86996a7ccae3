"""Activation quantization on converted models: the Python call with coremltools' arguments, its
composition with weight compression (W8A8, A8W4), `verify` in float16 emulation, pipelines, and
the command line with its errors."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch

import coremltools as ct
import coremltools.optimize as cto

import milcompress
from milcompress.api import program_of
from milcompress.errors import InputError, PreconditionError
from milcompress.tools.cli import main


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()


def _convert(target, pass_pipeline=None):
    example = torch.zeros(1, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            torch.jit.trace(_net(), example), inputs=[ct.TensorType(name="x", shape=example.shape)], convert_to="mlprogram",
            minimum_deployment_target=target, compute_precision=ct.precision.FLOAT16,
            **({} if pass_pipeline is None else {"pass_pipeline": pass_pipeline}),
        )


def _samples(count, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def models():
    return {"iOS17": _convert(ct.target.iOS17), "iOS18": _convert(ct.target.iOS18)}


CALIBRATION = _samples(8, seed=1)
EVALUATION = {"x": np.stack([s["x"] for s in _samples(16, seed=2)])}  # separate from calibration


def _op_types(model):
    return [op.op_type for op in program_of(model).functions["main"].operations]


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def test_coremltools_arguments_and_a_calibrated_model_through_verify(models):
    model = models["iOS17"]
    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.experimental.OpActivationLinearQuantizerConfig(mode="linear_symmetric"))
    before = _op_types(model)
    a8 = _quiet(milcompress.linear_quantize_activations, model, config, [dict(s) for s in CALIBRATION], calibration_op_group_size=1)
    assert _op_types(model) == before  # the input model is never modified
    types_a8 = _op_types(a8)
    # conv, conv, linear inputs (prefix) and the second relu's output (suffix, before the pool).
    assert types_a8.count("quantize") == types_a8.count("dequantize") == 4
    report = milcompress.activation_report_of(a8)
    assert report.samples == 8 and len(report.tensors) == 4 and not report.skipped
    checked = milcompress.verify(model, a8, EVALUATION, precision="float16")
    assert checked.ok and checked.outputs[0].cosine > 0.999 and checked.outputs[0].top1_agreement >= 0.9

    weights = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=100))
    w8a8 = _quiet(milcompress.linear_quantize_weights, a8, weights)
    types_w8a8 = _op_types(w8a8)
    assert types_w8a8.count("quantize") == 4 and types_w8a8.count("constexpr_affine_dequantize") == 3
    w8 = _quiet(milcompress.linear_quantize_weights, model, weights)
    both = milcompress.verify(model, w8a8, EVALUATION, precision="float16").outputs[0]
    only_weights = milcompress.verify(model, w8, EVALUATION, precision="float16").outputs[0]
    assert both.snr_db < only_weights.snr_db  # activations add error of their own ...
    assert both.cosine > 0.999  # ... and little of it


def test_a8w4_four_bit_palettes_with_int8_tables_then_activations(models):
    model = models["iOS18"]
    palettes = _quiet(milcompress.palettize_weights, model, milcompress.PalettizeConfig(nbits=4, weight_threshold=100))
    tables = _quiet(
        milcompress.linear_quantize_weights, palettes, milcompress.LinearQuantizeConfig(granularity="per_tensor", weight_threshold=100), joint_compression=True
    )
    a8w4 = _quiet(milcompress.linear_quantize_activations, tables, None, CALIBRATION)
    forms = {m.form for m in milcompress.get_weights_metadata(a8w4, weight_threshold=100).values()}
    assert forms == {"LUT 4-bit, int8 table"}
    assert _op_types(a8w4).count("quantize") == 4
    checked = milcompress.verify(model, a8w4, EVALUATION, precision="float16").outputs[0]
    assert checked.cosine > 0.99


def test_a_pipeline_with_activations_quantizes_last_during_conversion():
    pipeline = milcompress.pipelines.get("INT8", activations="int8", calibration=CALIBRATION)
    assert "milcompress::linear_quantize_weights_int8" in pipeline.passes
    assert pipeline.passes[-1] == "milcompress::quantize_activations"
    model = _convert(ct.target.iOS17, pass_pipeline=pipeline)
    types = _op_types(model)
    assert types.count("quantize") == types.count("dequantize") == 4  # (its weights are below INT8's threshold)
    with pytest.raises(milcompress.ConfigError, match="calibration"):
        milcompress.pipelines.get("INT8", activations="int8")


def test_errors_name_what_is_wrong(models):
    with pytest.raises(InputError, match="calibration samples"):
        milcompress.linear_quantize_activations(models["iOS17"], None, [])
    with pytest.raises(InputError, match=r"input 'x' has shape \[1, 3, 8, 8\]"):
        milcompress.linear_quantize_activations(models["iOS17"], None, [{"x": np.zeros((1, 3, 8, 8), np.float32)}])
    with pytest.raises(milcompress.ConfigError, match="calibration_op_group_size"):
        milcompress.linear_quantize_activations(models["iOS17"], None, CALIBRATION, calibration_op_group_size=0)
    old = _convert(ct.target.iOS16)
    with pytest.raises(PreconditionError, match="iOS17"):
        milcompress.linear_quantize_activations(old, None, CALIBRATION)


def _cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_command_line_w8a8_and_its_usage_errors(models, tmp_path):
    package = tmp_path / "model.mlpackage"
    models["iOS17"].save(str(package))
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.stack([s["x"] for s in CALIBRATION]))
    out = tmp_path / "w8a8.mlpackage"
    code, stdout, stderr = _cli("run", package, "-o", out, "--pipeline", "INT8", "--activations", "int8", "--calibration", calibration, "--report", tmp_path / "r.json")
    assert code == 0, stderr
    assert "passes: milcompress::linear_quantize_weights_int8,milcompress::quantize_activations{config=int8,calibration=" in stdout
    assert "quantized 4 activations in function 'main', calibrated on 8 samples" in stdout
    reports = json.loads((tmp_path / "r.json").read_text())
    assert reports[-1]["pass"] == "milcompress::quantize_activations" and len(reports[-1]["tensors"]) == 4
    assert _op_types(ct.models.MLModel(str(out), skip_model_load=True)).count("quantize") == 4

    code, stdout, _ = _cli("run", package, "-o", tmp_path / "a8.mlpackage", "--activations", "int8", "--calibration", calibration)
    assert code == 0 and "passes: milcompress::quantize_activations" in stdout  # A8 alone, weights as they are

    code, stdout, stderr = _cli("run", package, "-o", tmp_path / "mse.mlpackage", "--activations", "int8", "--calibration", calibration,
                                "--activation-ranges", "mse", "--report", tmp_path / "mse.json")
    assert code == 0 and "quantize_activations{config=int8,calibration=" in stdout and "estimator=mse}" in stdout, stderr
    minmax, mse = (json.loads((tmp_path / name).read_text())[-1]["tensors"] for name in ("r.json", "mse.json"))
    assert [t["name"] for t in minmax] == [t["name"] for t in mse]
    assert any(a["scale"] != b["scale"] for a, b in zip(minmax, mse))  # other ranges were chosen

    code, _, stderr = _cli("run", package, "-o", tmp_path / "x.mlpackage", "--pipeline", "INT8", "--activations", "int8")
    assert code == 2 and "--activations needs --calibration" in stderr
    code, _, stderr = _cli("run", package, "-o", tmp_path / "x.mlpackage", "--pipeline", "INT8", "--activation-ranges", "mse")
    assert code == 2 and "--activation-ranges goes with --activations" in stderr
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 1, 3, 5, 5), np.float32))
    code, _, stderr = _cli("run", package, "-o", tmp_path / "y.mlpackage", "--activations", "int8", "--calibration", wrong)
    assert code == 2 and "input 'x' has shape [1, 3, 5, 5]" in stderr
    assert not (tmp_path / "y.mlpackage").exists()


def test_compress_to_size_can_quantize_activations_too(models):
    sized = _quiet(milcompress.compress_to_size, models["iOS18"], 6.0, calibration=CALIBRATION, weight_threshold=100, activations="int8")
    assert _op_types(sized).count("quantize") == 4
    assert milcompress.report_of(sized) is not None and milcompress.activation_report_of(sized).samples == 8
    with pytest.raises(milcompress.ConfigError, match="calibration"):
        milcompress.compress_to_size(models["iOS18"], 6.0, activations="int8")
