"""Joint compression: two compressions of one weight, in the directions coremltools 9.0 offers.

- Prune, then palettize or quantize only the weights that survive (`prune_then_compress`). The
  result keeps the sparsity mask next to an ordinary `LutParams` or `AffineParams` computed on the
  pruned tensor. Pruned positions have zero importance for k-means, so the table is fitted to the
  surviving weights alone (coremltools clusters the zeros too); their indices or integers exist in
  the dense arrays but are never stored.
- A weight already stored in one form, compressed again (`compress_further`, coremltools'
  `joint_compression=True`): sparse weights get their non-zeros palettized or quantized as above;
  quantized or palettized weights get pruned (the mask is chosen on the values they decompress to,
  the integers or indices of the survivors are kept as they are); a palettized weight gets its
  table quantized (`QuantizedLutParams`: int8/uint8 table entries with a scale, Apple's "A8W4"
  form when the indices are 4-bit); a quantized weight gets its integers palettized
  (`PalettizedAffineParams`: a table of integers, then the same scale and zero point).

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from milcompress.config import (
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
    whole_tensor_sizes,
)
from milcompress.errors import NotCompressible, UnsupportedError
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


@dataclass(frozen=True, eq=False)
class QuantizedLutParams:
    """A palettized tensor whose tables are themselves quantized: `lut` holds the indices and the
    dequantized tables (what the weight decompresses through), `table` the stored integer tables
    with their scale (and zero point)."""

    lut: LutParams
    table: AffineParams

    @property
    def shape(self):
        return self.lut.shape

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    @property
    def nbits(self) -> int:
        return self.lut.nbits

    @property
    def nbytes(self) -> int:
        return self.lut.nbytes - self.lut.lut.nbytes + self.table.nbytes

    def decompress(self) -> np.ndarray:
        return self.lut.decompress()


@dataclass(frozen=True, eq=False)
class PalettizedAffineParams:
    """A quantized tensor whose integers are themselves palettized: `lut` holds the indices and a
    table of integers (int8/uint8), `affine` the scale and zero point applied to what the table
    gives (its `data` is that)."""

    lut: LutParams
    affine: AffineParams

    @property
    def shape(self):
        return self.affine.shape

    @property
    def dtype(self) -> np.dtype:
        return self.affine.dtype

    @property
    def nbits(self) -> int:
        return self.lut.nbits

    @property
    def nbytes(self) -> int:
        return self.lut.nbytes + self.affine.nbytes - packed_size(self.affine.data.size, self.affine.nbits)

    def decompress(self) -> np.ndarray:
        return self.affine.decompress()


PRUNE_CONFIGS = (MagnitudePruneConfig, ThresholdPruneConfig)

# coremltools stores a const of fewer elements in the program itself, never compressed: so a
# palette's table that small is never quantized in joint compression.
SMALLEST_STORED_TABLE = 10


def check_vector_groups(config) -> None:
    """NotCompressible if vector palettization's groups cannot hold whole vectors."""
    then = config.then if isinstance(config, JointConfig) else config
    if isinstance(then, PalettizeConfig) and then.granularity == "per_grouped_channel" and then.group_size % then.cluster_dim:
        raise NotCompressible(f"group_size {then.group_size} is not a multiple of cluster_dim {then.cluster_dim}")


def further_compression_problem(prior, config) -> Optional[str]:
    """Why a weight already stored as `prior` cannot be compressed again by `config` (None if it
    can). Raises UnsupportedError where coremltools raises NotImplementedError."""
    from milcompress.ops.prune import SparseParams

    if isinstance(prior, SparseParams):
        if isinstance(config, PalettizeConfig):
            if config.cluster_dim > 1:
                return "already sparse: joint sparse + vector palettization (cluster_dim > 1) is not supported"
            if config.mode == "custom":
                return "already sparse: joint compression palettizes the non-zeros with kmeans, uniform or unique"
            return None
        if isinstance(config, LinearQuantizeConfig):
            return None
    elif isinstance(prior, (AffineParams, LutParams)) and isinstance(config, PRUNE_CONFIGS):
        if isinstance(prior, LutParams) and prior.cluster_dim > 1:
            return "already palettized with vectors: a pruning mask cannot follow single weights there"
        return None
    elif isinstance(prior, AffineParams) and isinstance(config, PalettizeConfig):
        if prior.nbits != 8:
            return f"already quantized to {prior.nbits} bits: a table of such integers has no Core ML form (tables hold 8-bit integers)"
        if config.enable_per_channel_scale or config.mode == "custom":
            return "already quantized: its integers are palettized with kmeans, uniform or unique tables, without per-channel scales"
        return None
    elif isinstance(prior, LutParams) and isinstance(config, LinearQuantizeConfig):
        if prior.lut.size < SMALLEST_STORED_TABLE:
            return f"already palettized: its table of {prior.lut.size} values is too small to quantize (coremltools leaves it too)"
        if config.granularity != "per_tensor":
            raise UnsupportedError(
                f"granularity: joint palettization + quantization quantizes the palette's table, which has "
                f"no channel axis of the weight; use per_tensor, not {config.granularity}. (coremltools: When use "
                "joint compression for palettization-quantization, please make sure to use per-tensor quantization.)",
                field="granularity",
            )
        return None
    return f"joint compression: a weight stored as {_kind(prior)} cannot take {type(config).__name__} on top"


def _kind(form) -> str:
    from milcompress.ops import describe

    return describe(form)


def compress_further(prior, config, *, output_axis: int = 0, input_axis: int = 1):
    """Compress a weight already stored as `prior` again by `config` (see the module docstring);
    call `further_compression_problem` first."""
    from milcompress.ops.prune import SparseParams, prune

    config = whole_tensor_sizes(config)
    check_vector_groups(config)
    if isinstance(prior, SparseParams):  # keep the stored mask exactly: prune exact zeros only
        keep_mask = ThresholdPruneConfig(threshold=0.0, minimum_sparsity_percentile=0.0, weight_threshold=config.weight_threshold)
        return prune_then_compress(prior.decompress(), JointConfig(prune=keep_mask, then=config), output_axis=output_axis, input_axis=input_axis)
    if isinstance(config, PRUNE_CONFIGS):
        mask = prune(prior.decompress(), config).mask
        return SparseAffineParams(mask, prior) if isinstance(prior, AffineParams) else SparseLutParams(mask, prior)
    if isinstance(prior, LutParams) and isinstance(config, LinearQuantizeConfig):
        table = quantize(prior.lut, config)
        return QuantizedLutParams(LutParams(prior.indices, table.decompress(), prior.vector_axis, prior.scale), table)
    if isinstance(prior, AffineParams) and isinstance(config, PalettizeConfig):
        palette = palettize(prior.data.astype(np.float32), config, channel_axis=output_axis)
        info = np.iinfo(prior.data.dtype)  # integers of the table: rounded, in the data's range
        table = np.clip(np.round(palette.lut), info.min, info.max).astype(prior.data.dtype)
        lut = LutParams(palette.indices, table, palette.vector_axis)
        return PalettizedAffineParams(lut, AffineParams(lut.decompress(), prior.scale, prior.zero_point, prior.nbits, prior.signed))
    raise TypeError(f"no joint form for {type(prior).__name__} and {type(config).__name__}")
