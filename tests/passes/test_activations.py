"""Activation quantization: the same activations as coremltools' own passes select, op by op;
the inserted pairs against a direct computation; calibration; errors."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import coremltools.optimize as cto
from coremltools.test.optimize.coreml.test_passes import TestCompressionPasses

from milcompress._coremltools import IOS16, IOS17, IOS18, mb, types
from milcompress.errors import ConfigError, InputError, PreconditionError
from milcompress.ops.activations import activation_qparams, quantize_dequantize
from milcompress.passes.activations import ActivationConfig, quantize_program_activations, select_activations
from milcompress.reference import Interpreter
from tests.passes.activation_helpers import fake_ranges, quantized_uses, renamed, run_coremltools_passes, tensor_names

RNG = np.random.default_rng(0)


def _weight(*shape):
    return (RNG.standard_normal(shape) * 0.2).astype(np.float32)


# -- example programs: coremltools' own, and ones with branches, chains, concat, outputs -------------

def chain_program():
    """conv -> relu -> conv -> avg_pool -> reshape -> linear -> tanh -> linear: a chain of patterns."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8), dtype=types.fp16)], opset_version=IOS17)
    def prog(x):
        x = mb.conv(x=x, weight=_weight(8, 3, 3, 3).astype(np.float16), pad_type="same")
        x = mb.relu(x=x)
        x = mb.conv(x=x, weight=_weight(8, 8, 1, 1).astype(np.float16))
        x = mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")
        x = mb.reshape(x=x, shape=(1, 128))
        x = mb.linear(x=x, weight=_weight(16, 128).astype(np.float16))
        x = mb.tanh(x=x)
        return mb.linear(x=x, weight=_weight(4, 16).astype(np.float16))

    return prog


def residual_program():
    """A MobileNet-like block: conv -> relu6 branches into a conv and the residual add; the add's
    output feeds a max_pool and a second add; a gelu (not an allowed activation) after one conv."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6, 6), dtype=types.fp16)], opset_version=IOS17)
    def prog(x):
        a = mb.relu6(x=mb.conv(x=x, weight=_weight(4, 4, 1, 1).astype(np.float16)))
        b = mb.gelu(x=mb.conv(x=a, weight=_weight(4, 4, 3, 3).astype(np.float16), pad_type="same"))
        c = mb.add(x=a, y=b)
        d = mb.max_pool(x=c, kernel_sizes=[1, 1], strides=[1, 1], pad_type="valid")
        e = mb.add(x=c, y=np.float16(1.0))  # a const input: left float
        return mb.add(x=d, y=mb.sigmoid(x=e))

    return prog


def concat_program():
    """Two convs concatenated with the input, then a conv; and a conv whose output is also a model output."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 5, 5), dtype=types.fp16)], opset_version=IOS17)
    def prog(x):
        a = mb.conv(x=x, weight=_weight(3, 2, 1, 1).astype(np.float16))
        b = mb.relu(x=mb.conv(x=x, weight=_weight(3, 2, 1, 1).astype(np.float16)))
        c = mb.concat(values=[a, b, x], axis=1)
        d = mb.conv(x=c, weight=_weight(2, 8, 1, 1).astype(np.float16))
        e = mb.conv(x=d, weight=_weight(2, 2, 1, 1).astype(np.float16))
        return e, d, mb.sigmoid(x=d)

    return prog


