"""Kernels of elementwise binary/unary ops, activations, reductions, `select` and `cast`.

Each op with coremltools value inference is checked against it (the oracle) on random shapes,
values and attributes, in every opset whose signature differs (iOS17 activations take fp16
`alpha`/`beta`, iOS17 `cast` has narrow integer types, iOS17 argmax/argmin have `output_dtype`).
`silu` has none and is checked against numpy written from its docstring. Hand-computed examples pin
the semantics that are easy to get wrong: integer floor division and mod, truncation, wrapping,
rounding halves to even, division by zero on integers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from milcompress._coremltools import IOS15, IOS17, IOS18, mb
from tests.reference.helpers import infer_op, run_op

# Parametrized property tests run once per op (and opset); a sixth of the profile's examples each
# keeps the file fast in CI while HYPOTHESIS_PROFILE=dev still explores more.
per_op = settings(max_examples=max(10, settings.default.max_examples // 6))

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# -- the oracle -------------------------------------------------------------------------------------


def assert_matches_inference(build, inputs, opset=IOS15, precision="float32", rtol=1e-5, atol=1e-6):
    """run_op(build, inputs) equals coremltools' value inference of the same op, in shape, dtype
    kind (float / integer / bool) and value (floats to `rtol`/`atol`, the rest exactly)."""
    # Copies: some value inferences (thresholded_relu) write into their input array.
    expected = infer_op(build, {name: np.array(value, copy=True) for name, value in inputs.items()}, opset)
    assert expected is not None, "the op has no value inference"
    actual = run_op(build, inputs, precision=precision, opset=opset)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert _kind(got.dtype) == _kind(want.dtype), (got.dtype, want.dtype)
        if _kind(want.dtype) == "float":
            np.testing.assert_allclose(got, want.astype(np.float32), rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(got, want)


def _kind(dtype: np.dtype) -> str:
    if dtype == np.bool_:
        return "bool"
    return "float" if np.issubdtype(dtype, np.floating) else "integer"


def only(outputs):
    (output,) = outputs
    return output


# -- strategies -------------------------------------------------------------------------------------


# Program inputs cannot be rank 0 in coremltools; scalars are covered as constant operands.
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
broadcastable_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, max_side=3)


def float_values(low: float, high: float):
    """float32s in [low, high], half of them on the half-integer grid (ties, zeros, boundaries)."""
    grid = st.integers(math.ceil(2 * low), math.floor(2 * high)).map(lambda k: k / 2)
    return st.floats(low, high, width=32) | grid


def nonzero_float_values(magnitude_low: float, magnitude_high: float):
    magnitude = float_values(magnitude_low, magnitude_high)
    return st.tuples(magnitude, st.booleans()).map(lambda pair: -pair[0] if pair[1] else pair[0])


def float_arrays(shape, low=-10.0, high=10.0, elements=None):
    return hnp.arrays(np.float32, shape, elements=elements if elements is not None else float_values(low, high))


def int_arrays(shape, low=-50, high=50, elements=None):
    return hnp.arrays(np.int32, shape, elements=elements if elements is not None else st.integers(low, high))


# -- elementwise binary ---------------------------------------------------------------------------

BINARY = {
    "add": mb.add,
    "sub": mb.sub,
    "mul": mb.mul,
    "real_div": mb.real_div,
    "floor_div": mb.floor_div,
    "mod": mb.mod,
    "pow": mb.pow,
    "maximum": mb.maximum,
    "minimum": mb.minimum,
    "equal": mb.equal,
    "not_equal": mb.not_equal,
    "greater": mb.greater,
    "greater_equal": mb.greater_equal,
    "less": mb.less,
    "less_equal": mb.less_equal,
}
DIVISIONS = ("real_div", "floor_div", "mod")


def _binary_float_operands(op_type: str):
    """(x elements, y elements) for which numpy's float32 result is defined and warning-free."""
    if op_type in DIVISIONS:
        return float_values(-20, 20), nonzero_float_values(0.25, 8)
    if op_type == "pow":
        return float_values(0.125, 4), float_values(-4, 4)
    return float_values(-4, 4), float_values(-4, 4)  # the grid makes comparisons tie often


