"""Tests of the tensor transformation, tensor operation and scatter/gather kernels.

Where coremltools has value inference for an op, property tests compare the executor with it over
random shapes, values and attributes (`check_inference`). Where it has none (or where it is wrong:
exclusive `cumsum`, `concat` with `interleave`, `scatter_along_axis` in any mode but `update`), the
reference is numpy written from the op's documented semantics, plus hand-computed examples.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS16, IOS17, IOS18, mb
from milcompress.reference.interpreter import ExecutionError
from milcompress.reference.kernels import KERNELS, OpArgs
from tests.reference.helpers import infer_op, op_program, run_op
from tests.strategies import shapes

SEEDS = st.integers(0, 2**32 - 1)

# A third of the profile's examples per property (20 under `ci`): the file covers ~40 op types and
# stays within its time budget; HYPOTHESIS_PROFILE=dev still explores 100 per property.
FAST = settings(max_examples=max(10, settings.default.max_examples // 3))


def floats(data, shape, low=-5.0, high=5.0) -> np.ndarray:
    rng = np.random.default_rng(data.draw(SEEDS))
    return rng.uniform(low, high, shape).astype(np.float32)


def distinct_values(data, shape, dtype=np.float32) -> np.ndarray:
    """Values with no ties, so every sort order is unique."""
    rng = np.random.default_rng(data.draw(SEEDS))
    size = math.prod(shape)
    return (rng.permutation(size) - size // 2).reshape(shape).astype(dtype) * (0.25 if dtype == np.float32 else 1)


def ints(data, shape, low=-5, high=6) -> np.ndarray:
    rng = np.random.default_rng(data.draw(SEEDS))
    return rng.integers(low, high, shape).astype(np.int32)


def assert_outputs_equal(actual: List[np.ndarray], expected: List[np.ndarray], exact: bool = True) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        want = np.asarray(want)
        assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
        kinds = {got.dtype.kind, want.dtype.kind}
        assert len(kinds) == 1 or kinds <= {"i", "u"}, (got.dtype, want.dtype)
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def check_inference(build, inputs, opset=IOS15, exact=True) -> List[np.ndarray]:
    """Runs the op in the executor and compares it with coremltools' value inference."""
    expected = infer_op(build, inputs, opset)
    assert expected is not None, "the op has no value inference here"
    actual = run_op(build, inputs, opset=opset)
    assert_outputs_equal(actual, expected, exact)
    return actual


def builds(build, inputs, opset=IOS15) -> bool:
    """Whether coremltools accepts the op (its type inference rejects some attribute draws)."""
    try:
        op_program(build, inputs, opset)
    except (ValueError, TypeError, IndexError, AssertionError):
        return False
    return True


# -- reshape and friends ---------------------------------------------------------------------------


@st.composite
def regrouped(draw, shape):
    """A shape with the same number of elements: dims permuted, neighbours merged, 1s inserted."""
    merged: List[int] = []
    for size in draw(st.permutations(list(shape))):
        if merged and draw(st.booleans()):
            merged[-1] *= size
        else:
            merged.append(size)
    for _ in range(draw(st.integers(0, 1))):
        merged.insert(draw(st.integers(0, len(merged))), 1)
    return merged


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]), st.booleans())
def test_reshape_matches_inference(data, opset, runtime_shape):
    shape = data.draw(shapes(1, 4, 4))
    target = data.draw(regrouped(shape))
    # Zeros copy an input dim: same position in iOS15 (only when the ranks match), right-aligned in iOS17.
    for i in range(len(target)):
        if opset == IOS17:
            inherited = shape[len(shape) - len(target) + i] if len(shape) - len(target) + i >= 0 else 1
        else:
            inherited = shape[i] if len(target) == len(shape) else None
        if inherited == target[i] and data.draw(st.booleans()):
            target[i] = 0
    if data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    x = floats(data, shape)
    target_array = np.array(target, dtype=np.int32)
    expected = infer_op(lambda x: mb.reshape(x=x, shape=target_array), {"x": x}, opset)
    if runtime_shape:
        actual = run_op(lambda x, s: mb.reshape(x=x, shape=s), {"x": x, "s": target_array}, opset=opset)
    else:
        actual = run_op(lambda x: mb.reshape(x=x, shape=target_array), {"x": x}, opset=opset)
    assert_outputs_equal(actual, expected)


def test_reshape_zero_examples():
    build = lambda x, s: mb.reshape(x=x, shape=s)  # noqa: E731
    x = np.arange(100, dtype=np.float32).reshape(2, 50)
    shape = np.array([1, 0, -1, 0], dtype=np.int32)
    (result,) = run_op(build, {"x": x, "s": shape}, opset=IOS17)
    assert result.shape == (1, 1, 2, 50)  # iOS17's docstring example: zeros match dims from the right
    np.testing.assert_array_equal(result.reshape(-1), x.reshape(-1))
    with pytest.raises(ExecutionError, match="rank"):  # in iOS15 a zero needs len(shape) == rank(x)
        run_op(build, {"x": x, "s": shape}, opset=IOS15)
    (result,) = run_op(build, {"x": x.reshape(2, 5, 10), "s": np.array([0, -1, 2], np.int32)}, opset=IOS15)
    assert result.shape == (2, 25, 2)


@FAST
@given(st.data(), st.sampled_from([IOS16, IOS17]))
def test_reshape_like_uses_the_reference_shapes(data, opset):
    shape = data.draw(shapes(1, 4, 4))
    target = data.draw(regrouped(shape))
    split = data.draw(st.integers(0, len(target)))
    extra = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))  # keeps both refs rank >= 1
    first = np.zeros(tuple(target[:split]) + tuple(extra), np.float32)  # contributes target[:split]
    second = np.zeros(tuple(extra) + tuple(target[split:]), np.int32)  # contributes target[split:]
    x = floats(data, shape)

    def build(x, first, second):
        return mb.reshape_like(
            x=x, ref_tensors=(first, second), begins=(0, len(extra)), ends=(split, 0), end_masks=(False, True)
        )

    (result,) = run_op(build, {"x": x, "first": first, "second": second}, opset=opset)
    np.testing.assert_array_equal(result, x.reshape(target))


