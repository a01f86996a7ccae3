"""Tests for the recurrent kernels: gru, lstm, rnn.

coremltools has no value inference for these ops, so the kernels are checked against
- a step-by-step numpy recurrence written here from the documented equations (float64), over random
  shapes, directions, activations and optional inputs;
- torch's nn.LSTM / nn.GRU / nn.RNN with their weights reordered into Core ML's layouts, the way
  coremltools' own op tests (which run on Core ML) do;
- a few hand-computed examples that pin the gate order, clip, peephole and reverse ordering;
- whole torch models converted by coremltools, run end to end through the interpreter.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS17, IOS18, mb
from milcompress.reference.interpreter import ExecutionError, Interpreter
from tests.reference.helpers import run_op

ACTIVATIONS = ("sigmoid", "tanh", "scaled_tanh", "hard_sigmoid", "relu", "linear")


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


NUMPY_ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "scaled_tanh": np.tanh,  # alpha * tanh(beta * x) with Core ML's defaults alpha = beta = 1
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def _uniform(rng: np.random.Generator, *shape: int, dtype=np.float32) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def _float64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(_float64(actual), _float64(expected), rtol=rtol, atol=atol)


# -- step-by-step references, one time step at a time, from coremltools' documented equations --------


def _in_processing_order(x: np.ndarray, direction: str) -> np.ndarray:
    """'reverse' reads the sequence from its last step; its outputs stay in that processing order."""
    return x[::-1] if direction == "reverse" else x


def _sequence_output(outputs: Sequence[np.ndarray], output_sequence: bool) -> np.ndarray:
    return np.stack(outputs) if output_sequence else outputs[-1][None]


def reference_lstm_direction(xs, h, c, weight_ih, weight_hh, bias, peephole, activations, clip):
    """i, f, z, o gates with weights stacked [input, forget, output, cell]; clip on the cell state."""
    recurrent_activation, cell_activation, activation = (NUMPY_ACTIVATIONS[name] for name in activations)
    W_ii, W_if, W_io, W_iz = np.split(_float64(weight_ih), 4)
    W_hi, W_hf, W_ho, W_hz = np.split(_float64(weight_hh), 4)
    B_i, B_f, B_o, B_z = np.split(_float64(bias), 4)
    P_i, P_f, P_o = np.split(_float64(peephole), 3)
    h, c = _float64(h), _float64(c)
    outputs = []
    for x_t in _float64(xs):
        i_t = recurrent_activation(x_t @ W_ii.T + h @ W_hi.T + B_i + P_i * c)
        f_t = recurrent_activation(x_t @ W_if.T + h @ W_hf.T + B_f + P_f * c)
        z_t = cell_activation(x_t @ W_iz.T + h @ W_hz.T + B_z)
        c = f_t * c + i_t * z_t
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o_t = recurrent_activation(x_t @ W_io.T + h @ W_ho.T + B_o + P_o * c)
        h = o_t * activation(c)
        outputs.append(h)
    return outputs, h, c


def reference_lstm(x, initial_h, initial_c, weights: Dict[str, np.ndarray], direction, output_sequence, activations, clip):
    hidden = weights["weight_hh"].shape[1]

    def direction_weights(suffix):
        return (
            weights["weight_ih" + suffix],
            weights["weight_hh" + suffix],
            weights.get("bias" + suffix, np.zeros(4 * hidden)),
            weights.get("peephole" + suffix, np.zeros(3 * hidden)),
        )

    if direction != "bidirectional":
        outputs, h, c = reference_lstm_direction(
            _in_processing_order(x, direction), initial_h, initial_c, *direction_weights(""), activations, clip
        )
        return _sequence_output(outputs, output_sequence), h, c
    forward, forward_h, forward_c = reference_lstm_direction(
        x, initial_h[:, :hidden], initial_c[:, :hidden], *direction_weights(""), activations, clip
    )
    backward, backward_h, backward_c = reference_lstm_direction(
        x[::-1], initial_h[:, hidden:], initial_c[:, hidden:], *direction_weights("_back"), activations, clip
    )
    if output_sequence:  # the backward direction's states aligned with the input's time steps
        output = np.concatenate([np.stack(forward), np.stack(backward)[::-1]], axis=-1)
    else:
        output = np.concatenate([forward_h, backward_h], axis=-1)[None]
    return output, np.concatenate([forward_h, backward_h], -1), np.concatenate([forward_c, backward_c], -1)


def reference_gru(x, h, weight_ih, weight_hh, bias, input_bias, direction, output_sequence, activations, reset_after):
    """r, o, z gates with weights stacked [reset, output, update]."""
    recurrent_activation, activation = (NUMPY_ACTIVATIONS[name] for name in activations)
    W_ir, W_io, W_iz = np.split(_float64(weight_ih), 3)
    W_hr, W_ho, W_hz = np.split(_float64(weight_hh), 3)
    b_ir, b_io, b_iz = np.split(_float64(input_bias), 3)
    b_hr, b_ho, b_hz = np.split(_float64(bias), 3)
    h = _float64(h)
    outputs = []
    for x_t in _float64(_in_processing_order(x, direction)):
        r_t = recurrent_activation(x_t @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z_t = recurrent_activation(x_t @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        if reset_after:
            o_t = activation(x_t @ W_io.T + b_io + r_t * (h @ W_ho.T + b_ho))
        else:
            o_t = activation(x_t @ W_io.T + b_io + (r_t * h) @ W_ho.T + b_ho)
        h = (1 - z_t) * o_t + z_t * h
        outputs.append(h)
    return _sequence_output(outputs, output_sequence), h


def reference_rnn(x, h, weight_ih, weight_hh, bias, direction, output_sequence, activation):
    activation = NUMPY_ACTIVATIONS[activation]
    W_ih, W_hh, b = _float64(weight_ih), _float64(weight_hh), _float64(bias)
    h = _float64(h)
    outputs = []
    for x_t in _float64(_in_processing_order(x, direction)):
        h = activation(x_t @ W_ih.T + h @ W_hh.T + b)
        outputs.append(h)
    return _sequence_output(outputs, output_sequence), h


# -- property-based: kernels against the step-by-step references -----------------------------------

sizes = st.fixed_dictionaries(
    {
        "sequence": st.integers(1, 4),
        "batch": st.integers(1, 3),
        "input": st.integers(1, 4),
        "hidden": st.integers(1, 4),
    }
)
seeds = st.integers(0, 2**32 - 1)
activation_name = st.sampled_from(ACTIVATIONS)


@given(
    sizes=sizes,
    seed=seeds,
    direction=st.sampled_from(["forward", "reverse", "bidirectional"]),
    output_sequence=st.booleans(),
    activation_names=st.tuples(activation_name, activation_name, activation_name),
    has_bias=st.booleans(),
    has_peephole=st.booleans(),
    clip=st.none() | st.floats(0.05, 2.0),
    opset=st.sampled_from([IOS15, IOS17, IOS18]),
)
def test_lstm_matches_step_by_step_reference(
    sizes, seed, direction, output_sequence, activation_names, has_bias, has_peephole, clip, opset
):
    rng = np.random.default_rng(seed)
    sequence, batch, inputs, hidden = sizes["sequence"], sizes["batch"], sizes["input"], sizes["hidden"]
    directions = 2 if direction == "bidirectional" else 1
    weights = {"weight_ih": _uniform(rng, 4 * hidden, inputs), "weight_hh": _uniform(rng, 4 * hidden, hidden)}
    if has_bias:
        weights["bias"] = _uniform(rng, 4 * hidden)
    if has_peephole:
        weights["peephole"] = _uniform(rng, 3 * hidden)
    if direction == "bidirectional":
        weights.update({name + "_back": _uniform(rng, *weights[name].shape) for name in list(weights)})
    runtime = {
        "x": _uniform(rng, sequence, batch, inputs),
        "initial_h": _uniform(rng, batch, directions * hidden),
        "initial_c": _uniform(rng, batch, directions * hidden),
    }
    recurrent_activation, cell_activation, activation = activation_names
    attributes = dict(
        direction=direction,
        output_sequence=output_sequence,
        recurrent_activation=recurrent_activation,
        cell_activation=cell_activation,
        activation=activation,
    )
    if clip is not None:
        attributes["clip"] = np.float32(clip)

    actual = run_op(lambda **tensors: mb.lstm(**tensors, **weights, **attributes), runtime, opset=opset)

    clip = None if clip is None else float(np.float32(clip))
    expected = reference_lstm(
        runtime["x"], runtime["initial_h"], runtime["initial_c"], weights, direction, output_sequence, activation_names, clip
    )
    assert actual[0].shape == ((sequence if output_sequence else 1), batch, directions * hidden)
    for actual_value, expected_value in zip(actual, expected, strict=True):
        _assert_close(actual_value, expected_value)


@given(
    sizes=sizes,
    seed=seeds,
    direction=st.sampled_from(["forward", "reverse"]),
    output_sequence=st.booleans(),
    activation_names=st.tuples(activation_name, activation_name),
    has_bias=st.booleans(),
    opset=st.sampled_from([IOS15, IOS17, IOS18]),
    reset_after=st.sampled_from([None, False, True]),
    has_input_bias=st.booleans(),
)
def test_gru_matches_step_by_step_reference(
    sizes, seed, direction, output_sequence, activation_names, has_bias, opset, reset_after, has_input_bias
):
    rng = np.random.default_rng(seed)
    sequence, batch, inputs, hidden = sizes["sequence"], sizes["batch"], sizes["input"], sizes["hidden"]
    weights = {"weight_ih": _uniform(rng, 3 * hidden, inputs), "weight_hh": _uniform(rng, 3 * hidden, hidden)}
    if has_bias:
        weights["bias"] = _uniform(rng, 3 * hidden)
    if opset == IOS18:  # reset_after and input_bias exist from iOS18 on
        if reset_after is not None:
            weights["reset_after"] = reset_after
        if has_input_bias:
            weights["input_bias"] = _uniform(rng, 3 * hidden)
    runtime = {"x": _uniform(rng, sequence, batch, inputs), "initial_h": _uniform(rng, batch, hidden)}
    recurrent_activation, activation = activation_names

    actual = run_op(
        lambda **tensors: mb.gru(
            **tensors,
            **weights,
            direction=direction,
            output_sequence=output_sequence,
            recurrent_activation=recurrent_activation,
            activation=activation,
        ),
        runtime,
        opset=opset,
    )

    zeros = np.zeros(3 * hidden)
    expected = reference_gru(
        runtime["x"],
        runtime["initial_h"],
        weights["weight_ih"],
        weights["weight_hh"],
        weights.get("bias", zeros),
        weights.get("input_bias", zeros),
        direction,
        output_sequence,
        activation_names,
        bool(weights.get("reset_after", False)),
    )
    assert actual[0].shape == ((sequence if output_sequence else 1), batch, hidden)
    for actual_value, expected_value in zip(actual, expected, strict=True):
        _assert_close(actual_value, expected_value)


@given(
    sizes=sizes,
    seed=seeds,
    direction=st.sampled_from(["forward", "reverse"]),
    output_sequence=st.booleans(),
    activation=activation_name,
    has_bias=st.booleans(),
    opset=st.sampled_from([IOS15, IOS17, IOS18]),
)
def test_rnn_matches_step_by_step_reference(sizes, seed, direction, output_sequence, activation, has_bias, opset):
    rng = np.random.default_rng(seed)
    sequence, batch, inputs, hidden = sizes["sequence"], sizes["batch"], sizes["input"], sizes["hidden"]
    weights = {"weight_ih": _uniform(rng, hidden, inputs), "weight_hh": _uniform(rng, hidden, hidden)}
    if has_bias:
        weights["bias"] = _uniform(rng, hidden)
    runtime = {"x": _uniform(rng, sequence, batch, inputs), "initial_h": _uniform(rng, batch, hidden)}

    actual = run_op(
        lambda **tensors: mb.rnn(
            **tensors, **weights, direction=direction, output_sequence=output_sequence, activation=activation
        ),
        runtime,
        opset=opset,
    )

    expected = reference_rnn(
        runtime["x"],
        runtime["initial_h"],
        weights["weight_ih"],
        weights["weight_hh"],
        weights.get("bias", np.zeros(hidden)),
        direction,
        output_sequence,
        activation,
    )
    assert actual[0].shape == ((sequence if output_sequence else 1), batch, hidden)
    for actual_value, expected_value in zip(actual, expected, strict=True):
        _assert_close(actual_value, expected_value)


@pytest.mark.parametrize("op_type", ["lstm", "gru", "rnn"])
def test_float16_programs_from_ios17(op_type):
    """iOS17 accepts fp16 tensors; the executor computes them in float32 on the fp16 values."""
    rng = np.random.default_rng(3)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[op_type]
    weights = {
        "weight_ih": _uniform(rng, 2 * gates, 3, dtype=np.float16),
        "weight_hh": _uniform(rng, 2 * gates, 2, dtype=np.float16),
        "bias": _uniform(rng, 2 * gates, dtype=np.float16),
    }
    runtime = {"x": _uniform(rng, 4, 2, 3, dtype=np.float16), "initial_h": _uniform(rng, 2, 2, dtype=np.float16)}
    if op_type == "lstm":
        runtime["initial_c"] = _uniform(rng, 2, 2, dtype=np.float16)
    build = getattr(mb, op_type)

    actual = run_op(lambda **tensors: build(**tensors, **weights, output_sequence=True), runtime, opset=IOS17)

    x, initial_h = runtime["x"], runtime["initial_h"]
    if op_type == "lstm":
        defaults = ("sigmoid", "tanh", "tanh")
        expected = reference_lstm(x, initial_h, runtime["initial_c"], weights, "forward", True, defaults, None)
    elif op_type == "gru":
        expected = reference_gru(x, initial_h, *weights.values(), np.zeros(6), "forward", True, ("sigmoid", "tanh"), False)
    else:
        expected = reference_rnn(x, initial_h, *weights.values(), "forward", True, "tanh")
    for actual_value, expected_value in zip(actual, expected, strict=True):
        _assert_close(actual_value, expected_value)


# -- hand-computed examples --------------------------------------------------------------------


def _lstm_1x1(bias_ifoz, initial_c, sequence=2, **attributes):
    """An lstm with hidden size 1, zero weights and linear activations: every gate is its bias."""
    return run_op(
        lambda x, initial_h, initial_c: mb.lstm(
            x=x,
            initial_h=initial_h,
            initial_c=initial_c,
            weight_ih=np.zeros((4, 1), np.float32),
            weight_hh=np.zeros((4, 1), np.float32),
            bias=np.array(bias_ifoz, np.float32),
            recurrent_activation="linear",
            cell_activation="linear",
            activation="linear",
            output_sequence=True,
            **attributes,
        ),
        {
            "x": np.zeros((sequence, 1, 1), np.float32),
            "initial_h": np.zeros((1, 1), np.float32),
            "initial_c": np.array([[initial_c]], np.float32),
        },
    )


def test_lstm_gate_order_is_input_forget_output_cell():
    # i = 2, f = 3, o = 5, z = 7: c1 = 3 * 1 + 2 * 7 = 17, h1 = 5 * 17 = 85; c2 = 3 * 17 + 14 = 65, h2 = 325.
    output, h, c = _lstm_1x1([2, 3, 5, 7], initial_c=1.0)
    np.testing.assert_array_equal(output.reshape(-1), [85, 325])
    np.testing.assert_array_equal(h, [[325]])
    np.testing.assert_array_equal(c, [[65]])


def test_lstm_clip_clips_the_cell_state():
    # c1 = 17 -> 10, h1 = 50; c2 = 3 * 10 + 14 = 44 -> 10, h2 = 50.
    output, h, c = _lstm_1x1([2, 3, 5, 7], initial_c=1.0, clip=np.float32(10.0))
    np.testing.assert_array_equal(output.reshape(-1), [50, 50])
    np.testing.assert_array_equal(c, [[10]])


def test_lstm_peephole_uses_previous_cell_for_input_forget_and_new_cell_for_output():
    # peephole [p_i, p_f, p_o] = [1, 0.5, 0.25], c0 = 2:
    # i = 2 + 1 * 2 = 4, f = 3 + 0.5 * 2 = 4, c1 = 4 * 2 + 4 * 7 = 36, o = 5 + 0.25 * 36 = 14, h1 = 14 * 36 = 504.
    output, h, c = _lstm_1x1([2, 3, 5, 7], initial_c=2.0, sequence=1, peephole=np.array([1, 0.5, 0.25], np.float32))
    np.testing.assert_array_equal(output.reshape(-1), [504])
    np.testing.assert_array_equal(c, [[36]])


def test_lstm_default_activations_on_a_hand_example():
    # one step, hidden 1, x = 1, weight_ih = [0, 0, 0, 1] (only the cell gate sees x), no bias, zero state:
    # i = f = o = sigmoid(0) = 0.5, z = tanh(1); c = 0.5 * tanh(1); h = 0.5 * tanh(c).
    output, h, c = run_op(
        lambda x, initial_h, initial_c: mb.lstm(
            x=x,
            initial_h=initial_h,
            initial_c=initial_c,
            weight_ih=np.array([[0], [0], [0], [1]], np.float32),
            weight_hh=np.zeros((4, 1), np.float32),
        ),
        {"x": np.ones((1, 1, 1), np.float32), "initial_h": np.zeros((1, 1), np.float32), "initial_c": np.zeros((1, 1), np.float32)},
    )
    expected_c = 0.5 * np.tanh(1.0)
    _assert_close(c, [[expected_c]], atol=1e-7)
    _assert_close(h, [[0.5 * np.tanh(expected_c)]], atol=1e-7)
    _assert_close(output, [[[0.5 * np.tanh(expected_c)]]], atol=1e-7)


def test_rnn_reverse_returns_states_in_processing_order():
    # h_t = x_t + h_{t-1} (linear, unit weights). x = [1, 2, 3]: forward [1, 3, 6]; reverse reads 3, 2, 1: [3, 5, 6].
    def rnn(direction, output_sequence=True):
        return run_op(
            lambda x, initial_h: mb.rnn(
                x=x,
                initial_h=initial_h,
                weight_ih=np.ones((1, 1), np.float32),
                weight_hh=np.ones((1, 1), np.float32),
                direction=direction,
                activation="linear",
                output_sequence=output_sequence,
            ),
            {"x": np.array([1, 2, 3], np.float32).reshape(3, 1, 1), "initial_h": np.zeros((1, 1), np.float32)},
        )

    np.testing.assert_array_equal(rnn("forward")[0].reshape(-1), [1, 3, 6])
    np.testing.assert_array_equal(rnn("reverse")[0].reshape(-1), [3, 5, 6])
    output, h = rnn("reverse", output_sequence=False)
    np.testing.assert_array_equal(output, [[[6]]])
    np.testing.assert_array_equal(h, [[6]])


@pytest.mark.parametrize(
    ("opset", "extra", "expected_h"),
    [
        # hidden 1, linear activations, zero input weights, weight_hh [r, o, z] = [0, 1, 0], bias [r, o, z] = [0.5, 1, 0.75],
        # h0 = 4: r = 0.5, z = 0.75, h = 0.25 * o + 0.75 * 4.
        (IOS15, {}, 3.75),  # reset before the matmul: o = 1 * (0.5 * 4) + 1 = 3
        (IOS18, {"reset_after": False}, 3.75),
        (IOS18, {"reset_after": True}, 3.625),  # reset after it, as torch: o = 0.5 * (1 * 4 + 1) = 2.5
        # input_bias [r, o, z] = [0.25, -1, -0.5]: r = 0.75, z = 0.25, h = 0.75 * o + 0.25 * 4.
        (IOS18, {"input_bias": [0.25, -1, -0.5]}, 3.25),  # o = -1 + 1 * (0.75 * 4) + 1 = 3
        (IOS18, {"input_bias": [0.25, -1, -0.5], "reset_after": True}, 3.0625),  # o = -1 + 0.75 * (4 + 1) = 2.75
    ],
)
def test_gru_gate_order_and_where_the_reset_gate_applies(opset, extra, expected_h):
    extra = {name: np.array(value, np.float32) if name == "input_bias" else value for name, value in extra.items()}
    output, h = run_op(
        lambda x, initial_h: mb.gru(
            x=x,
            initial_h=initial_h,
            weight_ih=np.zeros((3, 1), np.float32),
            weight_hh=np.array([[0], [1], [0]], np.float32),
            bias=np.array([0.5, 1, 0.75], np.float32),
            recurrent_activation="linear",
            activation="linear",
            **extra,
        ),
        {"x": np.zeros((1, 1, 1), np.float32), "initial_h": np.array([[4]], np.float32)},
        opset=opset,
    )
    np.testing.assert_array_equal(h, [[expected_h]])
    np.testing.assert_array_equal(output, [[[expected_h]]])


def test_gru_with_an_unknown_activation_fails_loudly():
    with pytest.raises(ExecutionError, match="unsupported activation .softsign."):
        run_op(
            lambda x, initial_h: mb.gru(
                x=x,
                initial_h=initial_h,
                weight_ih=np.zeros((3, 1), np.float32),
                weight_hh=np.zeros((3, 1), np.float32),
                activation="softsign",
            ),
            {"x": np.zeros((1, 1, 1), np.float32), "initial_h": np.zeros((1, 1), np.float32)},
        )


# -- torch parity: Core ML layouts built from torch modules' weights ------------------------------


def _ifzo_to_ifoz(weight: torch.Tensor) -> np.ndarray:
    """torch's lstm gate order (input, forget, cell, output) -> Core ML's (input, forget, output, cell)."""
    i, f, z, o = np.split(weight.detach().numpy(), 4)
    return np.concatenate([i, f, o, z])


def _rzn_to_rnz(weight: torch.Tensor) -> np.ndarray:
    """torch's gru gate order (reset, update, new) -> Core ML's (reset, output, update)."""
    r, z, n = np.split(weight.detach().numpy(), 3)
    return np.concatenate([r, n, z])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lstm_matches_torch_lstm(direction):
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4)
    x, h0, c0 = torch.randn(5, 2, 3), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    # As coremltools' own test: a reverse lstm is torch's lstm on the flipped sequence, outputs unflipped.
    expected_output, (expected_h, expected_c) = module(x.flip(0) if direction == "reverse" else x, (h0, c0))

    actual_output, actual_h, actual_c = run_op(
        lambda **tensors: mb.lstm(
            **tensors,
            weight_ih=_ifzo_to_ifoz(module.weight_ih_l0),
            weight_hh=_ifzo_to_ifoz(module.weight_hh_l0),
            bias=_ifzo_to_ifoz(module.bias_ih_l0 + module.bias_hh_l0),
            direction=direction,
            output_sequence=True,
        ),
        {"x": x.numpy(), "initial_h": h0[0].numpy(), "initial_c": c0[0].numpy()},
    )
    _assert_close(actual_output, expected_output.detach())
    _assert_close(actual_h, expected_h[0].detach())
    _assert_close(actual_c, expected_c[0].detach())


@pytest.mark.parametrize("output_sequence", [True, False])
def test_bidirectional_lstm_matches_torch_lstm(output_sequence):
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 4, bidirectional=True)
    x, h0, c0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4), torch.randn(2, 2, 4)
    expected_output, (expected_h, expected_c) = module(x, (h0, c0))
    expected_output = expected_output.detach()
    if not output_sequence:  # each direction's final state: forward at the last step, backward at the first
        expected_output = torch.cat([expected_output[-1:, :, :4], expected_output[:1, :, 4:]], dim=-1)

    def directions_side_by_side(state):  # torch (2, batch, hidden) -> Core ML (batch, 2 * hidden)
        return torch.cat([state[0], state[1]], dim=-1).detach().numpy()

    actual_output, actual_h, actual_c = run_op(
        lambda **tensors: mb.lstm(
            **tensors,
            weight_ih=_ifzo_to_ifoz(module.weight_ih_l0),
            weight_hh=_ifzo_to_ifoz(module.weight_hh_l0),
            bias=_ifzo_to_ifoz(module.bias_ih_l0 + module.bias_hh_l0),
            weight_ih_back=_ifzo_to_ifoz(module.weight_ih_l0_reverse),
            weight_hh_back=_ifzo_to_ifoz(module.weight_hh_l0_reverse),
            bias_back=_ifzo_to_ifoz(module.bias_ih_l0_reverse + module.bias_hh_l0_reverse),
            direction="bidirectional",
            output_sequence=output_sequence,
        ),
        {"x": x.numpy(), "initial_h": directions_side_by_side(h0), "initial_c": directions_side_by_side(c0)},
    )
    _assert_close(actual_output, expected_output)
    _assert_close(actual_h, directions_side_by_side(expected_h))
    _assert_close(actual_c, directions_side_by_side(expected_c))


def test_gru_reset_after_matches_torch_gru():
    """iOS18's reset_after=True with input_bias is torch's GRU (coremltools' own parity test)."""
    torch.manual_seed(2)
    module = torch.nn.GRU(3, 4)
    x, h0 = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
    expected_output, expected_h = module(x, h0)

    actual_output, actual_h = run_op(
        lambda **tensors: mb.gru(
            **tensors,
            weight_ih=_rzn_to_rnz(module.weight_ih_l0),
            weight_hh=_rzn_to_rnz(module.weight_hh_l0),
            input_bias=_rzn_to_rnz(module.bias_ih_l0),
            bias=_rzn_to_rnz(module.bias_hh_l0),
            reset_after=True,
            output_sequence=True,
        ),
        {"x": x.numpy(), "initial_h": h0[0].numpy()},
        opset=IOS18,
    )
    _assert_close(actual_output, expected_output.detach())
    _assert_close(actual_h, expected_h[0].detach())


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_torch_rnn(nonlinearity):
    torch.manual_seed(3)
    module = torch.nn.RNN(3, 4, nonlinearity=nonlinearity)
    x, h0 = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
    expected_output, expected_h = module(x, h0)

    actual_output, actual_h = run_op(
        lambda **tensors: mb.rnn(
            **tensors,
            weight_ih=module.weight_ih_l0.detach().numpy(),
            weight_hh=module.weight_hh_l0.detach().numpy(),
            bias=(module.bias_ih_l0 + module.bias_hh_l0).detach().numpy(),
            activation=nonlinearity,
            output_sequence=True,
        ),
        {"x": x.numpy(), "initial_h": h0[0].numpy()},
    )
    _assert_close(actual_output, expected_output.detach())
    _assert_close(actual_h, expected_h[0].detach())


# -- whole models converted by coremltools --------------------------------------------------------


class _EmbeddingLstmClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 32)
        self.lstm = torch.nn.LSTM(32, 64, num_layers=2, batch_first=True, bidirectional=True)
        self.classifier = torch.nn.Linear(128, 10)

    def forward(self, tokens):
        states, _ = self.lstm(self.embedding(tokens))
        return self.classifier(states[:, -1])


