"""The numeric core: pure functions from a weight array and a config to a compressed form.

Each form is a small frozen dataclass with `decompress()` (the dense array it stands for) and
`nbytes` (its payload). `compress(weight, config, ...)` dispatches on the config type. Nothing here
imports coremltools' MIL; `lowering/` turns these forms into constexpr ops.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from milcompress.config import (
    AlgorithmConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
    whole_tensor_sizes,
)
from milcompress.ops.joint import (
    PalettizedAffineParams,
    QuantizedLutParams,
    check_vector_groups,
    SparseAffineParams,
    SparseLutParams,
    compress_further,
    further_compression_problem,
    prune_then_compress,
)
from milcompress.ops.metrics import bits_per_weight, snr_db
from milcompress.ops.palettize import LutParams, palettize
from milcompress.ops.prune import SparseParams, prune
from milcompress.ops.quantize import AffineParams, quantize

CompressedForm = Union[
    SparseParams, LutParams, AffineParams, SparseLutParams, SparseAffineParams, QuantizedLutParams, PalettizedAffineParams
]


def _granularity(blocks, shape) -> str:
    if all(b == d for b, d in zip(blocks, shape)):
        return "per tensor"
    varying = [(axis, b) for axis, (b, d) in enumerate(zip(blocks, shape)) if b != d]
    if len(varying) == 1 and varying[0][1] == 1:
        return f"per channel (axis {varying[0][0]})"
    return "blocks " + "x".join(str(b) for b in blocks)


def describe(params: CompressedForm) -> str:
    """A short human description of a compressed form, e.g. "LUT 4-bit, 8 tables"."""
    if isinstance(params, SparseParams):
        return f"sparse {params.sparsity:.0%}"
    if isinstance(params, LutParams):
        text = f"LUT {params.nbits}-bit"
        if params.tables > 1:
            text += f", {params.tables} tables"
        if params.cluster_dim > 1:
            text += f", vectors of {params.cluster_dim}"
        if params.scale is not None:
            text += ", channel scales"
        return text
    if isinstance(params, AffineParams):
        kind = f"{'int' if params.signed else 'uint'}{params.nbits}"
        text = f"{kind} {_granularity(params.block_sizes, params.shape)}"
        return text + ", float offset" if params.float_offset else text
    if isinstance(params, SparseLutParams):
        return f"sparse {params.sparsity:.0%} + {describe(params.lut)}"
    if isinstance(params, SparseAffineParams):
        return f"sparse {params.sparsity:.0%} + {describe(params.affine)}"
    if isinstance(params, PalettizedAffineParams):
        return f"{describe(params.affine)}, integers in a {describe(params.lut)}"
    if isinstance(params, QuantizedLutParams):
        table = params.table
        return f"{describe(params.lut)}, {'int' if table.signed else 'uint'}{table.nbits} table"
    raise TypeError(f"not a compressed form: {type(params).__name__}")


def compress(
    weight: np.ndarray,
    config: AlgorithmConfig,
    *,
    output_axis: int = 0,
    input_axis: int = 1,
    importance: Optional[np.ndarray] = None,
) -> CompressedForm:
    """Compress `weight` as `config` says; the axes are those of the consuming op's weight layout.

    Raises `NotCompressible` (with a reason) when the tensor cannot take the requested form.
    """
    config = whole_tensor_sizes(config)
    check_vector_groups(config)
    if isinstance(config, (MagnitudePruneConfig, ThresholdPruneConfig)):
        return prune(weight, config)
    if isinstance(config, PalettizeConfig):
        return palettize(weight, config, channel_axis=output_axis, importance=importance)
    if isinstance(config, LinearQuantizeConfig):
        return quantize(weight, config, output_axis=output_axis, input_axis=input_axis)
    if isinstance(config, JointConfig):
        return prune_then_compress(weight, config, output_axis=output_axis, input_axis=input_axis, importance=importance)
    raise TypeError(f"not a compression config: {type(config).__name__}")


__all__ = [
    "AffineParams",
    "CompressedForm",
    "PalettizedAffineParams",
    "QuantizedLutParams",
    "LutParams",
    "SparseAffineParams",
    "SparseLutParams",
    "SparseParams",
    "bits_per_weight",
    "compress",
    "compress_further",
    "further_compression_problem",
    "describe",
    "palettize",
    "prune",
    "prune_then_compress",
    "quantize",
    "snr_db",
]
