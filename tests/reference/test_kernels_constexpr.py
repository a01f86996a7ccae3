"""Constexpr and quantization kernels against coremltools' own decompression.

Each constexpr op is built in a program of its opset (a dummy runtime input, the constexpr output
returned), run through the executor, and compared bit for bit with the op's
`materialized_val_inference()` (or, where coremltools does not follow a chain, its static
`decompress`). Float outputs are compared as float32 bit patterns after rounding coremltools' value
to the op's declared dtype. `quantize` and `dequantize` run per input and are compared with
coremltools' value inference on constant inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_lut_to_dense as Ios18LutToDense
from hypothesis.extra import numpy as hnp

from milcompress._coremltools import IOS16, IOS17, IOS18, Function, Program, mb, types
from milcompress.reference.interpreter import Interpreter
from tests.reference.helpers import infer_op, op_program


# -- building and running -------------------------------------------------------------------------

INTEGER_RANGES = {
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int8": (-128, 127),
    "uint8": (0, 255),
    **{f"uint{nbits}": (0, 2**nbits - 1) for nbits in (1, 2, 3, 6)},
}
FLOAT_DTYPES = {"fp16": np.float16, "fp32": np.float32}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype coremltools keeps MIL dtype `name` in (sub-byte types carry metadata)."""
    return np.dtype(types.nptype_from_builtin(types.string_to_builtin(name)))


def run_constexpr(build, opset):
    """Run `build()` (returning a var or a tuple of vars) in a program of `opset` whose only runtime
    input is a dummy; returns (executor values, the vars)."""
    built = []

    def build_outputs(dummy):
        outputs = build()
        built.extend(outputs if isinstance(outputs, tuple) else (outputs,))
        return tuple(built)

    program = op_program(build_outputs, {"dummy": np.zeros(1, np.float32)}, opset)
    interpreter = Interpreter(program)
    values = interpreter.run({"dummy": np.zeros(1, np.float32)})
    return [values[var.name] for var in built], built


def assert_same(ours: np.ndarray, expected, declared) -> None:
    """`ours` equals coremltools' `expected`: integers exactly, floats bit for bit after rounding
    `expected` to the declared float dtype."""
    expected = np.asarray(expected)
    assert ours.shape == expected.shape
    if types.is_float(declared):
        expected = expected.astype(types.nptype_from_builtin(declared)).astype(np.float32)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, expected)
        np.testing.assert_array_equal(ours.view(np.uint32), expected.view(np.uint32))  # signs of zero too
    else:
        assert ours.dtype.kind == expected.dtype.kind and ours.dtype.itemsize == expected.dtype.itemsize
        np.testing.assert_array_equal(ours, expected)


def ios18_lut_decompress(indices, lut, vector_axis):
    """coremltools' own iOS18 palettization of dense `indices` with a materialized `lut`."""
    return Ios18LutToDense.decompress(indices, lut, vector_axis)


def assert_matches_materialized(build, opset):
    """Every output of every op `build` returns equals that op's materialized value."""
    ours, built = run_constexpr(build, opset)
    for value, var in zip(ours, built):
        materialized = var.op.materialized_val_inference()
        if isinstance(materialized, tuple):
            materialized = materialized[list(var.op.outputs).index(var)]
        assert_same(value, materialized, var.dtype)
    return ours


# -- strategies -----------------------------------------------------------------------------------


def integer_arrays(name: str, shape) -> st.SearchStrategy:
    low, high = INTEGER_RANGES[name]
    dtype = numpy_dtype(name)
    return hnp.arrays(np.int64, shape, elements=st.integers(low, high)).map(lambda array: array.astype(dtype))


def float_arrays(name: str, shape, magnitude: float = 100.0) -> st.SearchStrategy:
    dtype = FLOAT_DTYPES[name]
    width = 16 if name == "fp16" else 32
    return hnp.arrays(dtype, shape, elements=st.floats(-magnitude, magnitude, width=width))