class _EmbeddingGruClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 16)
        self.gru = torch.nn.GRU(16, 24, batch_first=True)
        self.classifier = torch.nn.Linear(24, 10)

    def forward(self, tokens):
        states, _ = self.gru(self.embedding(tokens))
        return self.classifier(states[:, -1])


def _converted_program(model: torch.nn.Module, example: torch.Tensor, target):
    import coremltools as ct

    from milcompress._coremltools import program_from_mlmodel

    mlmodel = ct.convert(
        torch.jit.trace(model, example),
        inputs=[ct.TensorType(name="tokens", shape=tuple(example.shape), dtype=np.int32)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=target,
    )
    return program_from_mlmodel(mlmodel)


@pytest.mark.filterwarnings("ignore::UserWarning")  # coremltools renaming outputs
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
@pytest.mark.parametrize(
    ("model_class", "target", "op_type"),
    [(_EmbeddingLstmClassifier, IOS15, "lstm"), (_EmbeddingGruClassifier, IOS17, "while_loop")],
)
def test_converted_torch_model_matches_torch(model_class, target, op_type):
    torch.manual_seed(4)
    model = model_class().eval()
    tokens = torch.randint(0, 100, (2, 7))
    program = _converted_program(model, tokens, target)
    # coremltools lowers nn.LSTM to lstm ops and nn.GRU (whose definition differs from Core ML's) to a loop
    assert program.functions["main"].find_ops(op_type=op_type)

    interpreter = Interpreter(program)
    outputs = interpreter.run({"tokens": tokens.numpy().astype(np.int32)})
    actual = outputs[interpreter.output_names[0]]

    with torch.no_grad():
        expected = model(tokens).numpy()
    assert actual.shape == expected.shape
    _assert_close(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
