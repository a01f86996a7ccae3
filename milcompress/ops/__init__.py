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
)
from milcompress.ops.joint import SparseAffineParams, SparseLutParams, prune_then_compress
from milcompress.ops.metrics import bits_per_weight, snr_db
from milcompress.ops.palettize import LutParams, palettize
from milcompress.ops.prune import SparseParams, prune
from milcompress.ops.quantize import AffineParams, quantize

CompressedForm = Union[SparseParams, LutParams, AffineParams, SparseLutParams, SparseAffineParams]


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
    "LutParams",
    "SparseAffineParams",
    "SparseLutParams",
    "SparseParams",
    "bits_per_weight",
    "compress",
    "palettize",
    "prune",
    "prune_then_compress",
    "quantize",
    "snr_db",
]