def _binary_int_operands(op_type: str):
    full_range = st.integers(INT32_MIN, INT32_MAX)
    if op_type in DIVISIONS:
        return st.integers(-1000, 1000), st.integers(-30, 30).filter(lambda v: v != 0)
    if op_type == "pow":
        return st.integers(-6, 6), st.integers(0, 13)  # 6^13 overflows int32: wraps
    if op_type in ("add", "sub", "mul"):
        return full_range | st.integers(-5, 5), full_range | st.integers(-5, 5)  # overflow wraps
    return st.integers(-4, 4), st.integers(-4, 4)


@pytest.mark.parametrize("op_type", sorted(BINARY))
@per_op
@given(data=st.data(), pair=broadcastable_pairs, opset=st.sampled_from([IOS15, IOS17, IOS18]))
def test_binary_float_matches_value_inference(op_type, data, pair, opset):
    x_elements, y_elements = _binary_float_operands(op_type)
    (x_shape, y_shape), _ = pair
    x = data.draw(float_arrays(x_shape, elements=x_elements))
    if data.draw(st.booleans(), label="y is a constant scalar"):
        y = np.float32(data.draw(y_elements))
        assert_matches_inference(lambda x: BINARY[op_type](x=x, y=y), {"x": x}, opset, rtol=2e-5)
    else:
        y = data.draw(float_arrays(y_shape, elements=y_elements))
        assert_matches_inference(lambda x, y: BINARY[op_type](x=x, y=y), {"x": x, "y": y}, opset, rtol=2e-5)


@pytest.mark.parametrize("op_type", sorted(BINARY))
@per_op
@given(data=st.data(), pair=broadcastable_pairs)
def test_binary_int32_matches_value_inference(op_type, data, pair):
    x_elements, y_elements = _binary_int_operands(op_type)
    (x_shape, y_shape), _ = pair
    inputs = {
        "x": data.draw(int_arrays(x_shape, elements=x_elements)),
        "y": data.draw(int_arrays(y_shape, elements=y_elements)),
    }
    assert_matches_inference(lambda x, y: BINARY[op_type](x=x, y=y), inputs)


@pytest.mark.parametrize("op_type", ["logical_and", "logical_or", "logical_xor"])
@per_op
@given(data=st.data(), pair=broadcastable_pairs)
def test_logical_binary_matches_value_inference(op_type, data, pair):
    (x_shape, y_shape), _ = pair
    inputs = {"x": data.draw(hnp.arrays(np.bool_, x_shape)), "y": data.draw(hnp.arrays(np.bool_, y_shape))}
    assert_matches_inference(lambda x, y: getattr(mb, op_type)(x=x, y=y), inputs)


def test_integer_floor_div_rounds_toward_negative_infinity_and_mod_takes_the_divisors_sign():
    x = np.array([7, -7, 7, -7, 6], np.int32)
    y = np.array([2, 2, -2, -2, 3], np.int32)
    quotient = only(run_op(lambda x, y: mb.floor_div(x=x, y=y), {"x": x, "y": y}))
    remainder = only(run_op(lambda x, y: mb.mod(x=x, y=y), {"x": x, "y": y}))
    np.testing.assert_array_equal(quotient, [3, -4, -4, 3, 2])
    np.testing.assert_array_equal(remainder, [1, 1, -1, -1, 0])
    np.testing.assert_array_equal(quotient * y + remainder, x)


def test_float_floor_div_and_mod():
    x = np.array([7.5, -7.5, 7.5, -7.5], np.float32)
    y = np.array([2.0, 2.0, -2.0, -2.0], np.float32)
    quotient = only(run_op(lambda x, y: mb.floor_div(x=x, y=y), {"x": x, "y": y}))
    remainder = only(run_op(lambda x, y: mb.mod(x=x, y=y), {"x": x, "y": y}))
    np.testing.assert_array_equal(quotient, [3.0, -4.0, -4.0, 3.0])
    np.testing.assert_array_equal(remainder, [1.5, 0.5, -0.5, -1.5])


def test_integer_real_div_truncates_toward_zero():
    inputs = {"x": np.array([7, -7, 7, -9], np.int32), "y": np.array([2, 2, -2, 4], np.int32)}
    quotient = only(run_op(lambda x, y: mb.real_div(x=x, y=y), inputs))
    np.testing.assert_array_equal(quotient, [3, -3, -3, -2])
    assert np.issubdtype(quotient.dtype, np.integer)


