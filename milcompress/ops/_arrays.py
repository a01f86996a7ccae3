"""Checks and helpers shared by the numeric kernels."""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from milcompress.errors import NotCompressible

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
WORK_ELEMENTS = 1 << 20
"""The most elements of a full-precision temporary that a whole-tensor computation (quantization,
decompression, errors) holds at once: beyond it, it works through the tensor in slices
(`row_slices`, `block_slices`)."""


def check_weight(weight: np.ndarray) -> np.ndarray:
    """The weight as an ndarray of float16 or float32 with only finite values, else NotCompressible."""
    weight = np.asarray(weight)
    if weight.dtype not in FLOAT_DTYPES:
        raise NotCompressible(f"dtype {weight.dtype} is not float16 or float32")
    if weight.size == 0:
        raise NotCompressible("the tensor is empty")
    if not _all_finite(weight):
        bad = int(np.size(weight) - np.count_nonzero(np.isfinite(weight)))
        raise NotCompressible(f"{bad} non-finite values (inf or nan)")
    return weight


def _all_finite(weight: np.ndarray) -> bool:
    """Whether every value is finite. Float16 from its bit patterns (an all-ones exponent is inf
    or nan), slice by slice: 4x faster than np.isfinite, which widens float16 first."""
    if weight.dtype != np.float16:
        return bool(np.isfinite(weight).all())
    raw = np.ascontiguousarray(weight).reshape(-1).view(np.uint16)
    exponent = np.empty(min(raw.size, WORK_ELEMENTS), dtype=np.uint16)
    for first in range(0, raw.size, WORK_ELEMENTS):
        part = raw[first : first + WORK_ELEMENTS]
        np.bitwise_and(part, 0x7C00, out=exponent[: part.size])
        if (exponent[: part.size] == 0x7C00).any():
            return False
    return True


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise NotCompressible(f"{what} {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def largest_divisor_at_most(size: int, limit: int) -> int:
    """The largest divisor of `size` that is <= `limit` (at least 1)."""
    for candidate in range(min(size, limit), 0, -1):
        if size % candidate == 0:
            return candidate
    return 1


def select_smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the `count` smallest entries of `scores`; ties go to the lowest flat index.

    O(n): a partition finds the count-th smallest score, then ties at that score are taken in
    index order. `scores` must not be float16 (numpy partitions it slowly): callers pass float32,
    float64 or integer magnitudes.
    """
    flat = scores.reshape(-1)
    chosen = np.zeros(flat.shape, dtype=bool)
    if count <= 0:
        return chosen.reshape(scores.shape)
    if count >= flat.size:
        chosen[:] = True
        return chosen.reshape(scores.shape)
    kth = np.partition(flat, count - 1)[count - 1]
    chosen = flat < kth
    ties = np.flatnonzero(flat == kth)[: count - int(chosen.sum())]
    chosen[ties] = True
    return chosen.reshape(scores.shape)


def expand_blocks(per_block: np.ndarray, shape) -> np.ndarray:
    """Repeat a per-block array (same rank as `shape`, each dim dividing it) up to `shape`: a
    read-only view where a dim has one block (broadcast), repeated where it has several."""
    for axis, (size, count) in enumerate(zip(shape, per_block.shape)):
        if 1 < count != size:
            per_block = np.repeat(per_block, size // count, axis=axis)
    return np.broadcast_to(per_block, tuple(shape))


def block_view(x: np.ndarray, blocks: Tuple[int, ...]) -> np.ndarray:
    """`x` [d0, d1, ...] viewed as [n0, d0 / n0, n1, d1 / n1, ...] for `blocks` (n0, n1, ...) along
    its axes (each dividing its dim); a per-block array [n0, n1, ...] then broadcasts against it
    once reshaped to [n0, 1, n1, 1, ...] (`per_block_view`), with nothing repeated."""
    split = []
    for dim, count in zip(x.shape, blocks):
        split += [count, dim // count]
    return x.reshape(split)


def per_block_view(per_block: np.ndarray) -> np.ndarray:
    """[n0, n1, ...] -> [n0, 1, n1, 1, ...]: broadcasts against a `block_view`."""
    return per_block.reshape([n for count in per_block.shape for n in (count, 1)])


def row_slices(shape: Tuple[int, ...]) -> Iterator[slice]:
    """Slices of axis 0 of a tensor of `shape` with at most `WORK_ELEMENTS` elements each (or one row)."""
    step = max(1, WORK_ELEMENTS // max(1, int(np.prod(shape[1:], dtype=np.int64))))
    for first in range(0, shape[0], step):
        yield slice(first, first + step)


def block_slices(shape: Tuple[int, ...], blocks: Tuple[int, ...]) -> Iterator[Tuple[slice, slice]]:
    """Index pairs for the first two axes of a `block_view`: whole blocks along axis 0 or, where one
    block-row of the view already holds more than `WORK_ELEMENTS` elements, slices of its rows; each
    piece has at most that many elements (or one row)."""
    limit = WORK_ELEMENTS
    count, rows = blocks[0], shape[0] // blocks[0]
    row_elements = int(np.prod(shape[1:], dtype=np.int64))
    if rows * row_elements <= limit:
        step = max(1, limit // max(1, rows * row_elements))
        for first in range(0, count, step):
            yield slice(first, first + step), slice(None)
        return
    step = max(1, limit // max(1, row_elements))
    for block in range(count):
        for first in range(0, rows, step):
            yield slice(block, block + 1), slice(first, first + step)


def sortable(x: np.ndarray) -> np.ndarray:
    """`x`, as float32 if it is float16 (exactly). NumPy 2.3's default sort of float16 arrays with
    many repeated values returns them out of order on AVX-512 machines (np.unique then reports
    duplicates), so we never sort float16 directly."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def unique_values(x: np.ndarray, axis=None) -> np.ndarray:
    """np.unique that is correct for float16 too (see `sortable`), in `x`'s dtype."""
    return np.unique(sortable(x), axis=axis).astype(x.dtype)