def test_reshape_like_docstring_example():
    x = np.arange(180, dtype=np.float32)
    first, second = np.zeros((2, 3, 4), np.float32), np.zeros((1, 5, 6), np.float32)

    def build(x, first, second):
        return mb.reshape_like(x=x, ref_tensors=(first, second), begins=(0, 1), ends=(2, 0), end_masks=(False, True))

    (result,) = run_op(build, {"x": x, "first": first, "second": second}, opset=IOS16)
    np.testing.assert_array_equal(result, x.reshape(2, 3, 5, 6))


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_expand_dims_matches_inference(data, opset):
    shape = data.draw(shapes(1, 3, 4))  # rank-0 inputs cannot be placeholders
    count = data.draw(st.integers(1, 3))
    out_rank = len(shape) + count
    axes = data.draw(st.lists(st.integers(0, out_rank - 1), min_size=count, max_size=count, unique=True))
    axes = [axis - out_rank if data.draw(st.booleans()) else axis for axis in axes]
    x = floats(data, shape)
    check_inference(lambda x: mb.expand_dims(x=x, axes=axes), {"x": x}, opset)


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_squeeze_matches_inference(data, opset):
    shape = data.draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=1, max_size=4))
    ones = [axis for axis, size in enumerate(shape) if size == 1]
    axes = data.draw(st.none() | st.lists(st.sampled_from(ones), min_size=1, unique=True) if ones else st.none())
    remaining = [s for a, s in enumerate(shape) if not (s == 1 and (axes is None or a in axes))]
    assume(remaining)  # coremltools' value inference of a full squeeze is wrong for rank > 1
    if axes is not None:
        axes = [axis - len(shape) if data.draw(st.booleans()) else axis for axis in axes]
    x = floats(data, tuple(shape))
    check_inference(lambda x: mb.squeeze(x=x, axes=axes), {"x": x}, opset)


def test_squeeze_keeps_non_unit_axes_and_can_make_a_scalar():
    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    (result,) = run_op(lambda x: mb.squeeze(x=x, axes=[0, 1]), {"x": x})
    assert result.shape == (3, 1)  # axis 1 has size 3: ignored, as in PyTorch
    (result,) = run_op(lambda x: mb.squeeze(x=x), {"x": np.full((1, 1), 7.0, np.float32)})
    assert result.shape == () and result == 7.0


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_transpose_matches_inference(data, opset):
    shape = data.draw(shapes(1, 4, 4))
    perm = data.draw(st.permutations(range(len(shape))))
    perm = [axis - len(shape) if data.draw(st.booleans()) else axis for axis in perm]
    x = floats(data, shape)
    check_inference(lambda x: mb.transpose(x=x, perm=perm), {"x": x}, opset)


@FAST
@given(st.data())
def test_flatten2d_matches_inference(data):
    shape = data.draw(shapes(1, 4, 4))
    axis = data.draw(st.integers(-len(shape), len(shape)))
    x = floats(data, shape)
    build = lambda x: mb.flatten2d(x=x, axis=axis)  # noqa: E731
    if 0 < (axis + len(shape) if axis < 0 else axis) < len(shape):
        check_inference(build, {"x": x})
    else:  # coremltools' value inference fails on an empty product (np.prod([]) is a float)
        (result,) = run_op(build, {"x": x})
        np.testing.assert_array_equal(result, x.reshape(math.prod(shape[:axis]), -1))


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_reverse_matches_inference(data, opset):
    shape = data.draw(shapes(1, 4, 4))
    axes = data.draw(st.none() | st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape)))
    if axes is not None:
        axes = sorted({axis % len(shape) for axis in axes})
    x = floats(data, shape)
    check_inference(lambda x: mb.reverse(x=x, axes=axes), {"x": x}, opset)


def reverse_sequence_reference(x, lengths, seq_axis, batch_axis):
    result = x.copy()
    for b, length in enumerate(lengths):
        source = np.take(x, b, axis=batch_axis)
        target_axis = seq_axis - (seq_axis > batch_axis)
        reversed_part = np.flip(np.take(source, np.arange(length), axis=target_axis), axis=target_axis)
        index = [slice(None)] * x.ndim
        index[batch_axis] = b
        index[seq_axis] = slice(0, length)
        result[tuple(index)] = reversed_part
    return result


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_reverse_sequence_against_numpy(data, opset):
    shape = data.draw(shapes(2, 4, 4))
    seq_axis, batch_axis = data.draw(st.permutations(range(len(shape))))[:2]
    lengths = np.array(
        [data.draw(st.integers(0, shape[seq_axis])) for _ in range(shape[batch_axis])], dtype=np.int32
    )
    x = floats(data, shape)
    build = lambda x, lengths: mb.reverse_sequence(  # noqa: E731
        x=x, lengths=lengths, seq_axis=seq_axis - len(shape) * data.draw(st.booleans()), batch_axis=batch_axis
    )
    (result,) = run_op(build, {"x": x, "lengths": lengths}, opset=opset)
    np.testing.assert_array_equal(result, reverse_sequence_reference(x, lengths, seq_axis, batch_axis))


def test_reverse_sequence_coremltools_example():
    x = np.array(
        [[1, 2, 3, 4, 5, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]],
        dtype=np.float32,
    )
    lengths = np.array([7, 2, 3, 5], np.int32)
    build = lambda x: mb.reverse_sequence(x=x, lengths=lengths, seq_axis=1, batch_axis=0)  # noqa: E731
    (result,) = run_op(build, {"x": x})
    expected = [[0, 0, 5, 4, 3, 2, 1, 0], [2, 1, 0, 0, 0, 0, 0, 0], [3, 2, 1, 4, 0, 0, 0, 0], [5, 4, 3, 2, 1, 6, 7, 8]]
    np.testing.assert_array_equal(result, np.array(expected, np.float32))


@FAST
@given(st.data())
def test_shape_matches_inference(data):
    shape = data.draw(shapes(1, 4, 5))
    (result,) = check_inference(lambda x: mb.shape(x=x), {"x": floats(data, shape)})
    assert list(result) == list(shape)


# -- slicing --------------------------------------------------------------------------------------


@st.composite
def slice_attributes(draw, shape):
    rank = len(shape)
    return dict(
        begin=[draw(st.integers(-size - 1, size + 1)) for size in shape],
        end=[draw(st.integers(-size - 1, size + 1)) for size in shape],
        stride=[draw(st.sampled_from([-3, -2, -1, 1, 1, 2, 3])) for _ in range(rank)],
        begin_mask=[draw(st.booleans()) for _ in range(rank)],
        end_mask=[draw(st.booleans()) for _ in range(rank)],
        squeeze_mask=[draw(st.integers(0, 4)) == 0 for _ in range(rank)],
    )


def numpy_slices(shape, attributes):
    slices = []
    for axis, size in enumerate(shape):
        begin = None if attributes["begin_mask"][axis] else attributes["begin"][axis]
        if attributes["squeeze_mask"][axis]:
            slices.append(slice(begin, None, 2**31 - 1))
        else:
            end = None if attributes["end_mask"][axis] else attributes["end"][axis]
            slices.append(slice(begin, end, attributes["stride"][axis]))
    return slices