def float32_program():
    """A float32 program (no casts): conv -> relu -> linear on its input."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4, 4))], opset_version=IOS17)
    def prog(x):
        x = mb.relu(x=mb.conv(x=x, weight=_weight(2, 3, 1, 1)))
        x = mb.reshape(x=x, shape=(2, 32))
        return mb.linear(x=x, weight=_weight(3, 32))

    return prog


COREMLTOOLS_EXAMPLES = [
    getattr(TestCompressionPasses, name)
    for name in ("_get_test_program_conv", "_get_test_program_conv_relu", "_get_test_program_add",
                 "_get_test_program_avgpool", "_get_test_program_maxpool", "_get_test_program_linear")
]
OUR_EXAMPLES = [chain_program, residual_program]


def _global(mode="LINEAR_SYMMETRIC", dtype="int8"):
    return cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode=mode, dtype=dtype))


def _compare_with_coremltools(make, config):
    """Both routes on two builds of one program, with the same ranges: the quantized uses (which
    tensor each reads through a pair, its scale and zero point) must be the same."""
    np.random.seed(0)
    theirs = make()
    np.random.seed(0)
    ours = make()
    names_theirs, names_ours = tensor_names(theirs), tensor_names(ours)
    ranges = fake_ranges(theirs)
    to_ours = dict(zip(names_theirs, names_ours))
    run_coremltools_passes(theirs, config, ranges)
    quantize_program_activations(ours, config, ranges={to_ours[name]: value for name, value in ranges.items()})
    expected = renamed(quantized_uses(theirs), names_theirs, names_ours)
    found = quantized_uses(ours)
    assert found == expected
    assert found  # every example quantizes something
    return found


@pytest.mark.parametrize("make", COREMLTOOLS_EXAMPLES + OUR_EXAMPLES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("mode, dtype", [("LINEAR_SYMMETRIC", "int8"), ("LINEAR", "int8"), ("LINEAR_SYMMETRIC", "uint8"), ("LINEAR", "uint8")])
def test_same_activations_as_coremltools(make, mode, dtype):
    _compare_with_coremltools(make, _global(mode, dtype))


def test_op_configs_resolve_as_coremltools_does():
    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric"))
    config.set_op_type("add", None)
    config.set_op_type("avg_pool", cto.coreml.OpLinearQuantizerConfig(mode="linear", dtype="uint8"))
    found = _compare_with_coremltools(chain_program, config)
    assert any(zero_point != 0 for _, _, zero_point in found.values())  # the uint8 avg_pool pattern
    found = _compare_with_coremltools(residual_program, config)
    assert all(op.startswith(("conv", "max_pool", "relu", "gelu", "sigmoid", "add")) for op, _, _ in found)


def test_selection_of_the_residual_block_by_hand():
    prog = residual_program()
    selection = select_activations(prog.functions["main"], ActivationConfig.of(None))
    by_type = {}
    for name, uses in selection.tensors.items():
        for op, input_name, _ in uses:
            by_type.setdefault(op.op_type, set()).add(input_name)
    assert by_type["add"] == {"x", "y"}  # the residual add (its twin with a const y is not)
    assert by_type["gelu"] == {"x"}  # a conv output read by a non-allowed activation: suffix pair
    reasons = {op_type: reason for _, op_type, reason in selection.skipped}
    assert reasons == {"add": "an input is a const"}


def test_concat_members_share_one_range_and_outputs_stay_float():
    prog = concat_program()
    samples = [{"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32) * (i + 1)} for i in range(3)]
    report = quantize_program_activations(prog, None, samples)
    tensors = {t.name: t for t in report.tensors}
    concat = next(op for op in prog.functions["main"].operations if op.op_type == "concat")
    members = [var.name for var in concat.inputs["values"]] + [concat.outputs[0].name]
    # The concat's inputs were quantized for their conv readers or by the suffix rule; all those
    # quantized share the group's range.
    shared = {(tensors[name].rmin, tensors[name].rmax) for name in members if name in tensors}
    assert len(shared) == 1 and len([name for name in members if name in tensors]) >= 2
    low, high = shared.pop()
    assert low <= float(np.min([s["x"] for s in samples])) and high >= float(np.max([s["x"] for s in samples]))
    assert any("model output" in reason for _, _, reason in report.skipped)
    outputs = {var.name for var in prog.functions["main"].outputs}
    assert all(var.op.op_type != "dequantize" for var in prog.functions["main"].outputs), outputs


# -- calibration and the rewritten program against a direct computation ---------------------------

def _samples(shape, count, scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(count)]


def test_calibrated_ranges_cover_every_sample_and_the_program_computes_the_direct_result():
    import torch

    prog = float32_program()
    ops = {op.op_type: op for op in prog.functions["main"].operations}
    conv_weight, linear_weight = ops["conv"].inputs["weight"].val, ops["linear"].inputs["weight"].val
    relu, reshape = ops["relu"].outputs[0].name, ops["reshape"].outputs[0].name
    samples = _samples((2, 3, 4, 4), 5, scale=2.0)
    report = quantize_program_activations(prog, None, samples)
    tensors = {t.name: t for t in report.tensors}
    assert set(tensors) == {"x", relu, reshape}  # conv's input, relu's output (suffix), linear's input
    assert tensors["x"].rmin == min(float(s["x"].min()) for s in samples)
    assert tensors["x"].rmax == max(float(s["x"].max()) for s in samples)
    params = {name: activation_qparams(t.rmin, t.rmax) for name, t in tensors.items()}
    quantized = Interpreter(prog)
    for sample in samples:
        x = torch.from_numpy(quantize_dequantize(sample["x"], params["x"]).astype(np.float32))
        y = torch.nn.functional.conv2d(x, torch.from_numpy(conv_weight)).relu().numpy()
        y = quantize_dequantize(y, params[relu]).astype(np.float32).reshape(2, 32)
        y = quantize_dequantize(y, params[reshape]).astype(np.float32)
        expected = y @ linear_weight.T
        (output,) = quantized.run(sample).values()
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


def test_ranges_are_percentiles_by_default_and_min_max_on_request():
    """The default estimator clips the rarest extremes (`ops.activations.DEFAULT_ESTIMATOR`: it won
    on MobileNetV2 and MiniLM); coremltools' min/max is one option away."""
    samples = _samples((2, 3, 4, 4), 120, seed=3)
    samples[7]["x"][0, 0, 0, 0] = 60.0  # one value in 11,520 (under 0.01%), far out
    program = float32_program()
    ranges = {}
    for estimator in (None, "percentile", "minmax"):
        options = {} if estimator is None else {"estimator": estimator}
        report = quantize_program_activations(copy.deepcopy(program), None, samples, **options)
        ranges[estimator] = [(t.rmin, t.rmax) for t in report.tensors]  # the input x first, in program order
    assert ranges[None] == ranges["percentile"] != ranges["minmax"]
    assert ranges["minmax"][0][1] == 60.0 and ranges[None][0][1] < 10.0


