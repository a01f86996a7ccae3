"""Palettization: each weight (or vector of weights) becomes an index into a small table.

`palettize(weight, config, channel_axis=...)` returns `LutParams`, in the layout of Core ML's
iOS18 `constexpr_lut_to_dense`:
- `indices` (uint8) with the weight's shape, except that the vector axis is divided by the vector
  length (`cluster_dim`);
- `lut` of rank + 2 dimensions [b_0, ..., b_{r-1}, 2**nbits, cluster_dim] in the weight's dtype:
  b_i tables along axis i, each serving indices.shape[i] / b_i consecutive positions (palettize
  puts groups of `group_size` channels along one channel axis); a vector entry fills
  `cluster_dim` consecutive positions along `vector_axis`;
- `scale`, optional: per-block scales of the weight's rank, by which the looked-up values are
  multiplied, in the weight's dtype (palettize's `enable_per_channel_scale` makes coremltools'
  layout: one scale per position across the channel axis).

Every weight is mapped to its nearest table entry (ties to the lower index), so no weight is
farther from its entry than from any other. `kmeans` tables minimise squared error (see
`ops/kmeans.py`); `uniform` tables are evenly spaced, reach every weight within half a step and
hold 0 exactly; `unique`
tables hold the tensor's own values (lossless); `custom` tables come from the user's function.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from milcompress.config import PALETTE_NBITS, PalettizeConfig
from milcompress.errors import ConfigError, NotCompressible
from milcompress.ops._arrays import check_weight, expand_blocks, normalize_axis, row_slices, sortable, unique_values
from milcompress.ops.kmeans import assign_nearest, kmeans_1d, kmeans_vectors, nearest_vectors, outlier_factor, outlier_scale, table_errors
from milcompress.ops.packing import packed_size


@dataclass(frozen=True, eq=False)
class LutParams:
    """A palettized tensor; see the module docstring for the layout."""

    indices: np.ndarray
    lut: np.ndarray
    vector_axis: Optional[int] = None
    scale: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.lut.ndim != self.indices.ndim + 2:
            raise ValueError(f"lut must have rank {self.indices.ndim + 2}, got shape {self.lut.shape}")
        if self.cluster_dim > 1 and self.vector_axis is None:
            raise ValueError("vector palettization (cluster_dim > 1) needs a vector_axis")

    @property
    def shape(self) -> Tuple[int, ...]:
        shape = list(self.indices.shape)
        if self.cluster_dim > 1:
            shape[self.vector_axis] *= self.cluster_dim
        return tuple(shape)

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    @property
    def nbits(self) -> int:
        return int(self.lut.shape[-2]).bit_length() - 1

    @property
    def cluster_dim(self) -> int:
        return int(self.lut.shape[-1])

    @property
    def tables(self) -> int:
        return int(np.prod(self.lut.shape[:-2]))

    @property
    def nbytes(self) -> int:
        """Payload bytes: packed indices, the tables, and the scales."""
        scale = 0 if self.scale is None else self.scale.nbytes
        return packed_size(self.indices.size, self.nbits) + self.lut.nbytes + scale

    def table_of_each_index(self) -> np.ndarray:
        """[*indices.shape, 2**nbits, cluster_dim]: the table each index reads from."""
        return self.lut[table_index(self.indices.shape, self.lut.shape[:-2])]

    def decompress(self) -> np.ndarray:
        # Slice by slice: the gather needs its indices as intp, 8 bytes each.
        blocks = table_index(self.indices.shape, self.lut.shape[:-2])
        values = np.empty(self.indices.shape + (self.cluster_dim,), dtype=self.lut.dtype)
        for rows in row_slices(self.indices.shape):
            values[rows] = self.lut[(blocks[0][rows],) + blocks[1:] + (self.indices[rows].astype(np.intp),)]
        if self.cluster_dim > 1:
            values = np.moveaxis(values, -1, self.vector_axis + 1).reshape(self.shape)
        else:
            values = values[..., 0]
        if self.scale is not None:
            values = values * expand_blocks(self.scale, self.shape)
        return values


def table_index(shape: Tuple[int, ...], blocks: Tuple[int, ...]) -> Tuple[np.ndarray, ...]:
    """Per axis, the table (block) number of each position, shaped to broadcast over `shape`."""
    rank = len(shape)
    index = []
    for axis, (size, count) in enumerate(zip(shape, blocks)):
        along = np.arange(size) // (size // count)
        index.append(along.reshape((1,) * axis + (size,) + (1,) * (rank - axis - 1)))
    return tuple(index)


def palettize(
    weight: np.ndarray,
    config: PalettizeConfig,
    *,
    channel_axis: int = 0,
    importance: Optional[np.ndarray] = None,
) -> LutParams:
    """Palettize `weight` as `config` says.

    `channel_axis` is the output-channel axis of the consuming op; `config.channel_axis`, when
    set, overrides it. `importance` (same shape, >= 0) weights each element's squared error in
    k-means; zero-importance elements (pruned ones, in joint compression) do not shape the table.
    """
    weight = check_weight(weight)
    axis = normalize_axis(channel_axis if config.channel_axis is None else config.channel_axis, weight.ndim, "channel_axis")
    if config.granularity == "auto":
        config = _smallest_lossless_layout(weight, config, axis, importance)
    channels = weight.shape[axis]
    vector = config.cluster_dim
    if channels % vector:
        raise NotCompressible(f"{channels} channels on axis {axis} are not divisible by cluster_dim {vector}")
    group_size = channels if config.granularity == "per_tensor" else config.group_size
    if channels % group_size:
        hint = largest_group_size(channels, group_size, vector)
        raise NotCompressible(
            f"{channels} channels on axis {axis} are not divisible by group_size {group_size}"
            + (f" (the largest group size that divides them is {hint})" if hint else "")
        )
    scale = _channel_scale(weight, axis) if config.enable_per_channel_scale else None
    # Cluster the weights as stored (float16 weights take k-means' exact fast path), or scaled.
    target = weight if scale is None else weight.astype(np.float64) / scale.astype(np.float64)
    groups = channels // group_size
    grouped = _to_groups(target, axis, groups, vector)  # [G, n, cluster_dim]
    weights = None if importance is None else _group_weights(importance, weight.shape, axis, groups, vector)
    if config.mode == "custom":
        moved = np.moveaxis(target, axis, 0)
        group_shape = (group_size,) + moved.shape[1:]
        lut, index = _custom(grouped, config, weight.dtype, group_shape)
    elif config.mode == "kmeans" and vector == 1 and config.outlier_aware:
        # The outlier scale of the values as they are (weights per input channel, not per element):
        # the same number as of the grouped copy, at a fraction of the cost.
        lut, index = _kmeans(grouped, config, weight.dtype, weights, outliers=outlier_scale(target, importance))
    else:
        lut, index = _MODES[config.mode](grouped, config, weight.dtype, weights)
    full_lut_shape = [1] * weight.ndim + list(lut.shape[1:])
    full_lut_shape[axis] = groups
    return LutParams(
        indices=_from_groups(index, weight.shape, axis, vector),
        lut=lut.reshape(full_lut_shape),
        vector_axis=axis if vector > 1 else None,
        scale=scale,
    )


MIN_SAMPLE_GROUPS = 32  # the fewest groups `estimate_palettes` measures a sampled palette on


@dataclass(frozen=True, eq=False)
class PaletteEstimate:
    """What `palettize` would store for a k-means config, and its error, without building it.

    `error` is the importance-weighted noise-to-signal ratio sum(w (W - W')^2) / sum(w W^2) of the
    whole weight (for outlier-aware configs, w includes their `kmeans.outlier_factor`, as
    `ops.metrics.noise_to_signal` with `outlier_scale` counts it), or of `sampled` evenly spaced
    groups of it: each group's table depends on its own weights (and the whole's mean square)
    only, so their error estimates the whole's. `nbytes` is exact either way. The
    layout attributes (`nbits`, `tables`, `cluster_dim`, `scale`) are those of the `LutParams`
    it stands for, so `lowering.required_target` reads either.

    It keeps the tables it measured (`lut`, [measured groups, 2**nbits] in the weight's dtype,
    of the groups `groups`) and the outlier scale they were clustered with, so
    `palettize_estimated` builds exactly the palette whose error was weighed, clustering only
    the groups a sampled estimate left out.
    """

    nbits: int
    tables: int
    nbytes: int
    error: float
    sampled: Optional[int] = None  # groups the error was measured on; None: every group
    cluster_dim: int = 1
    scale: None = None
    lut: Optional[np.ndarray] = None
    groups: Optional[np.ndarray] = None  # the measured groups' numbers, where sampled
    outlier_scale: Optional[float] = None


def estimate_layout(config: PalettizeConfig) -> Optional[Tuple[str, Optional[int], Optional[int], bool]]:
    """The layout key (granularity, group size, channel axis, objective) under which `estimate_palettes`
    takes `config` together with others of the same key; None for configs it does not take
    (other modes, vectors, channel scales, "auto" granularity)."""
    if config.mode != "kmeans" or config.cluster_dim != 1 or config.enable_per_channel_scale:
        return None
    if config.granularity == "per_tensor":
        return ("per_tensor", None, config.channel_axis, config.outlier_aware)
    if config.granularity == "per_grouped_channel":
        return ("per_grouped_channel", config.group_size, config.channel_axis, config.outlier_aware)
    return None


def estimate_palettes(
    weight: np.ndarray,
    configs: Sequence[PalettizeConfig],
    *,
    channel_axis: int = 0,
    importance: Optional[np.ndarray] = None,
    sample_values: Optional[int] = None,
) -> List[PaletteEstimate]:
    """`PaletteEstimate`s of palettes of `weight` whose configs share one `estimate_layout` (any
    numbers of bits), at the estimate effort of `kmeans.table_errors`: one histogram of each group
    serves every size, and the errors come from it, not from indices and a decompressed copy.
    With `sample_values`, grouped palettes of more values than that are measured on evenly
    spaced groups (the first included) that hold about that many values, and at least
    `MIN_SAMPLE_GROUPS` groups.

    For the size allocation, which needs every candidate's size and error but keeps one form.
    """
    configs = list(configs)
    layouts = {estimate_layout(c) for c in configs}
    if len(layouts) != 1 or None in layouts:
        raise ValueError("estimate_palettes takes k-means scalar palettes without channel scales that share one layout")
    config = configs[0]
    weight = check_weight(weight)
    axis = normalize_axis(channel_axis if config.channel_axis is None else config.channel_axis, weight.ndim, "channel_axis")
    channels = weight.shape[axis]
    size = channels if config.granularity == "per_tensor" else config.group_size
    if channels % size:
        raise NotCompressible(f"{channels} channels on axis {axis} are not divisible by group_size {size}")
    total, elements = channels // size, weight.size
    if importance is not None:
        importance = np.broadcast_to(importance, weight.shape)
    scale = outlier_scale(weight, importance) if config.outlier_aware else None  # of the whole, before sampling
    count = total if sample_values is None else min(total, max(MIN_SAMPLE_GROUPS, sample_values // (elements // total)))
    sampled = count < total
    if sampled:
        measured = np.arange(count) * total // count
        rows = (measured[:, None] * size + np.arange(size)).reshape(-1)
        weight = np.take(weight, rows, axis=axis)
        importance = None if importance is None else np.take(importance, rows, axis=axis)
    values = _to_groups(weight, axis, count, 1)[..., 0]
    weights = None if importance is None else _group_weights(importance, weight.shape, axis, count, 1)
    errors, energy, tables = table_errors(values, [1 << c.nbits for c in configs], weights, dtype=weight.dtype, outlier_scale=scale, with_tables=True)
    signal = float(energy.sum())
    result = []
    for c, error, lut in zip(configs, errors.sum(1), tables):
        ratio = float(error) / signal if signal > 0 else (0.0 if error == 0 else math.inf)
        nbytes = packed_size(elements, c.nbits) + total * (1 << c.nbits) * weight.itemsize
        result.append(PaletteEstimate(c.nbits, total, nbytes, ratio, count if sampled else None, lut=lut,
                                      groups=measured if sampled else None, outlier_scale=scale))
    return result


def palettize_estimated(
    weight: np.ndarray,
    config: PalettizeConfig,
    estimate: PaletteEstimate,
    *,
    channel_axis: int = 0,
    importance: Optional[np.ndarray] = None,
) -> LutParams:
    """The palette `estimate` stands for (`estimate_palettes` of the same weight, config, axis and
    importance): its tables, and for the groups a sampled estimate left out tables clustered the
    same way (the estimate effort, the same outlier scale); every weight mapped to its nearest
    entry. Its error is the estimate's where nothing was sampled: the size allocation writes the
    form it weighed, and clusters no group twice."""
    if estimate_layout(config) is None or estimate.lut is None:
        raise ValueError("palettize_estimated takes an estimate_palettes result for a k-means scalar palette config")
    weight = check_weight(weight)
    axis = normalize_axis(channel_axis if config.channel_axis is None else config.channel_axis, weight.ndim, "channel_axis")
    groups = estimate.tables
    values = _to_groups(weight, axis, groups, 1)[..., 0]
    lut = np.empty((groups, 1 << estimate.nbits), dtype=weight.dtype)
    if estimate.groups is None:
        lut[:] = estimate.lut
    else:
        rest = np.setdiff1d(np.arange(groups), estimate.groups)
        lut[estimate.groups] = estimate.lut
        if rest.size:
            weights = None if importance is None else _group_weights(importance, weight.shape, axis, groups, 1)[rest]
            _, _, (found,) = table_errors(values[rest], [lut.shape[1]], weights, dtype=weight.dtype, outlier_scale=estimate.outlier_scale, with_tables=True)
            lut[rest] = found
    index = assign_nearest(values, lut)
    full_lut_shape = [1] * weight.ndim + [lut.shape[1], 1]
    full_lut_shape[axis] = groups
    return LutParams(indices=_from_groups(index, weight.shape, axis, 1), lut=lut.reshape(full_lut_shape))


def _smallest_lossless_layout(weight: np.ndarray, config: PalettizeConfig, axis: int, importance) -> PalettizeConfig:
    """Unique palettization with the group size (one table, or one per group of channels) that
    stores the weight in the fewest bytes; NotCompressible if no layout holds it losslessly."""
    import dataclasses

    channels, vector = weight.shape[axis], config.cluster_dim
    limit = 1 << (config.nbits or PALETTE_NBITS[-1])
    values = np.moveaxis(weight, axis, 0).reshape(channels, -1)
    best = None
    for group in [g for g in range(channels, 0, -1) if channels % g == 0 and g % vector == 0]:
        rows = np.sort(sortable(values).reshape(channels // group, -1), axis=1)
        distinct = int((np.diff(rows, axis=1) != 0).sum(1).max()) + 1 if rows.shape[1] > 1 else 1
        if vector > 1:
            distinct = max(len(unique_values(_to_groups(weight, axis, channels // group, vector)[g], axis=0)) for g in range(channels // group))
        if distinct > limit:
            continue
        nbits = config.nbits or next(b for b in PALETTE_NBITS if 1 << b >= distinct)
        size = packed_size(weight.size // vector, nbits) + (channels // group) * (1 << nbits) * vector * weight.itemsize
        if best is None or size < best[0]:
            best = (size, group)
        if nbits == PALETTE_NBITS[0]:
            break
    if best is None:
        raise NotCompressible(f"no group of channels along axis {axis} has at most {limit} distinct values")
    group = best[1]
    if group == channels:
        return dataclasses.replace(config, granularity="per_tensor")
    return dataclasses.replace(config, granularity="per_grouped_channel", group_size=group, channel_axis=axis)


def largest_group_size(channels: int, limit: int, vector: int = 1) -> Optional[int]:
    """The largest group size <= `limit` that divides `channels` and is a multiple of `vector`."""
    for size in range(min(limit, channels), 0, -1):
        if channels % size == 0 and size % vector == 0:
            return size
    return None


def _channel_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    """coremltools' per-channel scale: the largest magnitude across the channel axis at every other
    position (shape 1 on `axis`), 1 where that is zero, in the weight's dtype; rounded up where the
    dtype's rounding would leave a value above 1 after division. For a linear weight [out, in] this
    is one scale per input column, shared by the output channels that the tables serve."""
    peak = np.abs(weight.astype(np.float64)).max(axis=axis, keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    scale = peak.astype(weight.dtype)
    low = scale.astype(np.float64) < peak
    return np.where(low, np.nextafter(scale, np.array(np.inf, dtype=weight.dtype)), scale)


def _to_groups(x: np.ndarray, axis: int, groups: int, vector: int) -> np.ndarray:
    """[..., C on axis, ...] -> [groups, n, vector]: each group's vectors, components along the axis."""
    moved = np.moveaxis(x, axis, 0)
    channels = moved.shape[0]
    rest = int(np.prod(moved.shape[1:], dtype=np.int64))
    rows = moved.reshape(groups, channels // groups // vector, vector, rest)
    return np.swapaxes(rows, 2, 3).reshape(groups, -1, vector)


def _group_weights(importance: np.ndarray, shape: Tuple[int, ...], axis: int, groups: int, vector: int) -> np.ndarray:
    """`importance` (broadcasting to `shape`) in the layout of `_to_groups`: [groups, n] float32,
    a vector's weight the mean of its components'. In float32 from the start: an importance
    broadcast from one value per input channel was otherwise expanded to the weight's size in
    float64 two or three times over (1.3 GB of work arrays for a 43M-element embedding's
    per-tensor palette)."""
    grouped = _to_groups(np.broadcast_to(importance, shape).astype(np.float32, order="C"), axis, groups, vector)
    return grouped[..., 0] if vector == 1 else grouped.mean(-1, dtype=np.float64).astype(np.float32)


def _from_groups(index: np.ndarray, shape: Tuple[int, ...], axis: int, vector: int) -> np.ndarray:
    """Inverse of `_to_groups` for one index per vector: the indices tensor (uint8)."""
    moved_shape = list(np.moveaxis(np.empty(shape, dtype=np.bool_), axis, 0).shape)
    moved_shape[0] //= vector
    return np.moveaxis(index.astype(np.uint8, copy=False).reshape(moved_shape), 0, axis)


def _finish_scalar(values: np.ndarray, tables: np.ndarray, dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
    """Round sorted float64 tables to `dtype` and map every value to its nearest entry."""
    lut = np.sort(tables, axis=1).astype(dtype)  # rounding keeps the order
    return lut[..., None], assign_nearest(values, lut)


def _kmeans(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray], outliers: Optional[float] = None):
    """k-means tables, outlier-aware unless the config says not (`kmeans.kmeans_1d`): a value
    beyond `OUTLIER_RMS` times the whole tensor's RMS (a vector: its norm against the RMS norm)
    weighs more, so one scale decides what an outlier is in every group (`outliers`: that scale,
    where the caller has it)."""
    k = 1 << config.nbits
    scale = None
    if config.outlier_aware:  # the mean square of a value (a vector: the mean squared norm)
        scale = outliers if outliers is not None else outlier_scale(values, None if weights is None else weights[..., None]) * values.shape[-1]
    if values.shape[-1] == 1:
        scalars = values[..., 0]
        return _finish_scalar(scalars, kmeans_1d(scalars, k, weights, outlier_scale=scale), dtype)
    if scale is not None:
        norm = (values.astype(np.float64) ** 2).sum(-1)
        weights = (1.0 if weights is None else weights) * outlier_factor(np.sqrt(norm), scale)
    lut = kmeans_vectors(values, k, weights).astype(dtype)
    return lut, nearest_vectors(values, lut)


def _uniform(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray]):
    """Evenly spaced table step * (i - z), i = 0..K-1, holding 0 exactly (entry z).

    Among the K positions z for 0, the one allowing the finest step is chosen; the step lets the
    outermost entries sit up to half a step inside the range, so every weight is within half a step
    of an entry (as with coremltools' [min, max] table, whose step this matches on symmetric ranges).
    """
    k = 1 << config.nbits
    scalars = values[..., 0]
    counted = scalars if weights is None else np.where(weights > 0, scalars, 0.0)
    low = np.minimum(counted.min(1), 0.0)[:, None]
    high = np.maximum(counted.max(1), 0.0)[:, None]
    zero = np.arange(k)[None, :]  # candidate position of 0 in the table
    step = np.maximum(high / (k - 1 - zero + 0.5), -low / (zero + 0.5))
    z = step.argmin(1)
    step = step[np.arange(len(z)), z]
    tables = (np.arange(k)[None, :] - z[:, None]) * step[:, None]
    return _finish_scalar(scalars, tables, dtype)


def _unique(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray]):
    """Each group's distinct values (or vectors) as its table: lossless."""
    exact = values.astype(dtype)
    groups, _, vector = exact.shape
    distinct = []
    for g in range(groups):  # one np.unique per group; unique mode does no clustering
        rows = exact[g] if weights is None or not (weights[g] > 0).any() else exact[g][weights[g] > 0]
        distinct.append(unique_values(rows, axis=0))
    most = max(len(d) for d in distinct)
    nbits = config.nbits
    if nbits is None:
        fitting = [b for b in PALETTE_NBITS if 1 << b >= most]
        if not fitting:
            raise NotCompressible(f"{most} distinct values in a group; unique palettization holds at most 256")
        nbits = fitting[0]
    elif most > 1 << nbits:
        raise NotCompressible(f"{most} distinct values in a group do not fit a {nbits}-bit table")
    k = 1 << nbits
    lut = np.empty((groups, k, vector), dtype=dtype)
    for g, d in enumerate(distinct):
        lut[g, : len(d)] = d
        lut[g, len(d):] = d[-1]
    if vector == 1:
        return lut, assign_nearest(exact[..., 0], lut[..., 0])
    return lut, nearest_vectors(exact, lut)