def slice_is_well_typed(shape, attributes) -> bool:
    """coremltools declares size 1 for a slice of a size-1 axis even when numpy's is empty, and a
    squeezed axis must select something; draws that hit either are skipped."""
    for size, axis_slice in zip(shape, numpy_slices(shape, attributes)):
        if len(range(size)[axis_slice]) == 0 and (size == 1 or axis_slice.step == 2**31 - 1):
            return False
    return True


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_slice_by_index_matches_inference(data, opset):
    shape = data.draw(shapes(1, 3, 5))
    attributes = data.draw(slice_attributes(shape))
    assume(slice_is_well_typed(shape, attributes))
    assume(not all(attributes["squeeze_mask"]))  # a full squeeze's inference only handles int32/fp32
    x = floats(data, shape)
    build = lambda x: mb.slice_by_index(x=x, **attributes)  # noqa: E731
    assume(builds(build, {"x": x}, opset))
    check_inference(build, {"x": x}, opset)


@FAST
@given(st.data())
def test_slice_by_index_with_runtime_bounds(data):
    shape = data.draw(shapes(1, 3, 5))
    attributes = data.draw(slice_attributes(shape))
    assume(slice_is_well_typed(shape, attributes))
    assume(not all(attributes["squeeze_mask"]))
    x = floats(data, shape)
    begin, end = (np.array(attributes.pop(name), np.int32) for name in ("begin", "end"))
    expected = x[tuple(numpy_slices(shape, dict(attributes, begin=begin, end=end)))]
    squeezed = tuple(axis for axis, squeeze in enumerate(attributes["squeeze_mask"]) if squeeze)
    build = lambda x, begin, end: mb.slice_by_index(x=x, begin=begin, end=end, **attributes)  # noqa: E731
    (result,) = run_op(build, {"x": x, "begin": begin, "end": end})
    np.testing.assert_array_equal(result, np.squeeze(expected, axis=squeezed))


def test_slice_by_index_full_squeeze_gives_a_scalar():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    build = lambda x: mb.slice_by_index(x=x, begin=[-1, 2], end=[0, 0], squeeze_mask=[True, True])  # noqa: E731
    (result,) = run_op(build, {"x": x})
    assert result.shape == () and result == 10.0


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_slice_by_size_matches_inference(data, opset):
    shape = data.draw(shapes(1, 4, 5))
    begin = [data.draw(st.integers(-size, size - 1)) for size in shape]
    # coremltools declares dim - begin for size -1 even when begin is negative, so -1 only with begin >= 0.
    size = [
        data.draw(st.sampled_from(([-1] if b >= 0 else []) + [1 + data.draw(st.integers(0, dim - 1 - b % dim))]))
        for b, dim in zip(begin, shape)
    ]
    x = floats(data, shape)
    check_inference(lambda x: mb.slice_by_size(x=x, begin=begin, size=size), {"x": x}, opset)


@FAST
@given(st.data())
def test_slice_update_matches_inference(data):
    shape = data.draw(shapes(1, 3, 5))
    attributes = data.draw(slice_attributes(shape))
    assume(slice_is_well_typed(shape, attributes))
    sliced = np.zeros(shape)[tuple(numpy_slices(shape, attributes))]
    update_shape = tuple(s for s, squeeze in zip(sliced.shape, attributes["squeeze_mask"]) if not squeeze)
    assume(len(update_shape) > 0)  # rank-0 updates are not supported
    x = floats(data, shape)
    update = floats(data, update_shape, 10.0, 20.0)
    build = lambda x, update: mb.slice_update(x=x, update=update, **attributes)  # noqa: E731
    assume(builds(build, {"x": x, "update": update}, IOS18))
    result = check_inference(build, {"x": x, "update": update}, IOS18)
    assert (result[0] >= 10.0).sum() == update.size  # every update lands once, nothing else changes


def sliding_windows_reference(x, axis, size, stride):
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # window axis last
    windows = np.take(windows, np.arange(0, windows.shape[axis], stride), axis=axis)
    return np.moveaxis(windows, -1, axis + 1)


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_sliding_windows_against_numpy(data, opset):
    shape = data.draw(shapes(1, 3, 6))
    axis = data.draw(st.integers(0, len(shape) - 1))
    size = data.draw(st.integers(1, shape[axis]))
    stride = data.draw(st.integers(1, 3))
    x = floats(data, shape)
    signed_axis = axis - len(shape) if data.draw(st.booleans()) else axis
    build = lambda x: mb.sliding_windows(x=x, axis=signed_axis, size=size, stride=stride)  # noqa: E731
    (result,) = run_op(build, {"x": x}, opset=opset)
    np.testing.assert_array_equal(result, sliding_windows_reference(x, axis, size, stride))


def test_sliding_windows_example():
    x = np.arange(5, dtype=np.float32)
    (result,) = run_op(lambda x: mb.sliding_windows(x=x, axis=0, size=3, stride=2), {"x": x})
    np.testing.assert_array_equal(result, [[0, 1, 2], [2, 3, 4]])


# -- joining and splitting ------------------------------------------------------------------------


@FAST
@given(st.data())
def test_concat_matches_inference(data):
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    count = data.draw(st.integers(1, 3))
    values = []
    for _ in range(count):
        value_shape = list(shape)
        value_shape[axis] = data.draw(st.integers(1, 3))
        values.append(floats(data, tuple(value_shape)))
    inputs = {f"v{i}": value for i, value in enumerate(values)}
    check_inference(lambda **v: mb.concat(values=[v[f"v{i}"] for i in range(count)], axis=axis), inputs)


@FAST
@given(st.data())
def test_concat_interleave_against_numpy(data):
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(0, len(shape) - 1))
    values = [floats(data, shape) for _ in range(data.draw(st.integers(1, 3)))]
    inputs = {f"v{i}": value for i, value in enumerate(values)}

    def build(**v):
        return mb.concat(values=[v[f"v{i}"] for i in range(len(values))], axis=axis, interleave=True)

    (result,) = run_op(build, inputs)
    expected = np.empty(result.shape, np.float32)
    for i, value in enumerate(values):
        index = [slice(None)] * len(shape)
        index[axis] = slice(i, None, len(values))
        expected[tuple(index)] = value
    np.testing.assert_array_equal(result, expected)


def test_concat_interleave_docstring_example():
    a = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    b = np.array([[7, 8], [9, 10], [11, 12]], np.float32)
    (result,) = run_op(lambda a, b: mb.concat(values=[a, b], axis=0, interleave=True), {"a": a, "b": b})
    np.testing.assert_array_equal(result, [[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]])


