"""Compression configs: what to do to each weight.

Each algorithm has a frozen dataclass validated on construction: `MagnitudePruneConfig`,
`ThresholdPruneConfig`, `PalettizeConfig`, `LinearQuantizeConfig`, and `JointConfig` (prune, then
palettize or quantize the non-zeros). Field names and defaults follow coremltools'
`OpMagnitudePrunerConfig`, `OpThresholdPrunerConfig`, `OpPalettizerConfig` and
`OpLinearQuantizerConfig`, so a user moving from coremltools finds what they know.

Strings are normalised (modes and granularities to lower case, dtypes to names such as "int4"), so
configs compare equal however they were spelled. Every invalid value raises `ConfigError` naming
the field.

`CompressionConfig` says which algorithm config each weight gets (by const or op name, op type,
or globally), reads and writes the coremltools-style dict/YAML layout strictly, and accepts
coremltools' own `OptimizationConfig` (translated by `from_coremltools`).

This module is pure Python at import: `ops/` imports it, so it never imports coremltools itself.
coremltools' own config types (given as objects, or named in a file) are parsed, validated and
read through `milcompress._coremltools`, imported only then.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np

from milcompress.errors import ConfigError

PALETTE_NBITS = (1, 2, 3, 4, 6, 8)
PALETTE_MODES = ("kmeans", "uniform", "unique", "custom")
PALETTE_GRANULARITIES = ("per_tensor", "per_grouped_channel", "auto")
QUANTIZE_MODES = ("linear_symmetric", "linear", "linear_float_offset")
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


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(field, f"must be true or false, got {value!r}")
    return bool(value)


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
    `channel_axis` (None: the output-channel axis of the consuming op; `group_size=0`, as in
    coremltools, one group of all channels), or, in unique mode,
    `auto`: whichever lossless layout (one table, or one per group of any size) is smallest. `cluster_dim` > 1 makes
    table entries vectors of that many consecutive channels (a group size that is not a multiple of
    it leaves the weight alone with a recorded reason, as coremltools skips it). `enable_per_channel_scale`, as in
    coremltools, divides the weight by its largest magnitude across the channel axis (one scale per
    input position) before clustering and stores the scales. `outlier_aware` (kmeans mode,
    default on) weighs the squared error of weights beyond 4 times the tensor's RMS more when the
    table is fitted, so the few far-out weights a model may depend on (an LLM's super weights)
    keep entries of their own instead of being clipped; False gives the plain least-squares
    table, as coremltools fits it (see `ops.kmeans.kmeans_1d`). `shrink_to_fit` (default true):
    a group size that does not divide a weight's channels is shrunk to the largest that does (and
    the report says so); false gives coremltools' behaviour, where such a weight is left alone.
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
    outlier_aware: bool = True
    shrink_to_fit: bool = True

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
        if granularity == "auto" and mode != "unique":
            raise _fail("granularity", "auto (the smallest lossless layout) is only for unique mode")
        group_size = _int("group_size", self.group_size, minimum=0)
        channel_axis = None if self.channel_axis is None else _int("channel_axis", self.channel_axis)
        cluster_dim = _int("cluster_dim", self.cluster_dim, minimum=1)
        if cluster_dim > 1 and mode == "uniform":
            raise _fail("cluster_dim", "vector palettization (cluster_dim > 1) needs kmeans, unique or custom mode")
        for flag in ("enable_per_channel_scale", "outlier_aware"):
            _bool(flag, getattr(self, flag))
        _set(
            self,
            mode=mode,
            nbits=nbits,
            granularity=granularity,
            group_size=group_size,
            channel_axis=channel_axis,
            cluster_dim=cluster_dim,
            enable_per_channel_scale=bool(self.enable_per_channel_scale),
            outlier_aware=bool(self.outlier_aware),
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
            shrink_to_fit=_bool("shrink_to_fit", self.shrink_to_fit),
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

    `mode`: `linear_symmetric` (range [-max|w|, max|w|], zero point 0 or mid-range), `linear`
    (range [min(w, 0), max(w, 0)], an integer zero point) or, ours, `linear_float_offset` (range
    [min(w), max(w)] of each block, a float16 offset: a scale and a minimum per block as in
    llama.cpp's Q4_1; iOS18). `dtype`: int8, uint8, int4, uint4. `granularity`: one scale per
    tensor, per output channel, or per block of `block_size` input channels (an int; 0, as in
    coremltools, the whole input axis), or blocks given per axis (a tuple with one size per axis,
    0 meaning the whole axis). `shrink_to_fit` (default true): a block size that does not divide
    its axis is shrunk to the largest that does (and the report says so); false gives
    coremltools' behaviour, where such a weight is left alone.
    """

    mode: str = "linear_symmetric"
    dtype: Union[str, type] = "int8"
    granularity: str = "per_channel"
    block_size: Union[int, Tuple[int, ...]] = 32
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD
    min_snr_db: Optional[float] = None
    shrink_to_fit: bool = True

    def __post_init__(self) -> None:
        block = self.block_size
        if isinstance(block, (list, tuple)):
            block = tuple(_int("block_size", b, minimum=0) for b in block)
            if not block:
                raise _fail("block_size", "a per-axis block size needs at least one axis")
        else:
            block = _int("block_size", block, minimum=0)
        _set(
            self,
            mode=_choice("mode", self.mode, QUANTIZE_MODES),
            dtype=_quantize_dtype(self.dtype),
            granularity=_choice("granularity", self.granularity, QUANTIZE_GRANULARITIES),
            block_size=block,
            weight_threshold=_weight_threshold(self.weight_threshold),
            min_snr_db=_min_snr_db(self.min_snr_db),
            shrink_to_fit=_bool("shrink_to_fit", self.shrink_to_fit),
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


def whole_tensor_sizes(config: AlgorithmConfig) -> AlgorithmConfig:
    """coremltools' meaning of a zero size: `group_size=0` is one table for the whole tensor (our
    per-tensor palettization); a zero `block_size` is the whole axis, which quantization already
    reads that way."""
    if isinstance(config, JointConfig):
        then = whole_tensor_sizes(config.then)
        return config if then is config.then else dataclasses.replace(config, then=then)
    if isinstance(config, PalettizeConfig) and config.granularity == "per_grouped_channel" and config.group_size == 0:
        return dataclasses.replace(config, granularity="per_tensor")
    return config



# ------------------------------------------------------------------------------------------------
# Which config applies to which weight.

_CLASS_BY_NAME = {
    "MagnitudePruneConfig": MagnitudePruneConfig,
    "ThresholdPruneConfig": ThresholdPruneConfig,
    "PalettizeConfig": PalettizeConfig,
    "LinearQuantizeConfig": LinearQuantizeConfig,
    "JointConfig": JointConfig,
}
# coremltools' config classes, parsed by coremltools itself (so what it rejects, we reject) and
# then translated.
_COREMLTOOLS_CLASS_NAMES = ("OpMagnitudePrunerConfig", "OpThresholdPrunerConfig", "OpPalettizerConfig", "OpLinearQuantizerConfig")


@dataclass(frozen=True)
class CompressionConfig:
    """Which algorithm config each weight gets.

    A const gets `op_name_configs[its own name]` if present; otherwise each op consuming it
    resolves to `op_name_configs[op name]`, else `op_type_configs[op type]`, else `global_config`,
    and all consumers must agree (a shared const with conflicting configs is an error naming it
    and its consumers). An explicit None, at any level, means "leave this weight alone".
    `op_type_configs` cannot name "const" (coremltools refuses it too: use `global_config`).

    `op_selector` is the deprecated `ct.compression_utils` form coremltools still accepts
    (`OptimizationConfig(is_deprecated=True, op_selector=...)`): a function of the const op that
    says whether to compress it; only set by `from_coremltools`.
    """

    global_config: Optional[AlgorithmConfig] = None
    op_type_configs: Any = dataclasses.field(default_factory=dict)
    op_name_configs: Any = dataclasses.field(default_factory=dict)
    op_selector: Optional[Callable] = None

    def __post_init__(self) -> None:
        if self.op_selector is not None and not callable(self.op_selector):
            raise _fail("op_selector", f"must be a function of the const op, got {self.op_selector!r}")
        _check_entry("global_config", self.global_config)
        for field in ("op_type_configs", "op_name_configs"):
            table = getattr(self, field)
            if table is None:
                table = {}
            if not isinstance(table, dict):
                raise _fail(field, f"must be a mapping of names to configs, got {type(table).__name__}")
            for key, value in table.items():
                if not isinstance(key, str):
                    raise _fail(field, f"keys must be strings, got {key!r}")
                _check_entry(f"{field}.{key}", value)
            _set(self, **{field: dict(table)})

    def __hash__(self) -> int:
        return hash((self.global_config, tuple(self.op_type_configs.items()), tuple(self.op_name_configs.items()), self.op_selector))

    @staticmethod
    def of(config: Any) -> "CompressionConfig":
        """Accept a CompressionConfig, one algorithm config (applied globally), or coremltools'
        OptimizationConfig."""
        if isinstance(config, CompressionConfig):
            return config
        if isinstance(config, tuple(_CLASS_BY_NAME.values())):
            return CompressionConfig(global_config=config)
        if type(config).__name__ == "OptimizationConfig":
            return from_coremltools(config)
        raise ConfigError(
            f"config: expected a CompressionConfig, an algorithm config or a coremltools OptimizationConfig, "
            f"got {type(config).__name__}",
            field="config",
        )

    def resolve(self, const_name: str, consumers) -> Tuple[Optional[AlgorithmConfig], str]:
        """The config for a const read by `consumers` [(op name, op type)], and where it came from.

        Raises ConfigError if consumers resolve to different configs, or if op_type_configs names
        "const" (as coremltools does when it meets a const it would compress).
        """
        if const_name in self.op_name_configs:
            return self.op_name_configs[const_name], f"op_name_configs['{const_name}']"
        if "const" in self.op_type_configs:
            raise ConfigError(
                f"op_type_configs['const']: const ops cannot be set by the `set_op_type` function. Please use `set_global` "
                f"(met at const '{const_name}'; give one const its own config with op_name_configs['{const_name}'])",
                field="op_type_configs.const",
            )
        found = []
        for op_name, op_type in consumers:
            if op_name in self.op_name_configs:
                found.append((self.op_name_configs[op_name], f"op_name_configs['{op_name}']", op_name))
            elif op_type in self.op_type_configs:
                found.append((self.op_type_configs[op_type], f"op_type_configs['{op_type}']", op_name))
            else:
                found.append((self.global_config, "global_config", op_name))
        if not found:
            return self.global_config, "global_config"
        if any(config != found[0][0] for config, _, _ in found):
            sources = "; ".join(f"{op} gets {source}" for _, source, op in found)
            raise ConfigError(
                f"const '{const_name}' is shared by ops with conflicting configs ({sources}); "
                f"give it one with op_name_configs['{const_name}']",
                field=f"op_name_configs.{const_name}",
            )
        return found[0][0], found[0][1]

    def unmatched(self, names, op_types) -> List[str]:
        """A warning for each `op_name_configs` key that is not in `names` (the weights' const
        names and the names of the ops reading them) and each `op_type_configs` key not in
        `op_types` (the types of the ops reading weights), with the closest names that are."""
        return _unmatched("op_name_configs", self.op_name_configs, names, "weight or op reading a weight") + _unmatched(
            "op_type_configs", self.op_type_configs, op_types, "op type reading a weight"
        )

    def algorithms(self):
        """Every algorithm config named anywhere in this config."""
        found = [self.global_config] + list(self.op_type_configs.values()) + list(self.op_name_configs.values())
        return [c for c in found if c is not None]

    # Serialisation -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> "CompressionConfig":
        """Parse the coremltools-style layout: `config_type`, `global_config`, `op_type_configs`,
        `op_name_configs`; an entry may override `config_type`. Unknown keys are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping, got {type(data).__name__}", field="config")
        _check_keys("config", data, ("config_type", "global_config", "op_type_configs", "op_name_configs"))
        default_type = data.get("config_type")
        if default_type is not None and not isinstance(default_type, str):
            raise _fail("config_type", f"must be a class name, got {default_type!r}")
        tables = {}
        for field in ("op_type_configs", "op_name_configs"):
            table = data.get(field) or {}
            if not isinstance(table, dict):
                raise _fail(field, f"must be a mapping, got {type(table).__name__}")
            tables[field] = {str(k): _parse_entry(f"{field}.{k}", v, default_type) for k, v in table.items()}
        return cls(global_config=_parse_entry("global_config", data.get("global_config"), default_type), **tables)

    @classmethod
    def from_yaml(cls, source: Any) -> "CompressionConfig":
        """Parse YAML text, a path to a YAML file, or an open file."""
        import yaml

        named = None  # the file name, where `source` names one
        if hasattr(source, "read"):
            text = source.read()
        else:
            text = str(source)
            if "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.exists(text)):
                named = text
                try:
                    with open(named) as handle:
                        text = handle.read()
                except OSError as error:
                    raise ConfigError(f"config: cannot read {named}: {error.strerror}", field="config") from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"config: not valid YAML: {error}", field="config") from error
        if named is None and not hasattr(source, "read") and "\n" not in text and not isinstance(data, (dict, list)):
            # One line that is no file and no YAML collection: a config file name, mistyped or missing.
            raise ConfigError(f"config: {text}: no such config file", field="config")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The layout `from_dict` reads; each entry names its own config_type."""
        if self.op_selector is not None:
            raise _fail("op_selector", "a Python function cannot be written to a dict or YAML")
        return {
            "global_config": _entry_to_dict("global_config", self.global_config),
            "op_type_configs": {k: _entry_to_dict(f"op_type_configs.{k}", v) for k, v in self.op_type_configs.items()},
            "op_name_configs": {k: _entry_to_dict(f"op_name_configs.{k}", v) for k, v in self.op_name_configs.items()},
        }

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _unmatched(field: str, table: dict, known, what: str) -> List[str]:
    known = sorted(set(known))
    found = []
    for key in table:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        if close:
            hint = "closest: " + ", ".join(close)
        else:
            hint = f"the model has {len(known)}: " + ", ".join(known[:8]) + (", ..." if len(known) > 8 else "") if known else "the model has none"
        found.append(f"{field}['{key}'] matches no {what}, so it applies to nothing ({hint})")
    return found


def _check_entry(field: str, value: Any) -> None:
    if value is not None and not isinstance(value, tuple(_CLASS_BY_NAME.values())):
        raise _fail(field, f"must be an algorithm config or None, got {type(value).__name__}")


def _check_keys(where: str, data: dict, known) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key; known keys are {', '.join(known)}", field=f"{where}.{key}")


def _parse_entry(field: str, value: Any, default_type: Optional[str]) -> Optional[AlgorithmConfig]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(field, f"must be a mapping of config fields (or null), got {value!r}")
    value = dict(value)
    type_name = value.pop("config_type", default_type)
    if type_name is None:
        raise _fail(f"{field}.config_type", "is required (here or at the top level)")
    if type_name in _COREMLTOOLS_CLASS_NAMES:
        return _parse_coremltools_entry(field, type_name, value)
    cls = _CLASS_BY_NAME.get(type_name)
    if cls is None:
        known = sorted(_CLASS_BY_NAME) + list(_COREMLTOOLS_CLASS_NAMES)
        raise _fail(f"{field}.config_type", f"unknown config type {type_name!r}; known types are {', '.join(known)}")
    if cls is JointConfig:
        _check_keys(field, value, ("prune", "then"))
        if "prune" not in value or "then" not in value:
            raise _fail(field, "a JointConfig needs both 'prune' and 'then'")
        return JointConfig(
            prune=_parse_entry(f"{field}.prune", value["prune"], None),
            then=_parse_entry(f"{field}.then", value["then"], None),
        )
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(field, value, names)
    if "lut_function" in value:
        raise _fail(f"{field}.lut_function", "cannot come from a file; build a PalettizeConfig in Python")
    try:
        return cls(**value)
    except ConfigError as error:
        raise ConfigError(f"{field}.{error}", field=f"{field}.{error.field}") from error


def _entry_to_dict(field: str, config: Optional[AlgorithmConfig]) -> Optional[dict]:
    if config is None:
        return None
    if isinstance(config, JointConfig):
        return {
            "config_type": "JointConfig",
            "prune": _entry_to_dict(f"{field}.prune", config.prune),
            "then": _entry_to_dict(f"{field}.then", config.then),
        }
    out = {"config_type": type(config).__name__}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "lut_function":
            if value is not None:
                raise _fail(f"{field}.lut_function", "a Python function cannot be written to a dict or YAML")
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ------------------------------------------------------------------------------------------------
# coremltools' OptimizationConfig, accepted unchanged with the same meaning.


def from_coremltools(config: Any) -> CompressionConfig:
    """Translate a coremltools OptimizationConfig (its op configs: OpPalettizerConfig,
    OpLinearQuantizerConfig, OpMagnitudePrunerConfig, OpThresholdPrunerConfig).

    The deprecated `ct.compression_utils` form (`is_deprecated=True`, with or without an
    `op_selector`) means what it means to coremltools: the op configs carry no weight_threshold
    (one set is an error, as there), every const of at least 10 elements is a candidate, and the
    op_selector, given the const op, picks which are compressed."""
    from milcompress._coremltools import op_selector_form

    deprecated, selector = op_selector_form(config)
    translate = lambda field, op_config: translate_coremltools_op_config(field, op_config, deprecated=deprecated)  # noqa: E731
    return CompressionConfig(
        global_config=translate("global_config", config.global_config),
        op_type_configs={k: translate(f"op_type_configs.{k}", v) for k, v in (config.op_type_configs or {}).items()},
        op_name_configs={k: translate(f"op_name_configs.{k}", v) for k, v in (config.op_name_configs or {}).items()},
        op_selector=selector if deprecated else None,
    )


def kmeans_workers_hint(config: Any) -> Optional[int]:
    """The largest `num_kmeans_workers` above 1 of a coremltools config (an OptimizationConfig or
    an op config), taken as a hint for how many processes compress the weights; None for our
    configs, and where every op config keeps coremltools' default of 1 (one process, for
    coremltools' own k-means, is not a request for fewer than our default)."""
    op_configs = [config]
    if not isinstance(config, CompressionConfig) and hasattr(config, "global_config"):
        op_configs = [config.global_config, *(getattr(config, "op_type_configs", None) or {}).values(),
                      *(getattr(config, "op_name_configs", None) or {}).values()]
    hints = [getattr(c, "num_kmeans_workers", None) for c in op_configs]
    hints = [int(h) for h in hints if isinstance(h, int) and not isinstance(h, bool) and h > 1]
    return max(hints) if hints else None


# coremltools' deprecated API compresses every const its serialiser would store in the weight file
# (at least 10 elements): a weight_threshold of 9 in our terms (we compress more than it).
DEPRECATED_API_WEIGHT_THRESHOLD = 9


def translate_coremltools_op_config(field: str, op_config: Any, deprecated: bool = False) -> Optional[AlgorithmConfig]:
    """One coremltools op config as ours. Fields keep their meaning; `num_kmeans_workers` is not
    part of ours (see `kmeans_workers_hint`: the passes take it as a hint); a None weight_threshold, which coremltools
    rejects when the pass runs, is rejected here, except in the deprecated form (`deprecated`),
    which needs it None, as coremltools does."""
    if op_config is None:
        return None
    kind = type(op_config).__name__
    threshold = getattr(op_config, "weight_threshold", DEFAULT_WEIGHT_THRESHOLD)
    if deprecated:
        if threshold is not None:
            raise _fail(f"{field}.weight_threshold", "weight_threshold cannot be set through the deprecated ct.compression_util API")
        threshold = DEPRECATED_API_WEIGHT_THRESHOLD
    elif threshold is None:
        raise _fail(f"{field}.weight_threshold", "weight_threshold cannot be None (coremltools rejects it too)")
    try:
        if kind == "OpPalettizerConfig":
            return PalettizeConfig(
                nbits=op_config.nbits,
                mode=op_config.mode,
                lut_function=op_config.lut_function,
                granularity=op_config.granularity,
                group_size=op_config.group_size,
                channel_axis=op_config.channel_axis,
                cluster_dim=op_config.cluster_dim,
                enable_per_channel_scale=op_config.enable_per_channel_scale,
                weight_threshold=threshold,
            )
        if kind == "OpLinearQuantizerConfig":
            from milcompress._coremltools import dtype_name

            return LinearQuantizeConfig(
                mode=op_config.mode,
                dtype=dtype_name(op_config.dtype),
                granularity=op_config.granularity,
                block_size=op_config.block_size,
                weight_threshold=threshold,
            )
        if kind == "OpMagnitudePrunerConfig":
            return MagnitudePruneConfig(
                target_sparsity=op_config.target_sparsity,
                block_size=op_config.block_size,
                n_m_ratio=op_config.n_m_ratio,
                dim=op_config.dim,
                weight_threshold=threshold,
            )
        if kind == "OpThresholdPrunerConfig":
            return ThresholdPruneConfig(
                threshold=op_config.threshold,
                minimum_sparsity_percentile=op_config.minimum_sparsity_percentile,
                weight_threshold=threshold,
            )
    except ConfigError as error:
        raise ConfigError(f"{field}.{error}", field=f"{field}.{error.field}") from error
    raise _fail(field, f"unsupported coremltools config type {kind}")


def _parse_coremltools_entry(field: str, type_name: str, value: dict) -> Optional[AlgorithmConfig]:
    """Check each value against the field's declared type (coremltools' own parser converts: it
    reads `nbits: 4.5` as 4 and `enable_per_channel_scale: "no"` as true), let coremltools parse
    and validate its own config type, then translate it."""
    from milcompress import _coremltools

    declared = _coremltools.op_config_field_types(type_name)
    for name, item in value.items():
        if name in declared and not _matches_type(item, declared[name]):
            raise _fail(f"{field}.{name}", f"must be {_type_words(declared[name])}, got {item!r}")
    try:
        op_config = _coremltools.op_config_from_dict(type_name, value)
    except Exception as error:  # coremltools raises ValueError or cattrs' errors
        raise ConfigError(f"{field}: coremltools rejects this {type_name}: {_cattrs_message(error)}", field=field) from error
    return translate_coremltools_op_config(field, op_config)


def _matches_type(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML/JSON is of the declared type without conversion. Types a
    file cannot spell (enums, classes) are left to coremltools."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_matches_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches_type(v, a) for v, a in zip(value, args))
        return all(_matches_type(v, args[0]) for v in value) if args else True
    return True


def _type_words(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(_type_words(arg) for arg in args)
    if origin in (list, tuple):
        return "a list of integers" if args and args[0] is int else "a list"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _cattrs_message(error: Exception) -> str:
    parts = [str(error)]
    for sub in getattr(error, "exceptions", ()) or ():
        parts.append(_cattrs_message(sub))
    return "; ".join(p for p in parts if p)
