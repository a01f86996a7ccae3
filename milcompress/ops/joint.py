"""Joint compression: prune, then palettize or quantize only the weights that survive.

The result keeps the sparsity mask next to an ordinary `LutParams` or `AffineParams` computed on
the pruned tensor. Pruned positions have zero importance for k-means, so the table is fitted to
the surviving weights alone (coremltools clusters the zeros too); their indices or integers exist
in the dense arrays but are never stored.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from milcompress.config import JointConfig, LinearQuantizeConfig
from milcompress.ops.packing import packed_size
from milcompress.ops.palettize import LutParams, palettize
from milcompress.ops.prune import prune
from milcompress.ops.quantize import AffineParams, quantize


@dataclass(frozen=True, eq=False)
class SparseLutParams:
    """Palettized non-zeros: `mask` marks stored positions, `lut` holds tables and (dense) indices."""

    mask: np.ndarray
    lut: LutParams

    @property
    def shape(self):
        return self.mask.shape

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    @property
    def sparsity(self) -> float:
        return 1.0 - np.count_nonzero(self.mask) / self.mask.size

    @property
    def nbytes(self) -> int:
        scale = 0 if self.lut.scale is None else self.lut.scale.nbytes
        stored = np.count_nonzero(self.mask)
        return packed_size(self.mask.size, 1) + packed_size(stored, self.lut.nbits) + self.lut.lut.nbytes + scale

    def decompress(self) -> np.ndarray:
        return np.where(self.mask, self.lut.decompress(), np.zeros((), self.dtype))


@dataclass(frozen=True, eq=False)
class SparseAffineParams:
    """Quantized non-zeros: `mask` marks stored positions, `affine` holds scales and (dense) integers."""

    mask: np.ndarray
    affine: AffineParams

    @property
    def shape(self):
        return self.mask.shape

    @property
    def dtype(self) -> np.dtype:
        return self.affine.dtype

    @property
    def sparsity(self) -> float:
        return 1.0 - np.count_nonzero(self.mask) / self.mask.size

    @property
    def nbytes(self) -> int:
        a = self.affine
        zero = 0 if a.zero_point is None else packed_size(a.zero_point.size, a.nbits)
        stored = np.count_nonzero(self.mask)
        return packed_size(self.mask.size, 1) + packed_size(stored, a.nbits) + a.scale.nbytes + zero

    def decompress(self) -> np.ndarray:
        return np.where(self.mask, self.affine.decompress(), np.zeros((), self.dtype))


def prune_then_compress(
    weight: np.ndarray,
    config: JointConfig,
    *,
    output_axis: int = 0,
    input_axis: int = 1,
    importance: Optional[np.ndarray] = None,
):
    """Prune `weight` with `config.prune`, then compress the survivors with `config.then`."""
    sparse = prune(weight, config.prune)  # checks the weight
    keep = sparse.mask
    if isinstance(config.then, LinearQuantizeConfig):
        return SparseAffineParams(keep, quantize(sparse.decompress(), config.then, output_axis=output_axis, input_axis=input_axis))
    then = config.then
    if importance is None and then.granularity == "per_tensor" and not then.enable_per_channel_scale and keep.any():
        # One table for the survivors alone: the same table as weighting the pruned zeros by 0,
        # from a quarter of the values (at 75%) and without a float64 importance per weight.
        survivors = palettize(sparse.nonzero_data, then)
        indices = np.zeros(keep.shape, dtype=survivors.indices.dtype)
        indices.reshape(-1)[np.flatnonzero(keep)] = survivors.indices
        table = survivors.lut.reshape((1,) * keep.ndim + survivors.lut.shape[-2:])
        return SparseLutParams(keep, LutParams(indices=indices, lut=table))
    weights = keep.astype(np.float64) if importance is None else np.where(keep, importance, 0.0)
    return SparseLutParams(keep, palettize(sparse.decompress(), then, channel_axis=output_axis, importance=weights))