def arrays_of(name: str, shape) -> st.SearchStrategy:
    return float_arrays(name, shape) if name in FLOAT_DTYPES else integer_arrays(name, shape)


small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def blocked_shapes(draw, min_dims=1, max_dims=3):
    """(shape, block counts): each dimension is a whole number of blocks."""
    rank = draw(st.integers(min_dims, max_dims))
    counts = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    sizes = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    return tuple(count * size for count, size in zip(counts, sizes)), tuple(counts)


def packed_bits(bits: np.ndarray) -> np.ndarray:
    """Bits packed into bytes, least significant bit first (the iOS16 layout)."""
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")


# -- iOS16 ----------------------------------------------------------------------------------------


@given(data=st.data())
def test_affine_dequantize_matches_coremltools(data):
    shape = data.draw(small_shapes)
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    parameter_shape = data.draw(st.sampled_from([(), (shape[axis],)]))
    quantized = data.draw(integer_arrays(data.draw(st.sampled_from(["int8", "uint8"])), shape))
    zero_point_shape = data.draw(st.sampled_from([(), (shape[axis],)]))
    zero_point = data.draw(arrays_of(data.draw(st.sampled_from(["int8", "uint8", "fp32"])), zero_point_shape))
    scale = data.draw(float_arrays(data.draw(st.sampled_from(["fp16", "fp32"])), parameter_shape, 10.0))

    assert_matches_materialized(
        lambda: mb.constexpr_affine_dequantize(quantized_data=quantized, zero_point=zero_point, scale=scale, axis=axis),
        IOS16,
    )


def test_affine_dequantize_by_hand():
    quantized = np.array([[0, 10], [20, 255]], dtype=np.uint8)
    (ours,), _ = run_constexpr(
        lambda: mb.constexpr_affine_dequantize(
            quantized_data=quantized,
            zero_point=np.array([10, 20], dtype=np.uint8),
            scale=np.array([0.5, 2.0], dtype=np.float32),
            axis=1,
        ),
        IOS16,
    )
    np.testing.assert_array_equal(ours, [[-5.0, -20.0], [5.0, 470.0]])


@pytest.mark.parametrize("opset", [IOS16, IOS18])
@given(values=float_arrays("fp16", small_shapes, magnitude=65504.0))
def test_cast_matches_coremltools(opset, values):
    ours = assert_matches_materialized(lambda: mb.constexpr_cast(source_val=values, output_dtype="fp32"), opset)
    np.testing.assert_array_equal(ours[0], values.astype(np.float32))


@given(data=st.data())
def test_ios16_lut_to_dense_unpacks_indices_like_coremltools(data):
    nbits = data.draw(st.sampled_from([1, 2, 4, 6, 8]))
    shape = data.draw(small_shapes)
    count = int(np.prod(shape))
    lut = data.draw(arrays_of(data.draw(st.sampled_from(["int8", "uint8", "fp16", "fp32"])), (2**nbits,)))
    # Any bytes are valid indices; bits past the last index are padding.
    indices = data.draw(hnp.arrays(np.uint8, (int(np.ceil(nbits * count / 8)),)))

    assert_matches_materialized(
        lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut, shape=np.array(shape, dtype=np.uint32)), IOS16
    )


def test_ios16_lut_to_dense_bit_order_by_hand():
    # The example in coremltools' docstring: 2-bit indices i0..i4 = 0, 3, 2, 1, 3, LSB first.
    indices = np.array([0b01101100, 0b00000011], dtype=np.uint8)
    lut = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)
    (ours,), _ = run_constexpr(
        lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut, shape=np.array([5], dtype=np.uint32)), IOS16
    )
    np.testing.assert_array_equal(ours, [10.0, 40.0, 30.0, 20.0, 40.0])