def test_a_masked_softmax_input_keeps_its_scores():
    """Attention scores plus an additive -1e4 mask, read by softmax: the mask must not set the
    scale (every score would round to 0 and the softmax turn uniform). The range is clipped below
    with a note, and the quantized softmax stays close to the float one."""
    from milcompress.passes.activations import SOFTMAX_DEPTH

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 8)), mb.TensorSpec(shape=(4, 8))], opset_version=IOS17)
    def prog(scores, mask):
        return mb.softmax(x=mb.add(x=scores, y=mask, name="masked"), axis=-1, name="weights")

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(8):
        mask = np.where(rng.random((4, 8)) < 0.4, -1e4, 0.0).astype(np.float32)
        mask[:, 0] = 0.0  # every row attends somewhere
        samples.append({"scores": (rng.standard_normal((4, 8)) * 3).astype(np.float32), "mask": mask})
    unquantized = copy.deepcopy(prog)
    report = quantize_program_activations(prog, None, samples)
    masked = next(t for t in report.tensors if t.name == "masked")
    assert masked.rmin == -max(masked.rmax, SOFTMAX_DEPTH) and "softmax" in masked.note and "masked: read by softmax" in str(report)
    assert all(not t.note for t in report.tensors if t.name != "masked")
    given = {t.name: (t.rmin, t.rmax) for t in report.tensors} | {"masked": (-1e4, masked.rmax)}
    again = quantize_program_activations(copy.deepcopy(unquantized), None, ranges=given)
    assert next(t for t in again.tensors if t.name == "masked").rmin == -1e4  # ranges given are taken as they are
    interpreter = Interpreter(prog)
    for sample in samples:
        logits = sample["scores"] + sample["mask"]
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        weights = interpreter.run(sample)["weights"]
        np.testing.assert_allclose(weights, expected, atol=0.05)  # a grid of 16/127 on the scores
        assert np.all(weights[sample["mask"] < 0] < 1e-6)  # masked positions stay masked


@given(
    low=st.floats(-600, 0, allow_subnormal=False),
    width=st.floats(0, 1200, allow_subnormal=False),
    mode=st.sampled_from(["linear_symmetric", "linear"]),
    dtype=st.sampled_from(["int8", "uint8"]),
    fp16=st.booleans(),
    data=st.data(),
)
def test_inserted_pair_computes_the_direct_quantize_dequantize(low, width, mode, dtype, fp16, data):
    """A program with one pair (the input of an identity pool, whose output is the model output),
    run by the executor, equals `quantize_dequantize` (the oracle) for values inside and outside
    the calibrated range; the parameters are coremltools' for the same range."""
    high = low + width
    values = data.draw(st.lists(st.floats(-3000, 3000, width=32), min_size=1, max_size=12))
    values = np.array(values, dtype=np.float16 if fp16 else np.float32).reshape(1, 1, -1)

    @mb.program(input_specs=[mb.TensorSpec(shape=values.shape, dtype=types.fp16 if fp16 else types.fp32)], opset_version=IOS17)
    def prog(x):
        return mb.avg_pool(x=x, kernel_sizes=[1], strides=[1], pad_type="valid")

    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode=mode, dtype=dtype))
    report = quantize_program_activations(prog, config, ranges={"x": (low, high)})
    if low == high == 0.0:  # only zeros seen: left float (a quantize of scale 1 would zero it)
        assert not report.tensors and report.skipped[0][0] == "x"
        return
    (tensor,) = report.tensors
    params = activation_qparams(low, high, mode, dtype, np.float16 if fp16 else np.float32)
    assert tensor.scale == float(params.scale)
    assert tensor.zero_point == (None if params.zero_point is None else int(params.zero_point))
    if max(abs(low), abs(high)) * 256 <= 65504 and high > low:
        from coremltools.optimize import _utils as coremltools_utils  # the oracle for the parameters

        with np.errstate(all="ignore"):  # a range float16 rounds to zero divides 0 by 0 there
            _, scale, zero_point = coremltools_utils.quantize_weight_by_dtype(
                np.array([low, high], dtype=np.float16), axes=0, dtype=getattr(types, dtype), quantization_mode=mode.upper()
            )
        if float(scale) > 0:
            assert scale.astype(params.scale.dtype) == params.scale
        if zero_point is not None and float(scale) > 0:
            assert int(zero_point) == int(params.zero_point)
    (output,) = Interpreter(prog).run({"x": values}).values()
    expected = quantize_dequantize(values, params)
    np.testing.assert_allclose(output, expected.astype(np.float32), rtol=1e-6, atol=0)
    (output16,) = Interpreter(prog, precision="float16").run({"x": values}).values()
    # float16 emulation stores every float value as float16, the scale const included; the
    # dequantized value is computed in float32, then stored as float16.
    params16 = dataclasses.replace(params, scale=params.scale.astype(np.float16))
    expected16 = quantize_dequantize(values.astype(np.float16), params16).astype(np.float32).astype(np.float16)
    np.testing.assert_array_equal(output16, expected16.astype(np.float32))