@pytest.mark.parametrize("op_type", ["floor_div", "mod"])
def test_integer_division_by_zero_gives_zero_as_numpy_does(op_type):
    inputs = {"x": np.array([5, -5, 0, 5], np.int32), "y": np.array([0, 0, 0, 3], np.int32)}
    result = only(run_op(lambda x, y: BINARY[op_type](x=x, y=y), inputs))
    np.testing.assert_array_equal(result[:3], [0, 0, 0])
    with np.errstate(divide="ignore"):
        assert_matches_inference(lambda x, y: BINARY[op_type](x=x, y=y), inputs)


def test_int32_arithmetic_wraps_on_overflow():
    inputs = {"x": np.array([INT32_MAX, INT32_MIN, 65536], np.int32), "y": np.array([1, -1, 65536], np.int32)}
    total = only(run_op(lambda x, y: mb.add(x=x, y=y), inputs))
    product = only(run_op(lambda x, y: mb.mul(x=x, y=y), inputs))
    np.testing.assert_array_equal(total, [INT32_MIN, INT32_MIN - 1 + 2**32, 131072])
    np.testing.assert_array_equal(product, [INT32_MAX, INT32_MIN, 0])


def test_binary_broadcasts_a_scalar_against_a_tensor():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    result = only(run_op(lambda x: mb.sub(x=x, y=np.float32(1.5)), {"x": x}))
    np.testing.assert_array_equal(result, x - 1.5)
    row = np.array([10.0, 20.0], np.float32)
    result = only(run_op(lambda x, y: mb.add(x=x, y=y), {"x": x, "y": row}))
    np.testing.assert_array_equal(result, [[11.0, 22.0], [13.0, 24.0]])
    result = only(run_op(lambda x: mb.sub(x=np.float32(10.0), y=x), {"x": x}))
    np.testing.assert_array_equal(result, 10.0 - x)


def test_float16_add_rounds_like_numpy_float16():
    x = np.array([1.0, 1000.0, 0.1], np.float16)
    y = np.array([0.0004883, 0.3, 0.2], np.float16)
    assert_matches_inference(lambda x, y: mb.add(x=x, y=y), {"x": x, "y": y}, precision="float16", rtol=0, atol=0)


# -- select ---------------------------------------------------------------------------------------


@st.composite
def select_operands(draw):
    """cond, a, b with a and b mutually broadcastable and cond broadcasting into their shape (the
    output shape coremltools declares is the broadcast of a and b only)."""
    (a_shape, b_shape), result_shape = draw(broadcastable_pairs)
    cond_rank = draw(st.integers(1, len(result_shape)))
    kept = result_shape[len(result_shape) - cond_rank :]
    cond_shape = tuple(draw(st.sampled_from([1, size])) for size in kept)
    dtype = draw(st.sampled_from([np.float32, np.int32, np.bool_]))
    arrays = {np.float32: float_arrays, np.int32: int_arrays, np.bool_: lambda shape: hnp.arrays(np.bool_, shape)}[dtype]
    return {"cond": draw(hnp.arrays(np.bool_, cond_shape)), "a": draw(arrays(a_shape)), "b": draw(arrays(b_shape))}


@given(inputs=select_operands())
def test_select_matches_value_inference(inputs):
    assert_matches_inference(lambda cond, a, b: mb.select(cond=cond, a=a, b=b), inputs)


def test_select_picks_a_where_cond_is_true():
    inputs = {
        "cond": np.array([[True], [False]]),
        "a": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "b": np.array([-1.0, -2.0], np.float32),
    }
    result = only(run_op(lambda cond, a, b: mb.select(cond=cond, a=a, b=b), inputs))
    np.testing.assert_array_equal(result, [[1.0, 2.0], [-1.0, -2.0]])


# -- elementwise unary ----------------------------------------------------------------------------

# op type -> the float32 domain sampled (where numpy's result is finite and warning-free).
UNARY_FLOAT_DOMAINS = {
    "abs": (-10, 10),
    "acos": (-1, 1),
    "asin": (-1, 1),
    "atan": (-10, 10),
    "atanh": (-0.96875, 0.96875),
    "ceil": (-10, 10),
    "cos": (-10, 10),
    "cosh": (-10, 10),
    "erf": (-4, 4),
    "exp": (-10, 10),
    "exp2": (-10, 10),
    "floor": (-10, 10),
    "round": (-10, 10),
    "sign": (-3, 3),
    "sin": (-10, 10),
    "sinh": (-10, 10),
    "sqrt": (0, 100),
    "square": (-100, 100),
    "tan": (-1.5, 1.5),
    "tanh": (-10, 10),
    "relu": (-10, 10),
    "relu6": (-10, 10),
    "sigmoid": (-20, 20),
    "softplus": (-30, 30),
    "softsign": (-10, 10),
}


