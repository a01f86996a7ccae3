"""Palettization: each weight (or vector of weights) becomes an index into a small table.

`palettize(weight, config, channel_axis=...)` returns `LutParams`:
- `indices` (uint8) with the weight's shape, except that the channel axis is divided by the
  vector length (`cluster_dim`);
- `lut` [groups, 2**nbits, cluster_dim] in the weight's dtype: group g serves channels
  [g * group_size, (g + 1) * group_size) of the channel axis, and a vector entry fills
  `cluster_dim` consecutive channels;
- `scale`, optional: one value per channel along the channel axis (shape 1 elsewhere); the dense
  value is then table value * scale, computed in the weight's dtype.

Every weight is mapped to its nearest table entry (ties to the lower index), so no weight is
farther from its entry than from any other. `kmeans` tables minimise squared error (see
`ops/kmeans.py`); `uniform` tables are evenly spaced, cover the range and hold 0 exactly; `unique`
tables hold the tensor's own values (lossless); `custom` tables come from the user's function.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from milcompress.config import PALETTE_NBITS, PalettizeConfig
from milcompress.errors import ConfigError, NotCompressible
from milcompress.ops._arrays import check_weight, largest_divisor_at_most, normalize_axis
from milcompress.ops.kmeans import assign_nearest, kmeans_1d, kmeans_vectors, nearest_vectors
from milcompress.ops.packing import packed_size


@dataclass(frozen=True, eq=False)
class LutParams:
    """A palettized tensor; see the module docstring for the layout."""

    indices: np.ndarray
    lut: np.ndarray
    axis: int
    shape: Tuple[int, ...]
    scale: Optional[np.ndarray] = None

    @property
    def dtype(self) -> np.dtype:
        return self.lut.dtype

    @property
    def nbits(self) -> int:
        return int(self.lut.shape[1]).bit_length() - 1

    @property
    def cluster_dim(self) -> int:
        return int(self.lut.shape[2])

    @property
    def groups(self) -> int:
        return int(self.lut.shape[0])

    @property
    def group_size(self) -> int:
        """Channels per table along the channel axis."""
        return self.shape[self.axis] // self.groups

    @property
    def nbytes(self) -> int:
        """Payload bytes: packed indices, the tables, and the scales."""
        scale = 0 if self.scale is None else self.scale.nbytes
        return packed_size(self.indices.size, self.nbits) + self.lut.nbytes + scale

    def decompress(self) -> np.ndarray:
        rows = self.indices.shape[self.axis]  # channels / cluster_dim
        index = np.moveaxis(self.indices, self.axis, 0).reshape(rows, -1)
        table_of_row = np.arange(rows) // (rows // self.groups)
        values = self.lut[table_of_row[:, None], index]  # [rows, rest, cluster_dim]
        moved_shape = (self.shape[self.axis],) + tuple(np.delete(self.shape, self.axis))
        dense = np.moveaxis(np.swapaxes(values, 1, 2).reshape(moved_shape), 0, self.axis)
        if self.scale is not None:
            dense = dense * self.scale
        return dense


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
    channels = weight.shape[axis]
    vector = config.cluster_dim
    if channels % vector:
        raise NotCompressible(f"{channels} channels on axis {axis} are not divisible by cluster_dim {vector}")
    group_size = channels if config.granularity == "per_tensor" else config.group_size
    if channels % group_size:
        hint = _largest_group(channels, group_size, vector)
        raise NotCompressible(
            f"{channels} channels on axis {axis} are not divisible by group_size {group_size}"
            f" (the largest group size that divides them is {hint})"
        )
    scale = _channel_scale(weight, axis) if config.enable_per_channel_scale else None
    # Cluster the weights as stored (float16 weights take k-means' exact fast path), or scaled.
    target = weight if scale is None else weight.astype(np.float64) / scale.astype(np.float64)
    groups = channels // group_size
    grouped = _to_groups(target, axis, groups, vector)  # [G, n, cluster_dim]
    weights = None if importance is None else _to_groups(np.broadcast_to(importance, weight.shape), axis, groups, vector).mean(-1)
    if config.mode == "custom":
        moved = np.moveaxis(target, axis, 0)
        group_shape = (group_size,) + moved.shape[1:]
        lut, index = _custom(grouped, config, weight.dtype, group_shape)
    else:
        lut, index = _MODES[config.mode](grouped, config, weight.dtype, weights)
    return LutParams(
        indices=_from_groups(index, weight.shape, axis, vector),
        lut=lut,
        axis=axis,
        shape=weight.shape,
        scale=scale,
    )


def _largest_group(channels: int, limit: int, vector: int) -> int:
    best = largest_divisor_at_most(channels, limit)
    while best % vector:
        best = largest_divisor_at_most(channels, best - 1)
    return best


def _channel_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    """Largest magnitude of each channel along `axis` (1 for an all-zero channel), in the weight's dtype.

    The scale is rounded up where the dtype's rounding would leave a channel's largest value
    above 1 after division.
    """
    others = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.abs(weight.astype(np.float64)).max(axis=others, keepdims=True)
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


def _from_groups(index: np.ndarray, shape: Tuple[int, ...], axis: int, vector: int) -> np.ndarray:
    """Inverse of `_to_groups` for one index per vector: the indices tensor (uint8)."""
    moved_shape = list(np.moveaxis(np.empty(shape, dtype=np.bool_), axis, 0).shape)
    moved_shape[0] //= vector
    return np.moveaxis(index.astype(np.uint8).reshape(moved_shape), 0, axis)


def _finish_scalar(values: np.ndarray, tables: np.ndarray, dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
    """Round sorted float64 tables to `dtype` and map every value to its nearest entry."""
    lut = np.sort(tables.astype(dtype), axis=1)
    return lut[..., None], assign_nearest(values, lut)


def _kmeans(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray]):
    k = 1 << config.nbits
    if values.shape[-1] == 1:
        scalars = values[..., 0]
        return _finish_scalar(scalars, kmeans_1d(scalars, k, weights), dtype)
    lut = kmeans_vectors(values, k, weights).astype(dtype)
    return lut, nearest_vectors(values, lut)


def _uniform(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray]):
    """Evenly spaced table (step * (i - z)) covering each group's range, with 0 = entry z."""
    k = 1 << config.nbits
    scalars = values[..., 0]
    counted = scalars if weights is None else np.where(weights > 0, scalars, 0.0)
    low = np.minimum(counted.min(1), 0.0)[:, None]
    high = np.maximum(counted.max(1), 0.0)[:, None]
    zero = np.arange(k)[None, :]  # candidate position of 0 in the table
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(zero < k - 1, high / (k - 1 - zero), np.where(high > 0, np.inf, 0.0))
        down = np.where(zero > 0, -low / zero, np.where(low < 0, np.inf, 0.0))
    step = np.maximum(up, down)
    z = step.argmin(1)
    step = step[np.arange(len(z)), z]
    # Two entries cannot cover a range on both sides of 0: keep 0 and the larger side.
    two_sided = ~np.isfinite(step)
    z = np.where(two_sided, np.where(high[:, 0] >= -low[:, 0], 0, 1), z)
    step = np.where(two_sided, np.maximum(high[:, 0], -low[:, 0]), step)
    tables = (np.arange(k)[None, :] - z[:, None]) * step[:, None]
    return _finish_scalar(scalars, tables, dtype)


def _unique(values: np.ndarray, config: PalettizeConfig, dtype: np.dtype, weights: Optional[np.ndarray]):
    """Each group's distinct values (or vectors) as its table: lossless."""
    exact = values.astype(dtype)
    groups, _, vector = exact.shape
    distinct = []
    for g in range(groups):  # one np.unique per group; unique mode does no clustering
        rows = exact[g] if weights is None or not (weights[g] > 0).any() else exact[g][weights[g] > 0]
        distinct.append(np.unique(rows, axis=0))
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