@given(data=st.data())
def test_ios16_sparse_to_dense_unpacks_mask_like_coremltools(data):
    shape = data.draw(small_shapes)
    bits = data.draw(hnp.arrays(np.bool_, (int(np.prod(shape)),)))
    nonzero = data.draw(arrays_of(data.draw(st.sampled_from(["int8", "uint8", "fp16", "fp32"])), (int(bits.sum()),)))

    assert_matches_materialized(
        lambda: mb.constexpr_sparse_to_dense(
            nonzero_data=nonzero, mask=packed_bits(bits), shape=np.array(shape, dtype=np.uint32)
        ),
        IOS16,
    )


def test_ios16_sparse_to_dense_bit_order_by_hand():
    # coremltools' docstring: shape (5,), mask byte ...01100 sets elements 2 and 3.
    (ours,), _ = run_constexpr(
        lambda: mb.constexpr_sparse_to_dense(
            nonzero_data=np.array([7, 9], dtype=np.int8),
            mask=np.array([0b00001100], dtype=np.uint8),
            shape=np.array([5], dtype=np.uint32),
        ),
        IOS16,
    )
    np.testing.assert_array_equal(ours, [0, 0, 7, 9, 0])
    assert ours.dtype == np.int8


# -- iOS18 ----------------------------------------------------------------------------------------

DATA_DTYPES = ["int4", "uint4", "int8", "uint8", "fp16", "fp32"]


@st.composite
def shift_scale_parameters(draw, shape, block_counts, data_dtype):
    """(scale, offset or None) for block-wise quantized data of `shape` and MIL dtype `data_dtype`:
    the offset is absent, of the data's integer dtype, or fp16 / fp32."""
    scale = draw(float_arrays(draw(st.sampled_from(["fp16", "fp32"])), block_counts, 10.0))
    offset_dtypes = [None, "fp16", "fp32"] + ([] if data_dtype in FLOAT_DTYPES else [data_dtype])
    offset_dtype = draw(st.sampled_from(offset_dtypes))
    offset = None if offset_dtype is None else draw(arrays_of(offset_dtype, block_counts))
    return scale, offset


@given(data=st.data())
def test_blockwise_shift_scale_matches_coremltools(data):
    shape, block_counts = data.draw(blocked_shapes())
    data_dtype = data.draw(st.sampled_from(DATA_DTYPES))
    quantized = data.draw(arrays_of(data_dtype, shape))
    scale, offset = data.draw(shift_scale_parameters(shape, block_counts, data_dtype))

    assert_matches_materialized(
        lambda: mb.constexpr_blockwise_shift_scale(data=quantized, scale=scale, offset=offset), IOS18
    )


def test_blockwise_shift_scale_by_hand():
    # Two blocks along the last axis: columns 0-1 use (scale 0.5, offset 1), columns 2-3 (2.0, -2).
    quantized = np.array([[-8, 7, 0, -2]], dtype=numpy_dtype("int4"))
    (ours,), _ = run_constexpr(
        lambda: mb.constexpr_blockwise_shift_scale(
            data=quantized,
            scale=np.array([[0.5, 2.0]], dtype=np.float32),
            offset=np.array([[1, -2]], dtype=numpy_dtype("int4")),
        ),
        IOS18,
    )
    np.testing.assert_array_equal(ours, [[-4.5, 3.0, 4.0, 0.0]])


def test_blockwise_shift_scale_rounds_fp16_weights_like_coremltools():
    # fp32 data under an fp16 scale is first rounded to fp16, then every step is fp16.
    quantized = np.array([[1.0001, 3.0, 2049.0]], dtype=np.float32)
    (ours,), _ = run_constexpr(
        lambda: mb.constexpr_blockwise_shift_scale(data=quantized, scale=np.array([[1.0]], dtype=np.float16)), IOS18
    )
    np.testing.assert_array_equal(ours, [[1.0, 3.0, 2048.0]])