@pytest.mark.parametrize("op_type", sorted(UNARY_FLOAT_DOMAINS))
@per_op
@given(data=st.data(), shape=shapes)
def test_unary_float_matches_value_inference(op_type, data, shape):
    low, high = UNARY_FLOAT_DOMAINS[op_type]
    inputs = {"x": data.draw(float_arrays(shape, low, high))}
    assert_matches_inference(lambda x: getattr(mb, op_type)(x=x), inputs)


@pytest.mark.parametrize(
    "op_type, low, high",
    [("abs", INT32_MIN + 1, INT32_MAX), ("sign", -3, 3), ("square", -100000, 100000), ("exp2", -4, 30)],
)
@per_op
@given(data=st.data(), shape=shapes)
def test_unary_int32_matches_value_inference(op_type, low, high, data, shape):
    inputs = {"x": data.draw(int_arrays(shape, low, high))}
    assert_matches_inference(lambda x: getattr(mb, op_type)(x=x), inputs)


@given(x=hnp.arrays(np.bool_, shapes))
def test_logical_not_matches_value_inference(x):
    assert_matches_inference(lambda x: mb.logical_not(x=x), {"x": x})


def test_round_takes_halves_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, -2.51], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.round(x=x), {"x": x})), [0, 2, 2, 0, -2, 0, -3])


def test_sign_keeps_nan_and_zero():
    x = np.array([np.nan, -2.5, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.sign(x=x), {"x": x})), [np.nan, -1.0, 0.0, 1.0])
    assert_matches_inference(lambda x: mb.sign(x=x), {"x": x})


def test_int32_exp2_truncates_fractions_and_square_wraps():
    x = np.array([-1, 0, 3, 30], np.int32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.exp2(x=x), {"x": x})), [0, 1, 8, 2**30])
    squares = only(run_op(lambda x: mb.square(x=x), {"x": np.array([65536, -7], np.int32)}))
    np.testing.assert_array_equal(squares, [0, 49])


EPSILON_OPS = {"log": (0.0, 100.0), "inverse": (0.125, 10.0), "rsqrt": (0.0, 10.0)}


@pytest.mark.parametrize("op_type", sorted(EPSILON_OPS))
@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), shape=shapes, epsilon=st.none() | st.floats(2**-12, 1.0, width=16))
def test_ops_with_epsilon_match_value_inference(op_type, opset, data, shape, epsilon):
    """iOS17 lets epsilon be fp16 for an fp32 x; before, it has x's type."""
    low, high = EPSILON_OPS[op_type]
    inputs = {"x": data.draw(float_arrays(shape, low, high))}
    if epsilon is None:
        build = lambda x: getattr(mb, op_type)(x=x)  # noqa: E731  (coremltools' default epsilon)
    else:
        typed_epsilon = np.float16(epsilon) if opset >= IOS17 else np.float32(epsilon)
        build = lambda x: getattr(mb, op_type)(x=x, epsilon=typed_epsilon)  # noqa: E731
    assert_matches_inference(build, inputs, opset, rtol=2e-5)


def test_log_default_epsilon_keeps_log_of_zero_finite():
    result = only(run_op(lambda x: mb.log(x=x), {"x": np.array([0.0, 1.0], np.float32)}))
    np.testing.assert_allclose(result, [math.log(np.float32(1e-45)), 0.0], rtol=1e-6)


def test_inverse_and_rsqrt_add_epsilon_first():
    x = np.array([1.0, 3.0], np.float32)
    inverse = only(run_op(lambda x: mb.inverse(x=x, epsilon=1.0), {"x": x}))
    rsqrt = only(run_op(lambda x: mb.rsqrt(x=x, epsilon=1.0), {"x": x}))
    np.testing.assert_allclose(inverse, [0.5, 0.25])
    np.testing.assert_allclose(rsqrt, [1 / math.sqrt(2), 0.5])


@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), shape=shapes, bounds=st.lists(float_values(-5, 5), min_size=2, max_size=2, unique=True))
def test_clip_matches_value_inference(opset, data, shape, bounds):
    alpha, beta = sorted(bounds)
    inputs = {"x": data.draw(float_arrays(shape, -8, 8))}
    assert_matches_inference(lambda x: mb.clip(x=x, alpha=np.float32(alpha), beta=np.float32(beta)), inputs, opset)