@FAST
@given(st.data())
def test_stack_matches_inference(data):
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    values = {f"v{i}": floats(data, shape) for i in range(data.draw(st.integers(1, 3)))}
    check_inference(lambda **v: mb.stack(values=[v[name] for name in sorted(v)], axis=axis), values)


@FAST
@given(st.data())
def test_split_matches_inference(data):
    shape = data.draw(shapes(1, 3, 6))
    axis = data.draw(st.integers(0, len(shape) - 1))
    x = floats(data, shape)
    if data.draw(st.booleans()):
        num_splits = data.draw(st.sampled_from([n for n in range(1, shape[axis] + 1) if shape[axis] % n == 0]))
        build = lambda x: mb.split(x=x, num_splits=num_splits, axis=axis - len(shape))  # noqa: E731
    else:
        cuts = sorted(data.draw(st.sets(st.integers(1, shape[axis] - 1), max_size=3)) if shape[axis] > 1 else [])
        sizes = np.diff([0] + cuts + [shape[axis]]).astype(np.int32)
        build = lambda x: mb.split(x=x, split_sizes=sizes, axis=axis)  # noqa: E731
    check_inference(build, {"x": x})


@FAST
@given(st.data())
def test_tile_matches_inference(data):
    shape = data.draw(shapes(1, 3, 4))
    reps = [data.draw(st.integers(1, 3)) for _ in shape]
    check_inference(lambda x: mb.tile(x=x, reps=reps), {"x": floats(data, shape)})


# -- padding --------------------------------------------------------------------------------------


@FAST
@given(st.data(), st.sampled_from(["constant", "reflect", "replicate"]), st.booleans())
def test_pad_matches_inference(data, mode, runtime_pad):
    shape = data.draw(shapes(1, 4, 4))
    padded_axes = len(shape) if runtime_pad else data.draw(st.integers(1, len(shape)))
    amounts = []
    for size in shape[len(shape) - padded_axes :]:
        limit = {"constant": 3, "reflect": size - 1, "replicate": size}[mode]
        amounts += [data.draw(st.integers(0, limit)), data.draw(st.integers(0, limit))]
    amounts = np.array(amounts, np.int32)
    constant = data.draw(st.sampled_from([0.0, -1.5, 7.0]))
    x = floats(data, shape)
    expected = infer_op(lambda x: mb.pad(x=x, pad=amounts, mode=mode, constant_val=constant), {"x": x})
    if runtime_pad:
        build = lambda x, p: mb.pad(x=x, pad=p, mode=mode, constant_val=constant)  # noqa: E731
        actual = run_op(build, {"x": x, "p": amounts})
    else:
        actual = run_op(lambda x: mb.pad(x=x, pad=amounts, mode=mode, constant_val=constant), {"x": x})
    assert_outputs_equal(actual, expected)


def test_pad_modes_example():
    x = np.array([[1, 2, 3]], np.float32)
    for mode, expected in [
        ("constant", [[9, 9, 1, 2, 3, 9]]),
        ("reflect", [[3, 2, 1, 2, 3, 2]]),
        ("replicate", [[1, 1, 1, 2, 3, 3]]),
    ]:
        (result,) = run_op(lambda x: mb.pad(x=x, pad=[2, 1], mode=mode, constant_val=9.0), {"x": x})
        np.testing.assert_array_equal(result, np.array(expected, np.float32))


# -- depth, space and batch -----------------------------------------------------------------------


def depth_to_space_reference(x, block):
    n, channels, height, width = x.shape
    out_channels = channels // block**2
    out = np.empty((n, out_channels, height * block, width * block), x.dtype)
    for c, h, w, i, j in np.ndindex(out_channels, height, width, block, block):
        out[:, c, h * block + i, w * block + j] = x[:, (i * block + j) * out_channels + c, h, w]
    return out


def pixel_shuffle_reference(x, factor):
    n, channels, height, width = x.shape
    out_channels = channels // factor**2
    out = np.empty((n, out_channels, height * factor, width * factor), x.dtype)
    for c, h, w, i, j in np.ndindex(out_channels, height, width, factor, factor):
        out[:, c, h * factor + i, w * factor + j] = x[:, c * factor**2 + i * factor + j, h, w]
    return out


@FAST
@given(st.data())
def test_depth_to_space_and_back(data):
    block = data.draw(st.integers(2, 3))
    shape = (data.draw(st.integers(1, 2)), block**2 * data.draw(st.integers(1, 2)), *data.draw(shapes(2, 2, 3)))
    x = floats(data, shape)
    (spread,) = run_op(lambda x: mb.depth_to_space(x=x, block_size=block), {"x": x})
    np.testing.assert_array_equal(spread, depth_to_space_reference(x, block))
    (back,) = run_op(lambda y: mb.space_to_depth(x=y, block_size=block), {"y": spread})
    np.testing.assert_array_equal(back, x)


def test_depth_to_space_is_not_pixel_shuffle():
    x = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
    (result,) = run_op(lambda x: mb.depth_to_space(x=x, block_size=2), {"x": x})
    np.testing.assert_array_equal(result[0, 0], [[0, 2], [4, 6]])  # TF order: channel c of each block offset
    (result,) = run_op(lambda x: mb.pixel_shuffle(x=x, upscale_factor=2), {"x": x})
    np.testing.assert_array_equal(result[0, 0], [[0, 1], [2, 3]])  # PyTorch order: consecutive channels


@FAST
@given(st.data())
def test_pixel_shuffle_and_unshuffle(data):
    factor = data.draw(st.integers(1, 3))
    shape = (data.draw(st.integers(1, 2)), factor**2 * data.draw(st.integers(1, 2)), *data.draw(shapes(2, 2, 3)))
    x = floats(data, shape)
    (spread,) = run_op(lambda x: mb.pixel_shuffle(x=x, upscale_factor=factor), {"x": x})
    np.testing.assert_array_equal(spread, pixel_shuffle_reference(x, factor))
    (back,) = run_op(lambda y: mb.pixel_unshuffle(x=y, downscale_factor=np.uint32(factor)), {"y": spread}, opset=IOS16)
    np.testing.assert_array_equal(back, x)


def space_to_batch_reference(x, block_shape, paddings):
    block_h, block_w = block_shape
    x = np.pad(x, [(0, 0), (0, 0), tuple(paddings[0]), tuple(paddings[1])])
    n, channels, height, width = x.shape
    out = np.empty((n * block_h * block_w, channels, height // block_h, width // block_w), x.dtype)
    for i, j, b in np.ndindex(block_h, block_w, n):
        out[(i * block_w + j) * n + b] = x[b, :, i::block_h, j::block_w]
    return out


@FAST
@given(st.data())
def test_space_to_batch_and_back(data):
    block_shape = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    paddings, spatial = [], []
    for block in block_shape:
        before, after = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))
        size = block * data.draw(st.integers(1, 3)) - before - after
        assume(size >= 1)
        paddings.append([before, after])
        spatial.append(size)
    x = floats(data, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), *spatial))
    (batched,) = run_op(lambda x: mb.space_to_batch(x=x, block_shape=block_shape, paddings=paddings), {"x": x})
    np.testing.assert_array_equal(batched, space_to_batch_reference(x, block_shape, paddings))
    (back,) = run_op(lambda y: mb.batch_to_space(x=y, block_shape=block_shape, crops=paddings), {"y": batched})
    np.testing.assert_array_equal(back, x)