@st.composite
def lut_arguments(draw, shape, block_counts):
    """(nbits, lut, vector_axis or None) for indices of `shape`: a table per block, vectors of 1-3."""
    nbits = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    vector_size = draw(st.integers(1, 3))
    rank = len(shape)
    vector_axis = draw(st.integers(-rank, rank - 1)) if vector_size > 1 else draw(st.none() | st.integers(-rank, rank - 1))
    lut_dtype = draw(st.sampled_from(["int8", "uint8", "fp16", "fp32"]))
    palette_count = min(2**nbits, 16)  # large tables: repeat the first 16 entries, a smaller example
    lut = draw(arrays_of(lut_dtype, block_counts + (palette_count, vector_size)))
    lut = np.concatenate([lut] * (2**nbits // palette_count), axis=rank) if palette_count < 2**nbits else lut
    return nbits, lut, vector_axis


@given(data=st.data())
def test_ios18_lut_to_dense_matches_coremltools(data):
    shape, block_counts = data.draw(blocked_shapes())
    nbits, lut, vector_axis = data.draw(lut_arguments(shape, block_counts))
    indices = data.draw(integer_arrays(f"uint{nbits}", shape))

    assert_matches_materialized(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut, vector_axis=vector_axis), IOS18)


def test_ios18_lut_to_dense_grouped_by_hand():
    # coremltools' docstring, case 1: two 2-bit tables, one per half of the first axis.
    indices = np.array([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3], dtype=numpy_dtype("uint2")).reshape(6, 2)
    lut = np.array([1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0], dtype=np.float16).reshape(2, 1, 4, 1)
    (ours,), _ = run_constexpr(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut), IOS18)
    np.testing.assert_array_equal(ours, [[9, 13], [13, 1], [5, 1], [26, 2], [18, 10], [2, 26]])


@pytest.mark.parametrize(
    "vector_axis, expected",
    [
        (1, [[[0, 0], [1, 1], [2, 2], [3, 0], [4, 1], [5, 2]], [[3, 3], [4, 4], [5, 5], [0, 0], [1, 1], [2, 2]]]),
        (2, [[[0, 1, 2, 0, 1, 2], [3, 4, 5, 0, 1, 2]], [[3, 4, 5, 3, 4, 5], [0, 1, 2, 0, 1, 2]]]),
    ],
)
def test_ios18_lut_to_dense_vectors_by_hand(vector_axis, expected):
    # coremltools' docstring, case 2: 1-bit indices, vectors a = (0, 1, 2) and b = (3, 4, 5).
    indices = np.array([[[0, 0], [1, 0]], [[1, 1], [0, 0]]], dtype=numpy_dtype("uint1"))
    lut = np.arange(6, dtype=np.int8).reshape(1, 1, 1, 2, 3)
    (ours,), _ = run_constexpr(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut, vector_axis=vector_axis), IOS18)
    np.testing.assert_array_equal(ours, expected)


@given(data=st.data())
def test_ios18_sparse_to_dense_matches_coremltools(data):
    mask = data.draw(integer_arrays("uint1", small_shapes))
    nonzero = data.draw(arrays_of(data.draw(st.sampled_from(DATA_DTYPES)), (int(mask.sum()),)))

    assert_matches_materialized(lambda: mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=mask), IOS18)


@given(data=st.data())
def test_lut_to_sparse_then_sparse_to_dense_match_coremltools(data):
    shape, block_counts = data.draw(blocked_shapes())
    nbits, lut, vector_axis = data.draw(lut_arguments(shape, block_counts))
    mask = data.draw(integer_arrays("uint1", shape))
    indices = data.draw(integer_arrays(f"uint{nbits}", (int(mask.sum()),)))

    def build():
        output_mask, nonzero = mb.constexpr_lut_to_sparse(
            indices_mask=mask, indices_nonzero_data=indices, lut=lut, vector_axis=vector_axis
        )
        return output_mask, nonzero, mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=output_mask)

    output_mask, nonzero, dense = assert_matches_materialized(build, IOS18)
    # The dense weight equals palettizing the dense indices (zeros elsewhere).
    dense_indices = np.zeros(shape, dtype=np.uint8)
    dense_indices[mask != 0] = indices
    full = ios18_lut_decompress(dense_indices, lut, vector_axis)
    np.testing.assert_array_equal(dense, np.where(output_mask != 0, full, 0).astype(dense.dtype))