def test_clip_with_alpha_above_beta_gives_beta_before_ios17():
    x = np.array([-5.0, 0.0, 5.0], np.float32)
    result = only(run_op(lambda x: mb.clip(x=x, alpha=np.float32(2.0), beta=np.float32(1.0)), {"x": x}))
    np.testing.assert_array_equal(result, [1.0, 1.0, 1.0])


@per_op
@given(data=st.data(), shape=shapes, integer=st.booleans())
def test_threshold_matches_value_inference(data, shape, integer):
    if integer:
        inputs, alpha = {"x": data.draw(int_arrays(shape, -10, 10))}, np.int32(data.draw(st.integers(-10, 10)))
    else:
        inputs, alpha = {"x": data.draw(float_arrays(shape))}, np.float32(data.draw(float_values(-10, 10)))
    assert_matches_inference(lambda x: mb.threshold(x=x, alpha=alpha), inputs)


# -- cast -------------------------------------------------------------------------------------------


CAST_IOS15_TARGETS = ["int32", "fp32", "bool", "fp16"]
CAST_IOS17_TARGETS = CAST_IOS15_TARGETS + ["int8", "uint8", "int16", "uint16"]
# The float sources sampled per target: within its range (numpy warns of overflow into float16,
# and leaves float-to-integer overflow undefined).
FLOAT_SOURCE_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "fp16": (-65504, 65504),
}


def _cast_source(data, source: str, shape, target: str):
    if source == "fp32":
        low, high = FLOAT_SOURCE_RANGES.get(target, (-1e6, 1e6))
        return data.draw(float_arrays(shape, low, high))
    if source == "int32":
        if target == "fp16":  # beyond float16's range numpy warns of overflow
            return data.draw(int_arrays(shape, -65504, 65504))
        return data.draw(int_arrays(shape, elements=st.integers(INT32_MIN, INT32_MAX) | st.integers(-300, 300)))
    return data.draw(hnp.arrays(np.bool_, shape))


@pytest.mark.parametrize("source", ["fp32", "int32", "bool"])
@pytest.mark.parametrize("opset, targets", [(IOS15, CAST_IOS15_TARGETS), (IOS17, CAST_IOS17_TARGETS)])
@per_op
@given(data=st.data(), shape=shapes)
def test_cast_matches_value_inference(source, opset, targets, data, shape):
    target = data.draw(st.sampled_from(targets))
    inputs = {"x": _cast_source(data, source, shape, target)}
    # fp16 targets are rounded only when the executor emulates float16.
    precision = "float16" if target == "fp16" else "float32"
    assert_matches_inference(lambda x: mb.cast(x=x, dtype=target), inputs, opset, precision=precision, rtol=0, atol=0)


@per_op
@given(data=st.data(), shape=shapes, via=st.sampled_from(["int8", "uint8", "int16", "uint16"]))
def test_cast_from_narrow_integers_matches_value_inference(data, shape, via):
    """iOS17 casts accept int8/uint8/int16/uint16 inputs (made here by a first cast)."""
    target = data.draw(st.sampled_from(CAST_IOS17_TARGETS))
    # uint16 above 65519 is beyond float16's range (numpy warns of overflow)
    low, high = (0, 65519) if target == "fp16" else (-70000, 70000)
    inputs = {"x": data.draw(int_arrays(shape, low, high))}
    precision = "float16" if target == "fp16" else "float32"
    build = lambda x: mb.cast(x=mb.cast(x=x, dtype=via), dtype=target)  # noqa: E731
    assert_matches_inference(build, inputs, IOS17, precision=precision, rtol=0, atol=0)


def test_cast_float_to_int_truncates_toward_zero():
    x = np.array([1.7, -1.7, 2.5, -2.5, 0.2], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.cast(x=x, dtype="int32"), {"x": x})), [1, -1, 2, -2, 0])