def test_space_to_batch_coremltools_example():
    x = np.array([[[[1, 2, 3, 4], [5, 6, 7, 8]]], [[[9, 10, 11, 12], [13, 14, 15, 16]]]], np.float32)
    (result,) = run_op(lambda x: mb.space_to_batch(x=x, block_shape=[2, 2], paddings=[[0, 0], [2, 0]]), {"x": x})
    expected = [[0, 1, 3], [0, 9, 11], [0, 2, 4], [0, 10, 12], [0, 5, 7], [0, 13, 15], [0, 6, 8], [0, 14, 16]]
    np.testing.assert_array_equal(result.reshape(8, 3), np.array(expected, np.float32))


# -- tensor operations ----------------------------------------------------------------------------


@FAST
@given(st.data(), st.sampled_from([np.float32, np.int32]))
def test_band_part_matches_inference(data, dtype):
    shape = data.draw(shapes(2, 4, 5))
    lower, upper = data.draw(st.integers(-1, 3)), data.draw(st.integers(-1, 3))
    x = floats(data, shape).astype(dtype) if dtype == np.float32 else ints(data, shape)
    check_inference(lambda x: mb.band_part(x=x, lower=lower, upper=upper), {"x": x})


@FAST
@given(st.data(), st.booleans(), st.sampled_from([np.float32, np.int32]))
def test_cumsum_matches_inference(data, reverse, dtype):
    shape = data.draw(shapes(1, 4, 5))
    axis = data.draw(st.integers(-1, len(shape) - 1))
    x = floats(data, shape) if dtype == np.float32 else ints(data, shape)
    check_inference(lambda x: mb.cumsum(x=x, axis=axis, reverse=reverse), {"x": x}, exact=dtype == np.int32)


@FAST
@given(st.data(), st.booleans())
def test_exclusive_cumsum_against_numpy(data, reverse):
    # coremltools' value inference of exclusive cumsum raises (np.zeros(shape, array)).
    shape = data.draw(shapes(1, 3, 5))
    axis = data.draw(st.integers(0, len(shape) - 1))
    x = ints(data, shape)
    build = lambda x: mb.cumsum(x=x, axis=axis, exclusive=True, reverse=reverse)  # noqa: E731
    (result,) = run_op(build, {"x": x})
    ordered = np.flip(x, axis) if reverse else x
    exclusive = np.cumsum(ordered, axis=axis) - ordered
    np.testing.assert_array_equal(result, np.flip(exclusive, axis) if reverse else exclusive)


def test_cumsum_examples():
    x = np.array([1, 2, 3], np.float32)
    for exclusive, reverse, expected in [
        (False, False, [1, 3, 6]),
        (True, False, [0, 1, 3]),
        (False, True, [6, 5, 3]),
        (True, True, [5, 3, 0]),
    ]:
        (result,) = run_op(lambda x: mb.cumsum(x=x, exclusive=exclusive, reverse=reverse), {"x": x})
        np.testing.assert_array_equal(result, expected)


@FAST
@given(st.data(), st.sampled_from([2.5, -1, True]), st.booleans())
def test_fill_matches_inference(data, value, runtime_shape):
    shape = np.array(data.draw(shapes(1, 3, 4)), np.int32)
    expected = infer_op(lambda: mb.fill(shape=shape, value=value), {})
    if runtime_shape:
        actual = run_op(lambda s: mb.fill(shape=s, value=value), {"s": shape})
    else:
        actual = run_op(lambda x: mb.fill(shape=shape, value=value), {"x": np.zeros(1, np.float32)})
    assert_outputs_equal(actual, expected)


@FAST
@given(st.data(), st.sampled_from([2.5, -1, True, 0.0]))
def test_fill_like_matches_inference(data, value):
    shape = data.draw(shapes(1, 3, 4))
    check_inference(lambda ref: mb.fill_like(ref_tensor=ref, value=value), {"ref": floats(data, shape)}, IOS16)


@FAST
@given(st.data(), st.sampled_from([np.float32, np.int32, np.bool_]))
def test_non_zero_matches_inference(data, dtype):
    shape = data.draw(shapes(1, 3, 4))
    x = ints(data, shape, -1, 2).astype(dtype)
    check_inference(lambda x: mb.non_zero(x=x), {"x": x})


@FAST
@given(st.data())
def test_one_hot_against_numpy(data):
    shape = data.draw(shapes(1, 3, 4))
    size = data.draw(st.integers(1, 5))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    indices = ints(data, shape, -1, size + 1)  # includes out-of-range indices: all off
    on_value, off_value = data.draw(st.sampled_from([(1, 0), (2.5, -0.5), (True, False)]))
    def build(i):
        return mb.one_hot(indices=i, one_hot_vector_size=size, axis=axis, on_value=on_value, off_value=off_value)

    (result,) = run_op(build, {"i": indices})
    hot = indices[..., None] == np.arange(size)
    expected = np.moveaxis(np.where(hot, on_value, off_value), -1, axis)
    np.testing.assert_array_equal(result, expected)


def test_one_hot_coremltools_example():
    indices = np.array([1, 0], np.int32)
    (result,) = run_op(lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, axis=0), {"i": indices})
    np.testing.assert_array_equal(result, [[0, 1], [1, 0], [0, 0], [0, 0]])


@FAST
@given(st.integers(-6, 6), st.integers(-6, 6), st.sampled_from([-3, -2, -1, 1, 2, 3]), st.booleans())
def test_range_1d_matches_inference(start, end, step, as_float):
    assume((end - start) * step > 0)  # an empty range declares a negative length
    if as_float:
        start, end, step = start / 2 + 0.25, end / 2, step * 0.7
    else:
        start, end, step = np.int32(start), np.int32(end), np.int32(step)
    build = lambda x: mb.range_1d(start=start, end=end, step=step)  # noqa: E731
    check_inference(build, {"x": np.zeros(1, np.float32)}, exact=not as_float)