@given(data=st.data())
def test_sparse_blockwise_shift_scale_then_sparse_to_dense_match_coremltools(data):
    shape, block_counts = data.draw(blocked_shapes())
    data_dtype = data.draw(st.sampled_from(DATA_DTYPES))
    mask = data.draw(integer_arrays("uint1", shape))
    nonzero = data.draw(arrays_of(data_dtype, (int(mask.sum()),)))
    scale, offset = data.draw(shift_scale_parameters(shape, block_counts, data_dtype))

    def build():
        output_mask, values = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask, nonzero_data=nonzero, scale=scale, offset=offset
        )
        return output_mask, values, mb.constexpr_sparse_to_dense(nonzero_data=values, mask=output_mask)

    output_mask, values, dense = assert_matches_materialized(build, IOS18)
    np.testing.assert_array_equal(output_mask, mask)
    np.testing.assert_array_equal(dense[mask == 0], 0)


def test_sparse_blockwise_shift_scale_by_hand():
    # coremltools' docstring example (one row dropped), per-column scales and offsets.
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=numpy_dtype("uint1"))
    nonzero = np.array([10, 11, 3, 4, 5, 6, 7], dtype=np.int8)
    scale = np.array([[0.5, 0.25, 2.0, 4.0]], dtype=np.float32)
    offset = np.array([[1, 2, 3, 4]], dtype=np.int8)

    def build():
        output_mask, values = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask, nonzero_data=nonzero, scale=scale, offset=offset
        )
        return values, mb.constexpr_sparse_to_dense(nonzero_data=values, mask=output_mask)

    (values, dense), _ = run_constexpr(build, IOS18)
    np.testing.assert_array_equal(values, [4.5, 2.25, 1.0, 0.5, 4.0, 6.0, 12.0])
    np.testing.assert_array_equal(dense, [[4.5, 2.25, 0, 0], [1.0, 0.5, 4.0, 0], [0, 0, 6.0, 12.0]])


@given(data=st.data())
def test_lut_quantized_by_blockwise_shift_scale_matches_coremltools(data):
    shape, block_counts = data.draw(blocked_shapes(max_dims=2))
    nbits, table, vector_axis = data.draw(lut_arguments(shape, block_counts))
    # The table is itself int8 data, shift-scaled per palette entry of the first table block.
    lut_shape = table.shape
    quantized_table = data.draw(integer_arrays("int8", lut_shape))
    scale_shape = (1,) * len(block_counts) + (lut_shape[-2], 1)
    scale, offset = data.draw(shift_scale_parameters(lut_shape, scale_shape, "int8"))
    indices = data.draw(integer_arrays(f"uint{nbits}", shape))

    def build():
        lut = mb.constexpr_blockwise_shift_scale(data=quantized_table, scale=scale, offset=offset)
        return lut, mb.constexpr_lut_to_dense(indices=indices, lut=lut, vector_axis=vector_axis)

    (lut_value, dense), (lut_var, dense_var) = run_constexpr(build, IOS18)
    materialized_lut = lut_var.op.materialized_val_inference()
    assert_same(lut_value, materialized_lut, lut_var.dtype)
    # coremltools' lut_to_dense does not materialize a constexpr table itself: decompress with it.
    assert_same(dense, ios18_lut_decompress(indices, materialized_lut, vector_axis), dense_var.dtype)


# -- iOS17 runtime quantization -------------------------------------------------------------------


