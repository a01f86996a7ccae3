"""Bias correction in compress_to_size: each corrected layer's mean output over the calibration
inputs is what it was before compression; layers that cannot be corrected say why."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import milcompress  # noqa: F401  (registers the passes)
from milcompress._coremltools import IOS18, Function, Program, mb
from milcompress.passes import compress_program_to_size
from milcompress.reference import Interpreter

CHANNELS = 32


def network(seed: int = 0) -> Program:
    """conv (valid) -> relu -> conv 1x1 -> relu -> mean over space -> linear, every layer with a
    bias, plus two linears sharing one bias and a weight read by two linears (none correctable)."""
    rng = np.random.default_rng(seed)

    def tensor(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    with Function({"x": mb.placeholder(shape=(2, 8, 6, 6))}, IOS18) as function:
        y = mb.cast(x=function.inputs["x"], dtype="fp16")
        y = mb.conv(x=y, weight=mb.const(val=tensor(CHANNELS, 8, 3, 3, scale=0.2), name="w_conv"), bias=tensor(CHANNELS), name="conv")
        y = mb.relu(x=y)
        y = mb.conv(x=y, weight=mb.const(val=tensor(CHANNELS * 4, CHANNELS, 1, 1, scale=0.2), name="w_expand"), bias=tensor(CHANNELS * 4), name="expand")
        y = mb.relu(x=y)
        y = mb.reduce_mean(x=y, axes=[2, 3], keep_dims=False)
        logits = mb.linear(x=y, weight=mb.const(val=tensor(64, CHANNELS * 4, scale=0.1), name="w_fc"), bias=tensor(64), name="fc")
        common_bias = mb.const(val=tensor(64), name="common_bias")
        plain = mb.add(x=mb.linear(x=y, weight=mb.const(val=tensor(64, CHANNELS * 4, scale=0.1), name="w_plain"), bias=common_bias, name="plain"),
                       y=mb.linear(x=y, weight=mb.const(val=tensor(64, CHANNELS * 4, scale=0.1), name="w_plain_2"), bias=common_bias, name="plain_2"))
        shared = mb.const(val=tensor(64, 64, scale=0.1), name="w_shared")
        twice = mb.add(x=mb.linear(x=logits, weight=shared, bias=tensor(64), name="fc_a"),
                       y=mb.linear(x=plain, weight=shared, bias=tensor(64), name="fc_b"))
        function.set_outputs([mb.cast(x=twice, dtype="fp32", name="out")])
    program = Program()
    program.add_function("main", function)
    return program


def calibration(count: int = 8):
    """Inputs whose channels have means far from zero, as images' do. Each is constant over space,
    so every kernel tap of the valid conv sees the same channel means (borders would blur that)."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((count, 2, 8, 1, 1)) + rng.uniform(0.5, 2.0, (1, 1, 8, 1, 1))
    return {"x": np.broadcast_to(values, (count, 2, 8, 6, 6)).astype(np.float32)}


def output_means(program: Program, inputs) -> dict:
    """Op name -> mean over calibration inputs and positions of each output channel (axis 1)."""
    sums, counts = defaultdict(float), defaultdict(int)

    def observe(op, args, outputs):
        if op.op_type in ("conv", "linear"):
            value = outputs[0].double()
            sums[op.name] = sums[op.name] + value.movedim(1, -1).reshape(-1, value.shape[1]).sum(dim=0).numpy()
            counts[op.name] += value.numel() // value.shape[1]

    interpreter = Interpreter(program, observers=[observe])
    for sample in inputs["x"]:
        interpreter.run({"x": sample})
    return {name: sums[name] / counts[name] for name in sums}


def test_the_first_layers_mean_output_is_restored_exactly_and_the_rest_closely():
    inputs = calibration()
    dense = output_means(network(), inputs)
    corrected, uncorrected = network(), network()
    result = compress_program_to_size(corrected, target_bits_per_weight=2.5, calibration=inputs)
    compress_program_to_size(uncorrected, target_bits_per_weight=2.5, calibration=inputs, bias_correction=False)
    assert result.biases_corrected == 3  # conv, expand, fc; not the linears sharing a bias nor the shared weight
    with_correction, without = output_means(corrected, inputs), output_means(uncorrected, inputs)
    scale = np.abs(dense["conv"]).max()
    # The first conv reads the inputs themselves: its shift is exactly the one computed, up to the
    # corrected bias being stored in float16.
    assert np.abs(without["conv"] - dense["conv"]).max() > 0.02 * scale
    np.testing.assert_allclose(with_correction["conv"], dense["conv"], atol=2e-3 * scale)
    # Later layers see the shift of earlier ones' remaining noise through a ReLU: closer, not exact.
    for name in ("expand", "fc"):
        before, after = np.abs(without[name] - dense[name]).mean(), np.abs(with_correction[name] - dense[name]).mean()
        assert after < 0.5 * before, name


def test_layers_that_cannot_be_corrected_say_why_and_corrected_ones_say_by_how_much():
    program = network()
    result = compress_program_to_size(program, target_bits_per_weight=2.5, calibration=calibration())
    notes = {record.name: " ".join(record.notes) for record in result.report.records}
    assert "corrected by the mean output shift compression adds" in notes["w_conv"]
    assert "no bias const of its own" in notes["w_plain"] and "no bias const of its own" in notes["w_plain_2"]
    assert "bias not corrected: the weight feeds 2 ops" in notes["w_shared"]
    # The original bias consts of corrected layers are gone; the op reads the corrected one.
    conv = program.functions["main"].find_ops(op_type="conv")[0]
    assert conv.inputs["bias"].op.name.endswith("_corrected")


def test_without_calibration_nothing_is_corrected():
    program = network()
    result = compress_program_to_size(program, target_bits_per_weight=2.5)
    assert result.biases_corrected == 0
    assert all(not op.inputs["bias"].op.name.endswith("_corrected") for op in program.functions["main"].find_ops(op_type="conv"))


@pytest.mark.parametrize("value, expected", [("false", False), ("true", True), (False, False)])
def test_the_pass_option_parses(value, expected):
    from milcompress.passes.size import CompressToSize

    compress_pass = CompressToSize()
    compress_pass.bias_correction = value
    assert compress_pass.bias_correction is expected
