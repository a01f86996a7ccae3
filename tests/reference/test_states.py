"""State ops and sessions against hand-computed values; flexible input shapes and their defaults."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from milcompress._coremltools import IOS18, mb, types
from milcompress.errors import InputError
from milcompress.reference import Interpreter, load_program
from milcompress.reference.verify import random_samples
from milcompress.signature import InputShape, declared_inputs, parse_shape, shapes_with


def _accumulator(scale: float = 2.0):
    """state <- state + x, then out = state * scale read back after the update (program order)."""

    @mb.program(input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.TensorSpec((2, 3), dtype=types.fp16)], opset_version=IOS18)
    def program(state, x):
        before = mb.read_state(input=state, name="before")
        total = mb.add(x=before, y=x)
        mb.coreml_update_state(state=state, value=total)
        after = mb.read_state(input=state)
        return mb.mul(x=after, y=mb.const(val=np.float16(scale), name="scale"), name="out"), mb.identity(x=before, name="seen")

    return program


def test_a_session_carries_its_state_from_call_to_call():
    interpreter = Interpreter(_accumulator())
    assert interpreter.input_names == ["x"] and interpreter.state_spec() == {"state": ((2, 3), np.dtype(np.float16))}
    session = interpreter.new_session()
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    first = session.run({"x": x})
    np.testing.assert_array_equal(first["seen"], np.zeros((2, 3)))
    np.testing.assert_array_equal(first["out"], 2 * x)
    second = session.run({"x": x})
    np.testing.assert_array_equal(second["seen"], x)  # what the first call wrote
    np.testing.assert_array_equal(second["out"], 4 * x)
    np.testing.assert_array_equal(session.states["state"], 2 * x)
    np.testing.assert_array_equal(session.read_state("state"), 2 * x)
    # Interpreter.run is one call from zero states, and leaves no trace in the session.
    np.testing.assert_array_equal(interpreter.run({"x": x})["out"], 2 * x)
    np.testing.assert_array_equal(interpreter.new_session().states["state"], np.zeros((2, 3)))


def test_verify_runs_each_sample_of_a_stateful_program_from_zero_states():
    from milcompress.reference import verify

    report = verify(_accumulator(), _accumulator(), random=3)
    assert report.samples == 3 and report["out"].snr_db == float("inf") and report["seen"].max_abs_error == 0
    # Sequences of calls run in one session each: the second call sees what the first wrote.
    x = np.ones((2, 3), np.float16)
    halved = _accumulator(scale=1.0)
    sequential = verify(_accumulator(), halved, [[{"x": x}, {"x": x}]])
    assert sequential.samples == 2 and sequential["seen"].max_abs_error == 0
    assert sequential["out"].max_abs_error == pytest.approx(2.0)  # the state is 2 after two calls: 2 x 2 against 1 x 2
    with pytest.raises(InputError, match=r"steps \(decode steps\) apply to a decoder.*this model is not a decoder"):
        verify(_accumulator(), _accumulator(), random=1, steps=2)
    with pytest.raises(InputError, match=r"shapes set the shapes of random inputs"):
        verify(_accumulator(), _accumulator(), {"x": np.zeros((2, 3), np.float16)}, shapes={"x": (2, 3)})


def test_a_session_replaces_consts_for_every_call():
    session = Interpreter(_accumulator()).new_session(replace={"scale": np.float16(3)})
    x = np.ones((2, 3), np.float16)
    assert session.run({"x": x})["out"][0, 0] == 3 and session.run({"x": x})["out"][0, 0] == 6
    assert session.run({"x": x}, replace={"scale": np.float16(-1)})["out"][0, 0] == -3  # this call only
    assert session.run({"x": x})["out"][0, 0] == 12
    with pytest.raises(InputError, match=r"replace: 'x' is not the output of a const"):
        Interpreter(_accumulator()).new_session(replace={"x": x})


@given(st.lists(st.floats(-100, 100, width=16), min_size=6, max_size=6), st.integers(1, 4))
def test_states_start_where_the_caller_says(start, calls):
    initial = np.array(start, np.float32).reshape(2, 3)
    session = Interpreter(_accumulator()).new_session({"state": initial})
    x = np.ones((2, 3), np.float16)
    for _ in range(calls):
        out = session.run({"x": x})["out"]
    np.testing.assert_allclose(out, 2 * (initial + calls), rtol=1e-6)
    np.testing.assert_allclose(session.states["state"], initial + calls, rtol=1e-6)


def test_float16_precision_rounds_what_a_state_holds():
    session = Interpreter(_accumulator(), precision="float16").new_session({"state": np.full((2, 3), 1 / 3)})
    np.testing.assert_array_equal(session.read_state("state"), np.float32(np.float16(1 / 3)))


def test_a_state_of_the_wrong_shape_dtype_or_name_is_refused_by_name():
    interpreter = Interpreter(_accumulator())
    with pytest.raises(InputError, match=r"state 'state' holds float16 \[2, 3\]; the value given has shape \[3, 2\]"):
        interpreter.new_session({"state": np.zeros((3, 2), np.float16)})
    with pytest.raises(InputError, match=r"state 'state' holds float16 \[2, 3\]; the value given is int64"):
        interpreter.new_session({"state": np.zeros((2, 3), np.int64)})
    with pytest.raises(InputError, match=r"no state named 'cache'; the function 'main' has state \[2, 3\] float16"):
        interpreter.new_session({"cache": np.zeros((2, 3))})
    with pytest.raises(InputError, match=r"unknown input\(s\) state.*given to a session, not to a run"):
        interpreter.run({"x": np.zeros((2, 3), np.float16), "state": np.zeros((2, 3), np.float16)})


def test_a_write_of_the_wrong_shape_fails_at_the_op():
    from milcompress.reference.kernels import OpArgs
    from milcompress.reference.kernels.state import StateCell, coreml_update_state

    cell = StateCell("cache", torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"state 'cache' holds \[2, 3\]; the value written is \[3\]"):
        coreml_update_state(OpArgs(None, {"state": cell, "value": torch.zeros(3)}))
    assert tuple(cell.value.shape) == (2, 3)  # left as it was


# -- flexible shapes ------------------------------------------------------------------------------


class _Scale(torch.nn.Module):
    def forward(self, x):
        return x * 2.0 + 1.0


@pytest.fixture(scope="module")
def flexible_models():
    """One model with a RangeDim input and one with EnumeratedShapes, as converted and as loaded."""
    import coremltools as ct

    traced = torch.jit.trace(_Scale().eval(), torch.zeros(1, 4))
    models = {}
    for kind, shape in (
        ("range", ct.Shape((1, ct.RangeDim(lower_bound=2, upper_bound=16, default=4)))),
        ("enumerated", ct.EnumeratedShapes(shapes=[(1, 4), (1, 8), (2, 8)], default=(1, 8))),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[kind] = ct.convert(
                traced, inputs=[ct.TensorType(name="x", shape=shape, dtype=np.float32)], convert_to="mlprogram",
                minimum_deployment_target=ct.target.iOS18, skip_model_load=True,
            )
    return models


def test_flexible_inputs_take_every_shape_they_declare(flexible_models):
    for source in ("converted", "loaded"):
        ranged = flexible_models["range"]
        program = ranged._mil_program if source == "converted" else load_program(ranged)
        (declared,) = declared_inputs(program, "main").values()
        assert declared == InputShape("x", np.dtype(np.float32), ((1, 1), (2, 16)), default=(1, 4)), source
        interpreter = Interpreter(program)
        for length in (2, 7, 16):
            x = np.arange(length, dtype=np.float32)[None]
            (out,) = interpreter.run({"x": x}).values()
            np.testing.assert_allclose(out, 2 * x + 1)
        with pytest.raises(InputError, match=r"input 'x' has shape \[1, 17\]; the model takes \(1, 2\.\.16\)"):
            interpreter.run({"x": np.zeros((1, 17), np.float32)})

        enumerated = flexible_models["enumerated"]
        program = enumerated._mil_program if source == "converted" else load_program(enumerated)
        interpreter = Interpreter(program)
        assert interpreter.inputs["x"].enumerated == ((1, 4), (1, 8), (2, 8)) and interpreter.inputs["x"].default == (1, 8)
        assert interpreter.run({"x": np.ones((2, 8), np.float32)})[interpreter.output_names[0]].shape == (2, 8)
        with pytest.raises(InputError, match=r"input 'x' has shape \[2, 4\]; the model takes one of \(1, 4\), \(1, 8\), \(2, 8\)"):
            interpreter.run({"x": np.ones((2, 4), np.float32)})


def test_random_inputs_take_the_default_shape_unless_told(flexible_models):
    interpreter = Interpreter(load_program(flexible_models["range"]))
    assert random_samples(interpreter, 1)[0]["x"].shape == (1, 4)
    assert random_samples(interpreter, 1, shapes={"x": (1, 9)})[0]["x"].shape == (1, 9)
    with pytest.raises(InputError, match=r"input 'x' has shape \[1, 40\]"):
        random_samples(interpreter, 1, shapes={"x": (1, 40)})
    with pytest.raises(InputError, match=r"no input named y"):
        random_samples(interpreter, 1, shapes={"y": (1, 4)})


def test_a_symbolic_dimension_without_a_declaration_needs_a_shape():
    from coremltools.converters.mil.mil import get_new_symbol

    @mb.program(input_specs=[mb.TensorSpec((1, get_new_symbol()), dtype=types.fp32)], opset_version=IOS18)
    def program(x):
        return mb.relu(x=x)

    declared = declared_inputs(program, "main")
    assert declared["x"].ranges == ((1, 1), (1, None)) and declared["x"].default is None
    with pytest.raises(InputError, match=r"input 'x' has a flexible shape \(1, 1\.\.\) and no default: give its shape"):
        shapes_with(declared, None)
    assert shapes_with(declared, {"x": (1, 300)}) == {"x": (1, 300)}


@given(st.lists(st.tuples(st.integers(0, 6), st.one_of(st.none(), st.integers(0, 6))), min_size=1, max_size=4), st.data())
def test_a_range_accepts_exactly_the_sizes_between_its_bounds(bounds, data):
    ranges = tuple((lower, None if upper is None else lower + upper) for lower, upper in bounds)
    declared = InputShape("x", np.dtype(np.float32), ranges)
    shape = data.draw(st.lists(st.integers(0, 14), min_size=len(ranges), max_size=len(ranges)))
    inside = all(lower <= size and (upper is None or size <= upper) for size, (lower, upper) in zip(shape, ranges))
    assert declared.accepts(shape) == inside
    assert not declared.accepts(shape + [1])  # another rank
    assert declared.accepts([lower for lower, _ in ranges]) and declared.flexible == any(lower != upper for lower, upper in ranges)


def test_shapes_parse_as_the_command_line_writes_them():
    assert parse_shape("1x8") == (1, 8) and parse_shape("3") == (3,)
    with pytest.raises(Exception, match="sizes joined by 'x'"):
        parse_shape("1 by 8")
