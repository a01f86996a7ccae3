"""Pruning: zero the least important weights and store the rest sparsely.

`prune(weight, config)` returns `SparseParams`: a boolean mask of stored positions and the stored
values in row-major order. The mask leaves out every zero, including zeros the tensor already had,
so the stored form is never larger than it needs to be.

Rules where a shape does not divide evenly (coremltools pads; we state the rule):
- blocks of `block_size` along `dim`: the last block of a dimension that `block_size` does not
  divide is shorter; each block, short or not, counts as one block, and exactly
  floor(target_sparsity * number_of_blocks) blocks are pruned.
- n:m along `dim`: the last run of r < m weights loses floor(n * r / m) of them.
Ties in magnitude are broken by position (lower flat index pruned first), so results are
deterministic. Magnitudes are compared exactly (float16 by their bits, float32 as float32) and block
norms in float64.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from milcompress.config import MagnitudePruneConfig, ThresholdPruneConfig
from milcompress.errors import NotCompressible
from milcompress.ops._arrays import check_weight, select_smallest
from milcompress.ops.packing import packed_size


@dataclass(frozen=True, eq=False)
class SparseParams:
    """A sparse tensor: `mask` (bool, dense shape) marks stored values, `nonzero_data` holds them."""

    mask: np.ndarray
    nonzero_data: np.ndarray

    @property
    def shape(self):
        return self.mask.shape

    @property
    def dtype(self) -> np.dtype:
        return self.nonzero_data.dtype

    @property
    def sparsity(self) -> float:
        """Fraction of positions not stored (all of them zero)."""
        return 1.0 - self.nonzero_data.size / self.mask.size

    @property
    def nbytes(self) -> int:
        """Payload bytes: a one-bit mask plus the stored values."""
        return packed_size(self.mask.size, 1) + self.nonzero_data.nbytes

    def decompress(self) -> np.ndarray:
        dense = np.zeros(self.mask.shape, dtype=self.nonzero_data.dtype)
        dense.reshape(-1)[np.flatnonzero(self.mask)] = self.nonzero_data  # faster than dense[mask] = ...
        return dense


def _nonzero(x: np.ndarray) -> np.ndarray:
    """x != 0 (-0.0 included), on float16's bits, which numpy compares many times faster."""
    if x.dtype == np.float16:
        return (x.view(np.uint16) & np.uint16(0x7FFF)) != 0
    return x != 0


def _keep(x: np.ndarray, mask: np.ndarray) -> SparseParams:
    return SparseParams(mask=mask, nonzero_data=x.reshape(-1)[np.flatnonzero(mask)])


def prune(weight: np.ndarray, config: Union[MagnitudePruneConfig, ThresholdPruneConfig]) -> SparseParams:
    """Prune `weight` as `config` says; NotCompressible if the result would not be sparse enough."""
    weight = np.ascontiguousarray(check_weight(weight))
    keep = _nonzero(weight)
    keep &= ~prune_mask(weight, config)
    return _keep(weight, keep)


def _magnitude(weight: np.ndarray) -> np.ndarray:
    """|w| as numbers ordered like the magnitudes: float16's bits without the sign (uint16, for
    finite values the same order, and cheap), else float32 magnitudes."""
    if weight.dtype == np.float16:
        return np.ascontiguousarray(weight).view(np.uint16) & np.uint16(0x7FFF)
    return np.abs(weight.astype(np.float32))


def prune_mask(weight: np.ndarray, config: Union[MagnitudePruneConfig, ThresholdPruneConfig]) -> np.ndarray:
    """Boolean mask of the positions `config` zeroes in `weight`."""
    if isinstance(config, ThresholdPruneConfig):
        mask = np.abs(weight.astype(np.float32)) <= config.threshold
        sparsity = mask.mean()
        if sparsity < config.minimum_sparsity_percentile:
            raise NotCompressible(
                f"only {sparsity:.1%} of weights have |w| <= {config.threshold:g}; "
                f"minimum_sparsity_percentile is {config.minimum_sparsity_percentile:.1%}"
            )
        return mask
    if not isinstance(config, MagnitudePruneConfig):
        raise TypeError(f"not a prune config: {type(config).__name__}")
    magnitude = _magnitude(weight)
    if config.n_m_ratio is not None:
        return _n_m_mask(magnitude, *config.n_m_ratio, _structured_dim(weight, config.dim))
    if config.block_size is not None:
        return _block_mask(weight, config.target_sparsity, config.block_size, _structured_dim(weight, config.dim))
    return select_smallest(magnitude, _count(config.target_sparsity, magnitude.size))


def _count(fraction: float, size: int) -> int:
    # The small allowance keeps 0.29 * 100 at 29 despite binary rounding.
    return min(size, int(math.floor(fraction * size + 1e-9)))


def _structured_dim(weight: np.ndarray, dim: int) -> int:
    if weight.ndim <= dim:
        raise NotCompressible(f"structured pruning along dim {dim} needs rank > {dim}, got rank {weight.ndim}")
    return dim


def _block_mask(weight: np.ndarray, target: float, block: int, dim: int) -> np.ndarray:
    """Prune whole blocks of `block` consecutive weights along `dim`, smallest L2 norm first."""
    moved = np.moveaxis(weight.astype(np.float64), dim, 0)
    length = moved.shape[0]
    blocks = -(-length // block)
    squares = np.zeros((blocks * block,) + moved.shape[1:])
    squares[:length] = moved * moved
    norms = squares.reshape((blocks, block) + moved.shape[1:]).sum(axis=1)
    pruned_blocks = select_smallest(norms, _count(target, norms.size))
    expanded = np.repeat(pruned_blocks, block, axis=0)[:length]
    return np.moveaxis(expanded, 0, dim)


def _n_m_mask(magnitude: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    """In every run of m consecutive weights along `dim`, prune the n smallest."""
    moved = np.moveaxis(magnitude, dim, -1)
    length = moved.shape[-1]
    full = length - length % m
    mask = np.zeros(moved.shape, dtype=bool)
    if full:
        runs = moved[..., :full].reshape(moved.shape[:-1] + (full // m, m))
        mask[..., :full] = _smallest_in_runs(runs, n).reshape(moved.shape[:-1] + (full,))
    rest = length - full
    if rest:
        mask[..., full:] = _smallest_in_runs(moved[..., full:], (n * rest) // m)
    return np.moveaxis(mask, -1, dim)


def _smallest_in_runs(runs: np.ndarray, n: int) -> np.ndarray:
    """Mask of the n smallest entries along the last axis (ties: the lower position first)."""
    m = runs.shape[-1]
    if m <= 16:
        # Each entry's rank (entries smaller, and equal ones before it), one position of the run
        # at a time: m vectorised passes, free of numpy's sort, which is slow on short rows.
        runs = np.ascontiguousarray(runs)
        rank = np.zeros(runs.shape, dtype=np.uint8)
        for j in range(m):
            column = runs[..., j : j + 1]
            rank += column < runs
            rank[..., j + 1 :] += column == runs[..., j + 1 :]
        return rank < n
    order = np.argsort(runs.astype(np.float32), axis=-1, kind="stable")
    mask = np.zeros(runs.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :n], True, axis=-1)
    return mask