def _custom(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, group_shape: Tuple[int, ...]):
    """Tables from `config.lut_function`, called once per group with that group's weights.

    As in coremltools, the function receives a group's weights with the channel axis first and
    returns a table and one index per weight (per vector when cluster_dim > 1), in row-major order.
    """
    groups, n, vector = values.shape
    tables, indices = [], []
    for g in range(groups):
        rows = np.swapaxes(values[g].reshape(group_shape[0] // vector, -1, vector), 1, 2)
        lut, index = config.lut_function(rows.reshape(group_shape).astype(dtype))
        lut = np.asarray(lut, dtype=np.float64).reshape(-1, vector)
        index = np.asarray(index).reshape(-1)
        if index.size != n:
            raise ConfigError(f"lut_function returned {index.size} indices for {n} weights", field="lut_function")
        if not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= len(lut):
            raise ConfigError(f"lut_function indices must be integers in [0, {len(lut) - 1}]", field="lut_function")
        if not np.isfinite(lut).all():
            raise ConfigError("lut_function returned a table with non-finite values", field="lut_function")
        tables.append(lut)
        indices.append(index)
    size = max(len(t) for t in tables)
    fitting = [b for b in PALETTE_NBITS if 1 << b >= size]
    if not fitting:
        raise ConfigError(f"lut_function returned a table of {size} entries; at most 256 are allowed", field="lut_function")
    k = 1 << fitting[0]
    lut = np.empty((groups, k, vector), dtype=dtype)
    for g, t in enumerate(tables):
        lut[g, : len(t)] = t
        lut[g, len(t):] = t[-1]
    return lut, np.stack(indices)


_MODES = {"kmeans": _kmeans, "uniform": _uniform, "unique": _unique}
