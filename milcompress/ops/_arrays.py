"""Checks and helpers shared by the numeric kernels."""

from __future__ import annotations

import numpy as np

from milcompress.errors import NotCompressible

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def check_weight(weight: np.ndarray) -> np.ndarray:
    """The weight as an ndarray of float16 or float32 with only finite values, else NotCompressible."""
    weight = np.asarray(weight)
    if weight.dtype not in FLOAT_DTYPES:
        raise NotCompressible(f"dtype {weight.dtype} is not float16 or float32")
    if weight.size == 0:
        raise NotCompressible("the tensor is empty")
    if not np.isfinite(weight).all():
        bad = int(np.size(weight) - np.count_nonzero(np.isfinite(weight)))
        raise NotCompressible(f"{bad} non-finite values (inf or nan)")
    return weight


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


def sortable(x: np.ndarray) -> np.ndarray:
    """`x`, as float32 if it is float16 (exactly). NumPy 2.3's default sort of float16 arrays with
    many repeated values returns them out of order on AVX-512 machines (np.unique then reports
    duplicates), so we never sort float16 directly."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def unique_values(x: np.ndarray, axis=None) -> np.ndarray:
    """np.unique that is correct for float16 too (see `sortable`), in `x`'s dtype."""
    return np.unique(sortable(x), axis=axis).astype(x.dtype)