# -- errors ---------------------------------------------------------------------------------------

def test_no_samples_wrong_shapes_old_target_and_wrong_configs_are_clear_errors():
    prog = float32_program()
    with pytest.raises(InputError, match="calibration samples"):
        quantize_program_activations(prog, None, [])
    with pytest.raises(InputError, match="calibration samples"):
        quantize_program_activations(prog, None, None)
    with pytest.raises(InputError, match=r"input 'x' has shape \[3, 3, 4, 4\]"):
        quantize_program_activations(prog, None, [{"x": np.zeros((3, 3, 4, 4), np.float32)}])
    with pytest.raises(InputError, match="missing input"):
        quantize_program_activations(prog, None, [{"y": np.zeros((2, 3, 4, 4), np.float32)}])
    with pytest.raises(ConfigError, match="int8 or uint8"):
        quantize_program_activations(prog, _global(dtype="int4"), _samples((2, 3, 4, 4), 1))
    with pytest.raises(ConfigError, match="OpLinearQuantizerConfig"):
        quantize_program_activations(prog, cto.coreml.OpPalettizerConfig(nbits=4), _samples((2, 3, 4, 4), 1))
    assert not any(op.op_type == "quantize" for op in prog.functions["main"].operations)  # nothing changed

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=IOS16)
    def old(x):
        return mb.linear(x=x, weight=_weight(2, 4))

    with pytest.raises(PreconditionError, match="iOS17"):
        quantize_program_activations(old, None, [{"x": np.zeros((1, 4), np.float32)}])


def test_a_none_key_names_the_only_input_and_a_second_run_changes_nothing():
    prog = float32_program()
    samples = [{None: s["x"]} for s in _samples((2, 3, 4, 4), 2)]
    first = quantize_program_activations(prog, None, samples)
    assert first.tensors and first.samples == 2
    count = len(list(prog.functions["main"].operations))
    second = quantize_program_activations(prog, None, [{"x": s[None]} for s in samples])
    assert not second.tensors
    assert len(list(prog.functions["main"].operations)) == count
    assert {reason for _, _, reason in second.skipped} == {"already reads a dequantized activation"}


def test_a_stateful_program_calibrates_on_sequences_of_calls():
    """A KV-cache-like state read and added to the input: a sequence of calls runs in one session
    (the state read sees what earlier calls wrote); lone samples run from zero states, where the
    state read sees only zeros and is left float, with the reason."""

    @mb.program(input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.TensorSpec((2, 3), dtype=types.fp16)], opset_version=IOS18)
    def prog(state, x):
        before = mb.read_state(input=state, name="before")
        total = mb.add(x=before, y=x, name="total")
        mb.coreml_update_state(state=state, value=total)
        return mb.linear(x=mb.relu(x=total), weight=_weight(4, 3).astype(np.float16), name="out")

    calls = [{"x": np.full((2, 3), value, np.float16)} for value in (1.0, -2.0, 3.0)]
    report = quantize_program_activations(prog, None, [calls])
    tensors = {t.name: t for t in report.tensors}
    assert (tensors["before"].rmin, tensors["before"].rmax) == (-1.0, 1.0)  # 0, then 1, then 1 - 2
    assert (tensors["x"].rmin, tensors["x"].rmax) == (-2.0, 3.0)
    assert report.samples == 1

    @mb.program(input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.TensorSpec((2, 3), dtype=types.fp16)], opset_version=IOS18)
    def again(state, x):
        before = mb.read_state(input=state, name="before")
        return mb.add(x=before, y=x, name="total")

    report = quantize_program_activations(again, None, calls)
    assert ("before", "tensor", "calibration saw only zeros (a state read from zero states? calibrate with sequences of calls)") in report.skipped
    assert [t.name for t in report.tensors] == ["x"]