@st.composite
def per_axis_parameters(draw, shape, integer_dtype):
    """(axis or None, scale, zero_point or None): per tensor or along one axis."""
    rank = len(shape)
    axis = draw(st.none() | st.integers(-rank, rank - 1))
    parameter_shape = () if axis is None else (shape[axis],)
    magnitudes = st.floats(0.015625, 10.0, width=32) | st.sampled_from([0.25, 0.5, 1.0, 2.0])
    scale = draw(hnp.arrays(np.float32, parameter_shape, elements=magnitudes | magnitudes.map(lambda value: -value)))
    zero_point = draw(st.none() | integer_arrays(integer_dtype, parameter_shape))
    return axis, scale, zero_point


@given(data=st.data())
def test_quantize_matches_coremltools(data):
    shape = data.draw(small_shapes)
    output_dtype = data.draw(st.sampled_from(["int8", "uint8"]))
    axis, scale, zero_point = data.draw(per_axis_parameters(shape, output_dtype))
    # Quarter-integers divided by a power-of-two scale land exactly on halves: ties round to even.
    quarters = st.integers(-2000, 2000).map(lambda quarter: quarter * 0.25)
    values = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-1000, 1000, width=32) | quarters))

    def build(x):
        return mb.quantize(input=x, scale=scale, zero_point=zero_point, axis=axis, output_dtype=output_dtype)

    program = op_program(build, {"x": values}, IOS17)
    (ours,) = Interpreter(program).run({"x": values}).values()
    (expected,) = infer_op(build, {"x": values}, IOS17)
    assert ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)


def test_quantize_by_hand():
    values = np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0], dtype=np.float32)

    def build(x):
        return mb.quantize(input=x, scale=np.float32(1.0), zero_point=np.int8(0), output_dtype="int8")

    program = op_program(build, {"x": values}, IOS17)
    (ours,) = Interpreter(program).run({"x": values}).values()
    np.testing.assert_array_equal(ours, [0, 2, 2, 0, 127, -128])  # halves to even, then clipped
    assert ours.dtype == np.int8


def run_dequantize(values: np.ndarray, **parameters) -> tuple:
    """(executor value, coremltools' materialized value) of `dequantize` on integer input `values`."""
    placeholder = mb.placeholder(shape=values.shape, dtype=types.numpy_type_to_builtin_type(values.dtype))
    with Function({"x": placeholder}, IOS17) as function:
        function.set_outputs([mb.dequantize(input=function.inputs["x"], **parameters)])
    program = Program()
    program.add_function("main", function)
    (ours,) = Interpreter(program).run({"x": values}).values()

    expected = []

    @mb.program(input_specs=[], opset_version=IOS17)
    def constant_program():
        output = mb.dequantize(input=values, **parameters)
        expected.append(output.op.materialized_val_inference())
        return output

    return ours, expected[0]


@given(data=st.data())
def test_dequantize_matches_coremltools(data):
    shape = data.draw(small_shapes)
    input_dtype = data.draw(st.sampled_from(["int8", "uint8"]))
    axis, scale, zero_point = data.draw(per_axis_parameters(shape, input_dtype))
    scale_fp16 = data.draw(st.booleans())
    scale = scale.astype(np.float16) if scale_fp16 else scale
    values = data.draw(integer_arrays(input_dtype, shape))

    ours, expected = run_dequantize(values, scale=scale, zero_point=zero_point, axis=axis)
    assert ours.dtype == np.float32
    # A runtime op: computed in float32 whatever the declared dtype; coremltools rounds to fp16.
    assert_same(ours.astype(expected.dtype).astype(np.float32), expected, types.fp32)
    if not scale_fp16:
        assert_same(ours, expected, types.fp32)


def test_dequantize_by_hand():
    values = np.array([[0, 10], [20, 255]], dtype=np.uint8)
    ours, _ = run_dequantize(
        values, scale=np.array([0.5, 2.0], dtype=np.float32), zero_point=np.array([10, 20], dtype=np.uint8), axis=1
    )
    np.testing.assert_array_equal(ours, [[-5.0, -20.0], [5.0, 470.0]])
