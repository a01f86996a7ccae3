"""Compression configs: what to do to one weight.

Each algorithm has a frozen dataclass validated on construction: `MagnitudePruneConfig`,
`ThresholdPruneConfig`, `PalettizeConfig`, `LinearQuantizeConfig`, and `JointConfig` (prune, then
palettize or quantize the non-zeros). Field names and defaults follow coremltools'
`OpMagnitudePrunerConfig`, `OpThresholdPrunerConfig`, `OpPalettizerConfig` and
`OpLinearQuantizerConfig`, so a user moving from coremltools finds what they know.

Strings are normalised (modes and granularities to lower case, dtypes to names such as "int4"), so
configs compare equal however they were spelled. Every invalid value raises `ConfigError` naming
the field.

This module is pure Python: `ops/` imports it, so it must never import coremltools' MIL.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from milcompress.errors import ConfigError

PALETTE_NBITS = (1, 2, 3, 4, 6, 8)
PALETTE_MODES = ("kmeans", "uniform", "unique", "custom")
PALETTE_GRANULARITIES = ("per_tensor", "per_grouped_channel")
QUANTIZE_MODES = ("linear_symmetric", "linear")
QUANTIZE_DTYPES = ("int8", "uint8", "int4", "uint4")
QUANTIZE_GRANULARITIES = ("per_tensor", "per_channel", "per_block")
DEFAULT_WEIGHT_THRESHOLD = 2048


def _fail(field: str, message: str) -> ConfigError:
    return ConfigError(f"{field}: {message}", field=field)


def _int(field: str, value: Any, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(field, f"must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise _fail(field, f"must be >= {minimum}, got {value}")
    return value


def _float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(field, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(field, f"must be finite, got {value}")
    return value


def _choice(field: str, value: Any, choices: Tuple[str, ...]) -> str:
    name = getattr(value, "name", value)  # accepts enums such as CompressionGranularity
    if not isinstance(name, str) or name.lower() not in choices:
        raise _fail(field, f"must be one of {', '.join(choices)}; got {value!r}")
    return name.lower()


def _weight_threshold(value: Any) -> int:
    return _int("weight_threshold", value, minimum=0)


def _min_snr_db(value: Any) -> Optional[float]:
    return None if value is None else _float("min_snr_db", value)


def _set(obj: Any, **fields: Any) -> None:
    for name, value in fields.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class MagnitudePruneConfig:
    """Zero the smallest-magnitude weights: a fraction of them, in blocks, or n in every m.

    Exactly one of `target_sparsity` (a fraction in [0, 1]) and `n_m_ratio` (n zeros in every m
    consecutive weights along `dim`) is set. `block_size` (> 1) prunes whole blocks of that many
    consecutive weights along `dim` ranked by their L2 norm. `dim` is 0 (output channels, the
    default for blocks) or 1 (input channels, the default for n:m).
    """

    target_sparsity: Optional[float] = None
    block_size: Optional[int] = None
    n_m_ratio: Optional[Tuple[int, int]] = None
    dim: Optional[int] = None
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD
    min_snr_db: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.target_sparsity is None) == (self.n_m_ratio is None):
            raise _fail("target_sparsity", "exactly one of target_sparsity and n_m_ratio must be set")
        target = self.target_sparsity
        if target is not None:
            target = _float("target_sparsity", target)
            if not 0.0 <= target <= 1.0:
                raise _fail("target_sparsity", f"must be in [0, 1], got {target}")
        ratio = self.n_m_ratio
        if ratio is not None:
            if isinstance(ratio, (str, bytes)) or not hasattr(ratio, "__len__") or len(ratio) != 2:
                raise _fail("n_m_ratio", f"must be a pair (n, m), got {ratio!r}")
            n, m = _int("n_m_ratio", ratio[0], 0), _int("n_m_ratio", ratio[1], 1)
            if n > m:
                raise _fail("n_m_ratio", f"n must be <= m, got ({n}, {m})")
            ratio = (n, m)
        block = self.block_size
        if block is not None:
            block = _int("block_size", block)
            if block <= 1:
                raise _fail("block_size", f"must be > 1, got {block}")
            if ratio is not None:
                raise _fail("block_size", "cannot be combined with n_m_ratio")
        dim = self.dim
        if dim is not None:
            dim = _int("dim", dim)
            if dim not in (0, 1):
                raise _fail("dim", f"must be 0 or 1, got {dim}")
            if block is None and ratio is None:
                raise _fail("dim", "is only meaningful with block_size or n_m_ratio")
        elif block is not None:
            dim = 0
        elif ratio is not None:
            dim = 1
        _set(
            self,
            target_sparsity=target,
            block_size=block,
            n_m_ratio=ratio,
            dim=dim,
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
        )

    @property
    def is_structured(self) -> bool:
        return self.block_size is not None or self.n_m_ratio is not None


@dataclass(frozen=True)
class ThresholdPruneConfig:
    """Zero every weight with |w| <= `threshold`; keep the tensor dense unless at least
    `minimum_sparsity_percentile` of it is then zero."""

    threshold: float = 1e-12
    minimum_sparsity_percentile: float = 0.5
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD
    min_snr_db: Optional[float] = None

    def __post_init__(self) -> None:
        threshold = _float("threshold", self.threshold)
        if threshold < 0:
            raise _fail("threshold", f"must be >= 0, got {threshold}")
        minimum = _float("minimum_sparsity_percentile", self.minimum_sparsity_percentile)
        if not 0.0 <= minimum <= 1.0:
            raise _fail("minimum_sparsity_percentile", f"must be in [0, 1], got {minimum}")
        _set(
            self,
            threshold=threshold,
            minimum_sparsity_percentile=minimum,
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
        )


@dataclass(frozen=True)
class PalettizeConfig:
    """Store each weight as an n-bit index into a table of 2**n values (or vectors).

    `mode`: `kmeans` (the table minimising squared error), `uniform` (an evenly spaced table that
    holds 0 exactly), `unique` (the tensor's own distinct values, lossless; `nbits` optional and
    then the smallest that fits), `custom` (`lut_function(weight) -> (lut, indices)`).
    `granularity`: one table per tensor, or one per group of `group_size` channels along
    `channel_axis` (None: the output-channel axis of the consuming op). `cluster_dim` > 1 makes
    table entries vectors of that many consecutive channels. `enable_per_channel_scale` divides
    each output channel by its largest magnitude before clustering and stores the scales.
    """

    nbits: Optional[int] = None
    mode: str = "kmeans"
    lut_function: Optional[Callable] = None
    granularity: str = "per_tensor"
    group_size: int = 32
    channel_axis: Optional[int] = None
    cluster_dim: int = 1
    enable_per_channel_scale: bool = False
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD
    min_snr_db: Optional[float] = None

    def __post_init__(self) -> None:
        mode = _choice("mode", self.mode, PALETTE_MODES)
        nbits = self.nbits
        if nbits is not None:
            nbits = _int("nbits", nbits)
            if nbits not in PALETTE_NBITS:
                raise _fail("nbits", f"must be one of {PALETTE_NBITS}, got {nbits}")
            if mode == "custom":
                raise _fail("nbits", "must not be set in custom mode: the lut_function decides it")
        elif mode in ("kmeans", "uniform"):
            raise _fail("nbits", f"is required in {mode} mode")
        if mode == "custom":
            if not callable(self.lut_function):
                raise _fail("lut_function", "custom mode needs a callable lut_function")
        elif self.lut_function is not None:
            raise _fail("lut_function", f"is only used in custom mode, not {mode}")
        granularity = _choice("granularity", self.granularity, PALETTE_GRANULARITIES)
        group_size = _int("group_size", self.group_size, minimum=1)
        channel_axis = None if self.channel_axis is None else _int("channel_axis", self.channel_axis)
        cluster_dim = _int("cluster_dim", self.cluster_dim, minimum=1)
        if cluster_dim > 1 and mode == "uniform":
            raise _fail("cluster_dim", "vector palettization (cluster_dim > 1) needs kmeans, unique or custom mode")
        if granularity == "per_grouped_channel" and group_size % cluster_dim:
            raise _fail("group_size", f"must be a multiple of cluster_dim ({cluster_dim}), got {group_size}")
        if not isinstance(self.enable_per_channel_scale, (bool, np.bool_)):
            raise _fail("enable_per_channel_scale", f"must be true or false, got {self.enable_per_channel_scale!r}")
        _set(
            self,
            mode=mode,
            nbits=nbits,
            granularity=granularity,
            group_size=group_size,
            channel_axis=channel_axis,
            cluster_dim=cluster_dim,
            enable_per_channel_scale=bool(self.enable_per_channel_scale),
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
        )


def _quantize_dtype(value: Any) -> str:
    if isinstance(value, str):
        return _choice("dtype", value, QUANTIZE_DTYPES)
    if isinstance(value, type) and issubclass(value, np.generic) or isinstance(value, np.dtype):
        name = np.dtype(value).name
        if name in ("int8", "uint8"):
            return name
    raise _fail("dtype", f"must be one of {', '.join(QUANTIZE_DTYPES)}; got {value!r}")


@dataclass(frozen=True)
class LinearQuantizeConfig:
    """Store weights as integers with a scale (and, in `linear` mode, a zero point).

    `mode`: `linear_symmetric` (range [-max|w|, max|w|], zero point 0 or mid-range) or `linear`
    (range [min(w, 0), max(w, 0)]). `dtype`: int8, uint8, int4, uint4. `granularity`: one scale per
    tensor, per output channel, or per block of `block_size` input channels (an int), or blocks
    given per axis (a tuple with one size per axis, 0 meaning the whole axis).
    """

    mode: str = "linear_symmetric"
    dtype: Union[str, type] = "int8"
    granularity: str = "per_channel"
    block_size: Union[int, Tuple[int, ...]] = 32
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD
    min_snr_db: Optional[float] = None

    def __post_init__(self) -> None:
        block = self.block_size
        if isinstance(block, (list, tuple)):
            block = tuple(_int("block_size", b, minimum=0) for b in block)
            if not block:
                raise _fail("block_size", "a per-axis block size needs at least one axis")
        else:
            block = _int("block_size", block, minimum=1)
        _set(
            self,
            mode=_choice("mode", self.mode, QUANTIZE_MODES),
            dtype=_quantize_dtype(self.dtype),
            granularity=_choice("granularity", self.granularity, QUANTIZE_GRANULARITIES),
            block_size=block,
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
        )

    @property
    def nbits(self) -> int:
        return 4 if self.dtype.endswith("4") else 8

    @property
    def signed(self) -> bool:
        return not self.dtype.startswith("u")


PruneConfig = Union[MagnitudePruneConfig, ThresholdPruneConfig]


@dataclass(frozen=True)
class JointConfig:
    """Prune, then palettize or quantize only the weights that survive (iOS18 and later)."""

    prune: PruneConfig
    then: Union[PalettizeConfig, LinearQuantizeConfig]

    def __post_init__(self) -> None:
        if not isinstance(self.prune, (MagnitudePruneConfig, ThresholdPruneConfig)):
            raise _fail("prune", f"must be a prune config, got {type(self.prune).__name__}")
        if not isinstance(self.then, (PalettizeConfig, LinearQuantizeConfig)):
            raise _fail("then", f"must be a palettize or linear-quantize config, got {type(self.then).__name__}")
        if isinstance(self.then, PalettizeConfig):
            if self.then.cluster_dim > 1:
                raise _fail("then.cluster_dim", "joint sparse + vector palettization has no Core ML form")
            if self.then.mode == "custom":
                raise _fail("then.mode", "joint compression palettizes the surviving weights with kmeans, uniform or unique")

    @property
    def weight_threshold(self) -> int:
        return max(self.prune.weight_threshold, self.then.weight_threshold)

    @property
    def min_snr_db(self) -> Optional[float]:
        limits = [c.min_snr_db for c in (self.prune, self.then) if c.min_snr_db is not None]
        return max(limits) if limits else None


AlgorithmConfig = Union[MagnitudePruneConfig, ThresholdPruneConfig, PalettizeConfig, LinearQuantizeConfig, JointConfig]


def replace(config: AlgorithmConfig, **changes: Any) -> AlgorithmConfig:
    """A copy of `config` with `changes`, validated again."""
    return dataclasses.replace(config, **changes)