def test_cast_to_narrow_integers_wraps():
    x = np.array([300, -1, -129, 65536 + 7], np.int32)
    uint8 = only(run_op(lambda x: mb.cast(x=x, dtype="uint8"), {"x": x}, opset=IOS17))
    int8 = only(run_op(lambda x: mb.cast(x=x, dtype="int8"), {"x": x}, opset=IOS17))
    uint16 = only(run_op(lambda x: mb.cast(x=x, dtype="uint16"), {"x": x}, opset=IOS17))
    np.testing.assert_array_equal(uint8, [44, 255, 127, 7])
    np.testing.assert_array_equal(int8, [44, -1, 127, 7])
    np.testing.assert_array_equal(uint16, [300, 65535, 65407, 7])


def test_cast_of_float_out_of_a_narrow_range_truncates_then_wraps():
    """numpy leaves this undefined; the executor truncates, then wraps (numpy's result on x86)."""
    x = np.array([-1.7, 300.9], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.cast(x=x, dtype="uint8"), {"x": x}, opset=IOS17)), [255, 44])


def test_cast_to_bool_is_nonzero_and_bool_to_float_is_zero_or_one():
    x = np.array([0.0, -0.0, 0.25, -3.0, np.nan], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.cast(x=x, dtype="bool"), {"x": x})), [False, False, True, True, True])
    flags = np.array([True, False])
    np.testing.assert_array_equal(only(run_op(lambda x: mb.cast(x=x, dtype="fp32"), {"x": flags})), [1.0, 0.0])


def test_cast_to_fp16_keeps_float32_unless_emulating_float16():
    x = np.array([0.1, 2049.0], np.float32)
    build = lambda x: mb.cast(x=x, dtype="fp16")  # noqa: E731
    np.testing.assert_array_equal(only(run_op(build, {"x": x})), x)
    np.testing.assert_array_equal(only(run_op(build, {"x": x}, precision="float16")), x.astype(np.float16).astype(np.float32))


# -- activations ------------------------------------------------------------------------------------


def _parameter(value: float, opset):
    """An activation's alpha/beta: fp16 in iOS17, where it may differ from x's fp32."""
    return np.float16(value) if opset >= IOS17 else np.float32(value)


ACTIVATIONS_WITH_PARAMETERS = {
    # op type -> (alpha range, beta range or None)
    "leaky_relu": ((-2, 2), None),
    "elu": ((-2, 2), None),
    "thresholded_relu": ((-3, 3), None),
    "clamped_relu": ((-2, 2), (0, 6)),  # value inference matches the docstring only for beta >= 0
    "linear_activation": ((-3, 3), (-3, 3)),
    "scaled_tanh": ((-3, 3), (-3, 3)),
    "sigmoid_hard": ((-3, 3), (-3, 3)),
}


@pytest.mark.parametrize("op_type", sorted(ACTIVATIONS_WITH_PARAMETERS))
@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), shape=shapes)
def test_activation_with_parameters_matches_value_inference(op_type, opset, data, shape):
    alpha_range, beta_range = ACTIVATIONS_WITH_PARAMETERS[op_type]
    parameters = {"alpha": _parameter(data.draw(float_values(*alpha_range)), opset)}
    if beta_range is not None:
        parameters["beta"] = _parameter(data.draw(float_values(*beta_range)), opset)
    inputs = {"x": data.draw(float_arrays(shape, -6, 6))}
    assert_matches_inference(lambda x: getattr(mb, op_type)(x=x, **parameters), inputs, opset, rtol=2e-5)


def test_clamped_relu_follows_its_docstring_for_negative_beta():
    """min(beta, x) for x >= 0, min(beta, alpha x) otherwise; coremltools' value inference, a sum
    of two clipped halves, would give -2 for both."""
    x = np.array([2.0, -2.0, 0.0], np.float32)
    result = only(run_op(lambda x: mb.clamped_relu(x=x, alpha=np.float32(0.5), beta=np.float32(-1.0)), {"x": x}))
    np.testing.assert_array_equal(result, [-1.0, -1.0, -1.0])
    result = only(run_op(lambda x: mb.clamped_relu(x=x, alpha=np.float32(-2.0), beta=np.float32(3.0)), {"x": x}))
    np.testing.assert_array_equal(result, [2.0, 3.0, 0.0])