@FAST
@given(st.data(), st.booleans(), st.sampled_from([np.float32, np.int32]))
def test_argsort_matches_inference(data, ascending, dtype):
    shape = data.draw(shapes(1, 3, 5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = distinct_values(data, shape, dtype)
    check_inference(lambda x: mb.argsort(x=x, axis=axis, ascending=ascending), {"x": x})


def test_argsort_keeps_ties_in_input_order():
    x = np.array([1, 3, 1, 3, 2], np.float32)
    (result,) = run_op(lambda x: mb.argsort(x=x), {"x": x})
    np.testing.assert_array_equal(result, [1, 3, 4, 0, 2])
    (result,) = run_op(lambda x: mb.argsort(x=x, ascending=True), {"x": x})
    np.testing.assert_array_equal(result, [0, 2, 4, 1, 3])


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS16, IOS17]), st.booleans())
def test_topk_matches_inference(data, opset, ascending):
    shape = data.draw(shapes(1, 3, 5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(1, shape[axis]))
    x = distinct_values(data, shape)
    extra = {}
    if opset >= IOS16:
        extra["return_indices"] = data.draw(st.booleans())
    if opset >= IOS17 and extra["return_indices"]:
        extra["output_indices_dtype"] = data.draw(st.sampled_from(["int32", "uint16"]))
    results = check_inference(lambda x: mb.topk(x=x, k=k, axis=axis, ascending=ascending, **extra), {"x": x}, opset)
    assert len(results) == (1 if extra.get("return_indices") is False else 2)


def test_topk_all_elements_with_k_minus_one():
    # iOS17's k=-1 takes every element; coremltools declares the axis as -1, so call the kernel directly.
    x = np.array([[2, 9, 4], [7, 1, 8]], np.float32)
    program = op_program(lambda x: mb.topk(x=x, k=-1, axis=1), {"x": x}, IOS17)
    op = program.functions["main"].find_ops(op_type="topk")[0]
    inputs = {"x": torch.from_numpy(x), "k": torch.tensor(-1), "axis": torch.tensor(1)}
    inputs["ascending"] = torch.tensor(False)
    values, indices = KERNELS["topk"](OpArgs(op, inputs))
    np.testing.assert_array_equal(values, [[9, 4, 2], [8, 7, 1]])
    np.testing.assert_array_equal(indices, [[1, 2, 0], [2, 0, 1]])


# -- gather ---------------------------------------------------------------------------------------


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS16, IOS17]), st.booleans())
def test_gather_matches_inference(data, opset, runtime_indices):
    shape = data.draw(shapes(1, 4, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    batch_dims = 0 if opset == IOS15 else data.draw(st.integers(0, axis % len(shape)))
    if batch_dims:  # coremltools' value inference mishandles a negative axis with batch_dims
        axis %= len(shape)
    index_shape = tuple(shape[:batch_dims]) + tuple(data.draw(shapes(0, 2, 3)))
    size = shape[axis]
    low = 0 if opset >= IOS17 else -size  # iOS17 calls negative indices out of bounds
    indices = ints(data, index_shape, low, size)
    x = floats(data, shape)
    extra = {} if opset == IOS15 else {"batch_dims": batch_dims}
    expected = infer_op(lambda x, i: mb.gather(x=x, indices=i, axis=axis, **extra), {"x": x, "i": indices}, opset)
    if runtime_indices and index_shape:
        actual = run_op(lambda x, i: mb.gather(x=x, indices=i, axis=axis, **extra), {"x": x, "i": indices}, opset=opset)
    else:
        actual = run_op(lambda x: mb.gather(x=x, indices=indices, axis=axis, **extra), {"x": x}, opset=opset)
    assert_outputs_equal(actual, expected)


def test_gather_index_checks():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    build = lambda x, i: mb.gather(x=x, indices=i, axis=1, validate_indices=True)  # noqa: E731
    with pytest.raises(ExecutionError, match="negative"):
        run_op(build, {"x": x, "i": np.array([-1], np.int32)}, opset=IOS17)
    plain = lambda x, i: mb.gather(x=x, indices=i, axis=1)  # noqa: E731
    (result,) = run_op(plain, {"x": x, "i": np.array([-1], np.int32)}, opset=IOS17)
    np.testing.assert_array_equal(result, [[2], [5]])  # without validation, wrapped like numpy
    with pytest.raises(ExecutionError, match="out of bounds"):
        run_op(lambda x, i: mb.gather(x=x, indices=i, axis=1), {"x": x, "i": np.array([3], np.int32)})


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS16, IOS17]))
def test_gather_along_axis_matches_inference(data, opset):
    shape = data.draw(shapes(1, 4, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.integers(1, 4))
    low = 0 if opset >= IOS17 else -shape[axis]
    indices = ints(data, tuple(index_shape), low, shape[axis])
    x = floats(data, shape)
    check_inference(lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=axis), {"x": x, "i": indices}, opset)


def gather_nd_reference(x, indices, batch_dims):
    out = np.empty(indices.shape[:-1] + x.shape[batch_dims + indices.shape[-1] :], x.dtype)
    for position in np.ndindex(*indices.shape[:-1]):
        out[position] = x[position[:batch_dims] + tuple(indices[position])]
    return out


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS16, IOS17]))
def test_gather_nd_against_numpy(data, opset):
    shape = data.draw(shapes(1, 4, 4))
    batch_dims = 0 if opset == IOS15 else data.draw(st.integers(0, len(shape) - 1))
    depth = data.draw(st.integers(1, len(shape) - batch_dims))
    index_shape = tuple(shape[:batch_dims]) + tuple(data.draw(shapes(0, 2, 3)))
    rng = np.random.default_rng(data.draw(SEEDS))
    indexed = shape[batch_dims : batch_dims + depth]
    indices = np.stack([rng.integers(0, size, index_shape) for size in indexed], axis=-1).astype(np.int32)
    x = floats(data, shape)
    extra = {} if opset == IOS15 else {"batch_dims": batch_dims}
    (result,) = run_op(lambda x, i: mb.gather_nd(x=x, indices=i, **extra), {"x": x, "i": indices}, opset=opset)
    np.testing.assert_array_equal(result, gather_nd_reference(x, indices, batch_dims))


def test_gather_nd_example():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (result,) = run_op(lambda x: mb.gather_nd(x=x, indices=np.array([[1, 2], [0, 0]], np.int32)), {"x": x})
    np.testing.assert_array_equal(result, [5, 0])
    build = lambda x: mb.gather_nd(x=x, indices=np.array([[1], [0]], np.int32), batch_dims=1)  # noqa: E731
    (result,) = run_op(build, {"x": x}, opset=IOS16)
    np.testing.assert_array_equal(result, [1, 3])


# -- scatter --------------------------------------------------------------------------------------

MODES = ["update", "add", "sub", "mul", "div", "max", "min"]


def combine(mode, current, update):
    return {
        "update": lambda: update,
        "add": lambda: current + update,
        "sub": lambda: current - update,
        "mul": lambda: current * update,
        "div": lambda: current / update,
        "max": lambda: np.maximum(current, update),
        "min": lambda: np.minimum(current, update),
    }[mode]()


def updates_for(data, shape, mode):
    """Update values away from zero (div) and of both signs."""
    rng = np.random.default_rng(data.draw(SEEDS))
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(np.float32)


@FAST
@given(st.data(), st.sampled_from(MODES), st.sampled_from([IOS15, IOS17]))
def test_scatter_against_numpy(data, mode, opset):
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[axis]
    rng = np.random.default_rng(data.draw(SEEDS))
    count = data.draw(st.integers(1, size if mode == "update" else 5))
    indices = (rng.permutation(size)[:count] if mode == "update" else rng.integers(0, size, count)).astype(np.int32)
    update_shape = list(shape)
    update_shape[axis] = count
    x = floats(data, shape)
    updates = updates_for(data, tuple(update_shape), mode)
    build = lambda x, i, u: mb.scatter(data=x, indices=i, updates=u, axis=axis, mode=mode)  # noqa: E731
    (result,) = run_op(build, {"x": x, "i": indices, "u": updates}, opset=opset)
    expected = x.copy()
    moved_expected, moved_updates = np.moveaxis(expected, axis, 0), np.moveaxis(updates, axis, 0)
    for i, index in enumerate(indices):
        moved_expected[index] = combine(mode, moved_expected[index], moved_updates[i])
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_scatter_docstring_example():
    data = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    updates = np.array([[5, 6, 7], [8, 9, 10]], np.float32)
    def build(d, u):
        return mb.scatter(data=d, indices=np.array([1, 0], np.int32), updates=u, axis=0, mode="add")

    (result,) = run_op(build, {"d": data, "u": updates})
    np.testing.assert_array_equal(result, [[9, 11, 13], [9, 11, 13]])


@FAST
@given(st.data(), st.sampled_from([IOS15, IOS17]))
def test_scatter_along_axis_update_matches_inference(data, opset):
    # coremltools' value inference ignores `mode` (it always writes), so only `update` is compared.
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    count = data.draw(st.integers(1, shape[axis]))
    rng = np.random.default_rng(data.draw(SEEDS))
    order = np.argsort(rng.random(shape), axis=axis)  # distinct targets along each line
    indices = np.take(order, np.arange(count), axis=axis).astype(np.int32)
    x = floats(data, shape)
    updates = floats(data, indices.shape, 10.0, 20.0)
    build = lambda x, i, u: mb.scatter_along_axis(data=x, indices=i, updates=u, axis=axis, mode="update")  # noqa: E731
    check_inference(build, {"x": x, "i": indices, "u": updates}, opset)


@FAST
@given(st.data(), st.sampled_from(MODES))
def test_scatter_along_axis_against_numpy(data, mode):
    shape = data.draw(shapes(1, 3, 4))
    axis = data.draw(st.integers(0, len(shape) - 1))
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.integers(1, shape[axis] if mode == "update" else 4))
    rng = np.random.default_rng(data.draw(SEEDS))
    if mode == "update":
        order = np.argsort(rng.random(shape), axis=axis)
        indices = np.take(order, np.arange(index_shape[axis]), axis=axis).astype(np.int32)
    else:
        indices = rng.integers(0, shape[axis], index_shape).astype(np.int32)
    x = floats(data, shape)
    updates = updates_for(data, tuple(index_shape), mode)
    build = lambda x, i, u: mb.scatter_along_axis(data=x, indices=i, updates=u, axis=axis, mode=mode)  # noqa: E731
    (result,) = run_op(build, {"x": x, "i": indices, "u": updates})
    expected = x.copy()
    for position in np.ndindex(*indices.shape):
        target = list(position)
        target[axis] = indices[position]
        expected[tuple(target)] = combine(mode, expected[tuple(target)], updates[position])
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@FAST
@given(st.data(), st.sampled_from(MODES), st.sampled_from([IOS15, IOS17]))
def test_scatter_nd_against_numpy(data, mode, opset):
    shape = data.draw(shapes(1, 3, 4))
    depth = data.draw(st.integers(1, len(shape)))
    rng = np.random.default_rng(data.draw(SEEDS))
    count = data.draw(st.integers(1, 5))
    indices = np.stack([rng.integers(0, size, count) for size in shape[:depth]], axis=-1).astype(np.int32)
    if mode == "update":  # duplicate targets have no defined winner
        indices = np.unique(indices, axis=0)
    updates = updates_for(data, indices.shape[:-1] + tuple(shape[depth:]), mode)
    x = floats(data, shape)
    build = lambda x, i, u: mb.scatter_nd(data=x, indices=i, updates=u, mode=mode)  # noqa: E731
    (result,) = run_op(build, {"x": x, "i": indices, "u": updates}, opset=opset)
    expected = x.copy()
    for n, target in enumerate(indices):
        expected[tuple(target)] = combine(mode, expected[tuple(target)], updates[n])
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_scatter_integer_data_and_bounds():
    data = np.array([10, 20, 30], np.int32)
    build = lambda d, i: mb.scatter(data=d, indices=i, updates=np.array([1, 2], np.int32), mode="add")  # noqa: E731
    (result,) = run_op(build, {"d": data, "i": np.array([2, 2], np.int32)})
    np.testing.assert_array_equal(result, [10, 20, 33])
    with pytest.raises(ExecutionError, match="out of bounds"):
        run_op(build, {"d": data, "i": np.array([3, 0], np.int32)})


# -- non-maximum suppression ----------------------------------------------------------------------


def iou_matrix(boxes):
    """IoU of (center x, center y, width, height) boxes, written from the definition."""
    boxes = boxes.astype(np.float64)
    low = boxes[:, :2] - boxes[:, 2:] / 2
    high = boxes[:, :2] + boxes[:, 2:] / 2
    overlap = np.clip(np.minimum(high[:, None], high[None]) - np.maximum(low[:, None], low[None]), 0, None).prod(-1)
    areas = boxes[:, 2:].prod(-1)
    return overlap / (areas[:, None] + areas[None] - overlap)