def test_threshold_style_activations_at_their_boundaries():
    x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    thresholded = only(run_op(lambda x: mb.thresholded_relu(x=x, alpha=np.float32(1.0)), {"x": x}))
    leaky = only(run_op(lambda x: mb.leaky_relu(x=x, alpha=np.float32(0.1)), {"x": x}))
    elu = only(run_op(lambda x: mb.elu(x=x, alpha=np.float32(2.0)), {"x": x}))
    np.testing.assert_array_equal(thresholded, [0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(leaky, [-0.1, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(elu, [2.0 * (math.exp(-1) - 1), 0.0, 1.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
@per_op
@given(x=float_arrays(shapes, -6, 6))
def test_gelu_matches_value_inference(mode, x):
    assert_matches_inference(lambda x: mb.gelu(x=x, mode=mode), {"x": x}, rtol=2e-5)


def test_gelu_modes_by_hand():
    x = {"x": np.array([1.0], np.float32)}
    exact = only(run_op(lambda x: mb.gelu(x=x), x))  # EXACT is the default
    tanh = only(run_op(lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), x))
    sigmoid = only(run_op(lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), x))
    np.testing.assert_allclose(exact, [0.8413447], rtol=1e-6)
    np.testing.assert_allclose(tanh, [0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))], rtol=1e-6)
    np.testing.assert_allclose(sigmoid, [1 / (1 + math.exp(-1.702))], rtol=1e-6)


@given(x=float_arrays(shapes, -30, 30))
def test_silu_matches_its_definition(x):
    """silu has no value inference: x * sigmoid(x), in float64 numpy."""
    expected = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(only(run_op(lambda x: mb.silu(x=x), {"x": x})), expected, rtol=1e-5, atol=1e-6)


def test_silu_by_hand():
    result = only(run_op(lambda x: mb.silu(x=x), {"x": np.array([0.0, 1.0, -1.0], np.float32)}))
    np.testing.assert_allclose(result, [0.0, 0.7310586, -0.26894143], rtol=1e-6)


@st.composite
def channel_tensors(draw, min_rank=3, max_rank=5):
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    return draw(float_arrays(shape, -5, 5))


@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), x=channel_tensors())
def test_prelu_matches_value_inference(opset, data, x):
    """One alpha per channel; coremltools allows distinct alphas only for rank 4."""
    channels = x.shape[1]
    if x.ndim == 4:
        alpha = np.array(data.draw(st.lists(float_values(-2, 2), min_size=channels, max_size=channels)))
    else:
        alpha = np.full(channels, data.draw(float_values(-2, 2)))
    alpha = alpha.astype(np.float16 if opset >= IOS17 else np.float32)
    assert_matches_inference(lambda x: mb.prelu(x=x, alpha=alpha), {"x": x}, opset)


def test_prelu_scales_negatives_by_their_channels_alpha():
    x = np.array([[[[-2.0, 3.0]], [[-2.0, 3.0]]]], np.float32)  # [1, 2, 1, 2]
    result = only(run_op(lambda x: mb.prelu(x=x, alpha=np.array([0.5, -1.0], np.float32)), {"x": x}))
    np.testing.assert_array_equal(result, [[[[-1.0, 3.0]], [[2.0, 3.0]]]])


@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), x=channel_tensors())
def test_softplus_parametric_matches_value_inference(opset, data, x):
    channels = x.shape[1]
    dtype = np.float16 if opset >= IOS17 else np.float32
    alpha = np.array(data.draw(st.lists(float_values(-2, 2), min_size=channels, max_size=channels)), dtype)
    beta = np.array(data.draw(st.lists(float_values(-3, 3), min_size=channels, max_size=channels)), dtype)
    assert_matches_inference(lambda x: mb.softplus_parametric(x=x, alpha=alpha, beta=beta), {"x": x}, opset, rtol=2e-5)


@per_op
@given(data=st.data(), x=float_arrays(shapes, -20, 20))
def test_softmax_matches_value_inference(data, x):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    assert_matches_inference(lambda x: mb.softmax(x=x, axis=axis), {"x": x})
    result = only(run_op(lambda x: mb.softmax(x=x, axis=axis), {"x": x}))
    np.testing.assert_allclose(result.sum(axis=axis), 1.0, rtol=1e-5)