def test_nms_coremltools_example():
    boxes = np.array([[[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]], np.float32)
    scores = np.array([[[-3.5], [9.4], [2.3], [0.7]]], np.float32)
    build = lambda b, s: mb.non_maximum_suppression(  # noqa: E731
        boxes=b, scores=s, iou_threshold=0.2, score_threshold=0.4, max_boxes=2, per_class_suppression=True
    )
    out_boxes, out_scores, indices, count = run_op(build, {"b": boxes, "s": scores})
    np.testing.assert_array_equal(out_boxes, [[[1, 1, 1, 1], [2, 2, 2, 2]]])
    np.testing.assert_array_equal(out_scores, np.array([[[9.4], [2.3]]], np.float32))
    np.testing.assert_array_equal(indices, [[1, 2]])
    np.testing.assert_array_equal(count, [2])


def test_nms_suppresses_padds_and_falls_back_to_the_best_box():
    boxes = np.array([[[0, 0, 2, 2], [0.1, 0, 2, 2], [5, 5, 1, 1]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.3]]], np.float32)

    def run(score_threshold):
        build = lambda b, s: mb.non_maximum_suppression(  # noqa: E731
            boxes=b, scores=s, iou_threshold=0.5, score_threshold=score_threshold, max_boxes=3
        )
        return run_op(build, {"b": boxes, "s": scores})

    _, out_scores, indices, count = run(0.1)
    np.testing.assert_array_equal(indices, [[0, 2, -1]])  # box 1 overlaps box 0 by IoU 0.9
    np.testing.assert_array_equal(count, [2])
    np.testing.assert_array_equal(out_scores[0, 2], [0.0])
    _, _, indices, count = run(0.95)  # nothing passes the threshold: the best box alone
    np.testing.assert_array_equal(indices, [[0, -1, -1]])
    np.testing.assert_array_equal(count, [1])


def test_nms_drops_boxes_under_the_score_threshold():
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 1, 1], [9, 9, 1, 1]]], np.float32)  # disjoint
    scores = np.array([[[0.9, 0.1], [0.1, 0.35], [0.25, 0.2]]], np.float32)  # best: 0.9, 0.35, 0.25
    build = lambda b, s: mb.non_maximum_suppression(  # noqa: E731
        boxes=b, scores=s, iou_threshold=0.5, score_threshold=0.3, max_boxes=3
    )
    _, out_scores, indices, count = run_op(build, {"b": boxes, "s": scores})
    np.testing.assert_array_equal(indices, [[0, 1, -1]])
    np.testing.assert_array_equal(out_scores[0, :2], scores[0, :2])  # every class's score comes along
    np.testing.assert_array_equal(count, [2])


def test_nms_keeps_touching_boxes_at_zero_threshold():
    boxes = np.array([[[0, 0, 2, 2], [2, 0, 2, 2], [1, 0, 2, 2]]], np.float32)  # 0 and 1 only touch
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    build = lambda b, s: mb.non_maximum_suppression(  # noqa: E731
        boxes=b, scores=s, iou_threshold=0.0, score_threshold=0.0, max_boxes=3
    )
    _, _, indices, count = run_op(build, {"b": boxes, "s": scores})
    np.testing.assert_array_equal(indices, [[0, 1, -1]])
    np.testing.assert_array_equal(count, [2])


@FAST
@given(st.data(), st.booleans())
def test_nms_selection_invariants(data, per_class):
    n_boxes, n_classes = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(SEEDS))
    centers, sizes = rng.uniform(0, 6, (1, n_boxes, 2)), rng.uniform(0.5, 4, (1, n_boxes, 2))
    boxes = np.concatenate([centers, sizes], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (1, n_boxes, n_classes)).astype(np.float32)
    iou_threshold = data.draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]))
    score_threshold = data.draw(st.sampled_from([-1.0, 0.3, 0.7]))
    max_boxes = data.draw(st.integers(1, n_boxes + 1))
    build = lambda b, s: mb.non_maximum_suppression(  # noqa: E731
        boxes=b, scores=s, iou_threshold=iou_threshold, score_threshold=score_threshold,
        max_boxes=max_boxes, per_class_suppression=per_class,
    )
    out_boxes, out_scores, indices, count = run_op(build, {"b": boxes, "s": scores})
    kept = indices[0, : count[0]]
    assert 1 <= count[0] <= max_boxes and (indices[0, count[0] :] == -1).all()
    np.testing.assert_array_equal(out_boxes[0, : count[0]], boxes[0, kept])
    np.testing.assert_array_equal(out_scores[0, : count[0]], scores[0, kept])
    assert not out_boxes[0, count[0] :].any() and not out_scores[0, count[0] :].any()

    best, best_class = scores[0].max(-1), scores[0].argmax(-1)
    iou = iou_matrix(boxes[0])
    competes = (best_class[:, None] == best_class[None]) if per_class else np.ones((n_boxes, n_boxes), bool)
    candidates = np.flatnonzero(best > score_threshold)
    if len(candidates) == 0:
        np.testing.assert_array_equal(kept, [best.argmax()])
        return
    assert set(kept) <= set(candidates)
    assert (np.diff(best[kept]) <= 0).all()  # best score first
    for a in kept:
        for b in kept:
            assert a == b or not competes[a, b] or iou[a, b] <= iou_threshold + 1e-6
    full = count[0] == max_boxes
    for box in set(candidates) - set(kept):
        if full and best[box] < best[kept].min():
            continue  # cut by max_boxes
        suppressors = [k for k in kept if competes[k, box] and best[k] > best[box]]
        assert any(iou[k, box] > iou_threshold for k in suppressors), f"box {box} dropped without cause"


@FAST
@given(st.data())
def test_nms_ios17_is_ios15_transposed_without_threshold(data):
    n_batch, n_boxes, n_classes = (data.draw(st.integers(1, high)) for high in (2, 6, 2))
    rng = np.random.default_rng(data.draw(SEEDS))
    centers, sizes = rng.uniform(0, 4, (n_batch, n_boxes, 2)), rng.uniform(0.5, 3, (n_batch, n_boxes, 2))
    boxes = np.concatenate([centers, sizes], -1).astype(np.float32)
    scores = rng.uniform(-1, 1, (n_batch, n_boxes, n_classes)).astype(np.float32)
    options = dict(
        iou_threshold=0.3, max_boxes=data.draw(st.integers(1, 7)), per_class_suppression=data.draw(st.booleans())
    )
    old = run_op(
        lambda b, s: mb.non_maximum_suppression(boxes=b, scores=s, score_threshold=-1e30, **options),
        {"b": boxes, "s": scores},
    )
    new = run_op(
        lambda b, s: mb.non_maximum_suppression(boxes=b, scores=s, **options),
        {"b": boxes.transpose(0, 2, 1).copy(), "s": scores.transpose(0, 2, 1).copy()},
        opset=IOS17,
    )
    assert len(new) == 3
    np.testing.assert_array_equal(new[0], old[0].transpose(0, 2, 1))
    np.testing.assert_array_equal(new[1], old[1].transpose(0, 2, 1))
    np.testing.assert_array_equal(new[2], old[2])