def test_softmax_defaults_to_the_last_axis():
    x = np.array([[0.0, math.log(3.0)], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(only(run_op(lambda x: mb.softmax(x=x), {"x": x})), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


# -- reductions -------------------------------------------------------------------------------------

# op type -> (float32 domain, int32 domain): the sums of reduce_log_sum stay positive.
REDUCTIONS = {
    "reduce_sum": ((-10, 10), (-1000, 1000)),
    "reduce_prod": ((-2, 2), (-4, 4)),  # 4^27 overflows int32: wraps as numpy's astype does
    "reduce_mean": ((-10, 10), (-1000, 1000)),
    "reduce_max": ((-10, 10), (-1000, 1000)),
    "reduce_min": ((-10, 10), (-1000, 1000)),
    "reduce_l1_norm": ((-10, 10), (-1000, 1000)),
    "reduce_l2_norm": ((-10, 10), (-1000, 1000)),
    "reduce_sum_square": ((-10, 10), (-1000, 1000)),
    "reduce_log_sum": ((0.125, 10), (1, 1000)),
    "reduce_log_sum_exp": ((-30, 30), (-20, 20)),
}


@st.composite
def reduction_axes(draw, rank: int):
    """None (every axis) or a nonempty set of distinct axes, each maybe negative."""
    if draw(st.booleans()):
        return None
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    return [axis - rank if draw(st.booleans()) else axis for axis in axes]


@pytest.mark.parametrize("op_type", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@per_op
@given(data=st.data(), shape=shapes, keep_dims=st.booleans())
def test_reduction_matches_value_inference(op_type, dtype, data, shape, keep_dims):
    float_domain, int_domain = REDUCTIONS[op_type]
    x = data.draw(float_arrays(shape, *float_domain) if dtype == np.float32 else int_arrays(shape, *int_domain))
    axes = data.draw(reduction_axes(len(shape)))
    options = {"keep_dims": keep_dims} if axes is None else {"axes": axes, "keep_dims": keep_dims}
    assert_matches_inference(lambda x: getattr(mb, op_type)(x=x, **options), {"x": x}, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("op_type", sorted(REDUCTIONS))
def test_reduction_over_no_axes_applies_only_the_elementwise_part(op_type):
    x = np.array([[0.5, 2.0], [1.0, 4.0]], np.float32)
    build = lambda x: getattr(mb, op_type)(x=x, axes=np.zeros(0, np.int32), keep_dims=True)  # noqa: E731
    assert_matches_inference(build, {"x": x})


def test_int32_reductions_truncate_toward_zero():
    x = np.array([[1, 2], [-4, 2]], np.int32)
    mean = only(run_op(lambda x: mb.reduce_mean(x=x, axes=[1]), {"x": x}))
    norm = only(run_op(lambda x: mb.reduce_l2_norm(x=x, axes=[1]), {"x": x}))
    np.testing.assert_array_equal(mean, [1, -1])  # 1.5 -> 1, -1 -> -1
    np.testing.assert_array_equal(norm, [2, 4])  # sqrt 5 -> 2, sqrt 20 -> 4


def test_reduction_keep_dims_and_negative_axes_by_hand():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    kept = only(run_op(lambda x: mb.reduce_sum(x=x, axes=[-1, 0], keep_dims=True), {"x": x}))
    everything = only(run_op(lambda x: mb.reduce_max(x=x), {"x": x}))
    np.testing.assert_array_equal(kept, x.sum(axis=(0, 2), keepdims=True))
    assert everything.shape == () and float(everything) == 23.0


@pytest.mark.parametrize("op_type", ["reduce_argmax", "reduce_argmin"])
@pytest.mark.parametrize("opset", [IOS15, IOS17])
@per_op
@given(data=st.data(), x=float_arrays(shapes, elements=st.integers(-2, 2).map(float)) | int_arrays(shapes, -2, 2))
def test_arg_reduction_matches_value_inference(op_type, opset, data, x):
    """Small value sets make ties common: the first index wins, as in numpy."""
    options = {"axis": data.draw(st.integers(-x.ndim, x.ndim - 1)), "keep_dims": data.draw(st.booleans())}
    if opset >= IOS17:
        options["output_dtype"] = data.draw(st.sampled_from(["int32", "uint16"]))
    assert_matches_inference(lambda x: getattr(mb, op_type)(x=x, **options), {"x": x}, opset)


def test_arg_reduction_defaults_to_the_last_axis_and_first_tie():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(only(run_op(lambda x: mb.reduce_argmax(x=x), {"x": x})), [1, 0])
    np.testing.assert_array_equal(only(run_op(lambda x: mb.reduce_argmin(x=x), {"x": x})), [0, 1])
    kept = only(run_op(lambda x: mb.reduce_argmax(x=x, axis=0, keep_dims=True), {"x": x}))
    np.testing.assert_array_equal(kept, [[1, 0, 0]])
