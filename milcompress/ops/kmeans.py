"""k-means for palettization: optimal or near-optimal 1-D clustering, and vector clustering.

Scalar (1-D) clustering of many groups at once, `kmeans_1d(values[G, n], k)`:

1. Histogram. Groups of up to 65,536 values are sorted and binned by exact value (float16 groups
   sort their 16-bit codes, which is cheap). Larger groups are binned by float16 code (at most
   65,536 slots per group): exactly for float16, by float16 rounding for float32 (bins a float16
   ulp wide). Each bin keeps the exact weighted count, sum, and centred sum and sum of squares of
   its values. All later work is on sorted bins with prefix sums: the squared error of any run
   of bins costs O(1).
2. A clustering of sorted 1-D data is a set of k-1 cuts between bins. Small problems are solved
   exactly by dynamic programming over all cuts. Larger ones start from the exact DP over coarse
   "atoms" (runs of bins of equal weight or equal width; k <= 16) or, for larger k, from the
   better (after Lloyd) of a greedy divisive split (split the clusters whose best 2-split gains
   most, up to half of them a round) and cuts at equal steps of the cube root of the density
   (the high-resolution optimum's point density, near-optimal for smooth densities), run Lloyd
   iterations (each O(k log n) on sorted bins), then improve by sweeps of an exact DP over all cuts jointly, where
   each cut may move to a grid of positions between its neighbours, or by +-1, 2, 4, ... bins;
   a cut with no more positions between its neighbours than that may move to any of them.
   Each sweep makes the best joint move in that neighbourhood: the joint moves are what shift
   clusters between distant regions, which Lloyd iteration cannot. Greedy starts sweep on a
   coarse grid until no group improves, then everyone polishes on a fine grid. Groups whose cuts
   all have few positions between neighbours (many clusters on few bins) are swept in batches
   of that narrower width: a sweep costs the square of its width per cut.
3. Centroids are the weighted means of the clusters.

The histograms, tables and errors are batched over groups in numpy (padded arrays, no Python
loop over groups) in chunks whose work arrays hold at most `_CHUNK_ELEMENTS` elements each (this
bounds peak memory); the cut search of step 2 is compiled (`ops._kernels`, numba), one group at a
time. Deterministic, and computed in float64. On the distributions in tests/ops/test_kmeans.py the result is within
0.1% of the optimal squared error; problems small enough for the exact DP are solved optimally.

`table_errors(values[G, n], ks)` serves the size allocation: what tables of each size in `ks`
would cost, without building them. One histogram serves every k; the clustering runs at a lighter
effort (5 Lloyd iterations; k <= 16: one fine sweep; larger k: no coarse sweeps), and each rounded table's error is read off the histogram's prefix sums (a cluster's error
about its mean plus its weight times the entry's distance from that mean), not from a pass over
the values. On real models' weights within 0.3% of the thorough tables' error on average.

Vector clustering (`kmeans_vectors`) is Lloyd iteration from seeded greedy k-means++ starts.

numpy and compiled kernels (`ops._kernels`): this module never sees a MIL program.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from milcompress.ops._arrays import row_slices


_F16_MAX = 65504.0
_F16_CODES = 1 << 16
_CHUNK_ELEMENTS = 1 << 18  # bound on the elements of any padded per-chunk work array (1-D)
_VECTOR_CHUNK_ELEMENTS = 1 << 21  # the same for vector k-means


def _compiled():
    """The compiled kernels (`ops._kernels`), imported on first use: numba adds about 60 MB of
    memory and 120 MB of mapped library to a process, which linear quantization never needs."""
    from milcompress.ops import _kernels

    return _kernels


# ----------------------------------------------------------------------------------------------
# Order-preserving integer keys of float16 and float32 values.


def _ordered_key16(values: np.ndarray) -> np.ndarray:
    """Integer keys in [0, 65535] whose order is the order of the float16 `values`.

    Positive values set the sign bit; negative values flip every bit, reversing their order.
    """
    bits = np.ascontiguousarray(values, dtype=np.float16).view(np.int16)
    flip = (bits >> 15).view(np.uint16) | np.uint16(0x8000)
    return bits.view(np.uint16) ^ flip


def _key16_to_value(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.int32)
    bits = np.where(keys >= 0x8000, keys - 0x8000, 0x8000 | (0x7FFF - keys)).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


@functools.lru_cache(maxsize=1)
def _raw_code_of_key16() -> np.ndarray:
    """The float16 bit pattern whose `_ordered_key16` is each key 0..65535 (the inverse permutation)."""
    raw = np.arange(_F16_CODES, dtype=np.uint16)
    result = np.empty(_F16_CODES, dtype=np.int64)
    result[_ordered_key16(raw.view(np.float16))] = raw
    return result


def _code_counts(values: np.ndarray) -> np.ndarray:
    """How many of each row of the float16 `values` [G, n] hold each 16-bit pattern: [G, 65536]
    int64 (compiled: `ops._kernels.count_codes`)."""
    return _compiled().count_codes(values)


@functools.lru_cache(maxsize=1)
def _value_of_key16() -> np.ndarray:
    """The float16 value (as float64) of every 16-bit order key (`_ordered_key16`)."""
    return _key16_to_value(np.arange(_F16_CODES))


def _ordered_key32(values: np.ndarray) -> np.ndarray:
    """Integer keys whose order is the order of the float32 `values` (-0.0 sorts before +0.0)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits & 0x80000000, 0x7FFFFFFF - (bits & 0x7FFFFFFF), bits | 0x80000000)


def _round_down_f32(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value."""
    rounded = values.astype(np.float32)
    too_big = rounded.astype(np.float64) > values
    return np.where(too_big, np.nextafter(rounded, np.float32(-np.inf)), rounded)


def assign_nearest(values: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of each group's sorted table, for every value (ties go low).

    `values` [G, n] (float16 or float32 precision), `tables` [G, K] sorted ascending; uint8
    indices for tables of up to 256 entries (every palette), else int64. Exact: each value's
    float32 order key is compared with those of the midpoints between entries (rounded down to
    float32), in a compiled search (`ops._kernels`) that makes no work array. Long float16 rows
    look up every 16-bit pattern once and gather by pattern, which is cheaper still.
    """
    groups, size = tables.shape
    result = np.zeros(values.shape, dtype=np.uint8 if size <= 256 else np.int64)
    if size == 1 or values.size == 0:
        return result
    table = tables.astype(np.float64)
    mid_keys = _ordered_key32(_round_down_f32((table[:, :-1] + table[:, 1:]) / 2))  # x > mid  <=>  key(x) > key(mid)
    if values.dtype == np.float16 and values.shape[1] >= _F16_CODES and groups * _F16_CODES <= _CHUNK_ELEMENTS:
        # Long float16 rows: the nearest entry of every 16-bit pattern, then one gather by pattern
        # (ResNet50's per-tensor palettes: 0.15 -> 0.05 s, against 0.07 s of keys and a search of
        # the codes each row holds).
        patterns = np.broadcast_to(np.arange(_F16_CODES, dtype=np.uint16).view(np.float16), (groups, _F16_CODES))
        per_pattern = _compiled().assign_by_keys(patterns, mid_keys, _key32_of_float16(), np.empty(patterns.shape, result.dtype))
        raw = np.ascontiguousarray(values).view(np.uint16)
        return np.take(per_pattern[0], raw, out=result) if groups == 1 else per_pattern[np.arange(groups)[:, None], raw]
    return _compiled().assign_by_keys(values, mid_keys, _key32_of_float16(), result)


@functools.lru_cache(maxsize=1)
def _key32_of_float16() -> np.ndarray:
    """The float32 order key (`_ordered_key32`) of every float16 bit pattern: [65536] int64."""
    with np.errstate(invalid="ignore"):
        return _ordered_key32(np.arange(_F16_CODES, dtype=np.uint16).view(np.float16).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Histogram of sorted bins with prefix sums, per group, padded to the largest group.


@dataclass(frozen=True)
class _Bins:
    """Sorted bins of each group: prefix sums of weight `w`, sum `s`, centred sum `sc` and
    centred squares `qc` ([G, n + 1], index b = total over bins < b), and each bin's value.

    Groups with fewer than n bins repeat their totals, so a cut anywhere past a group's last bin
    means "the end".
    """

    w: np.ndarray
    s: np.ndarray
    sc: np.ndarray
    qc: np.ndarray
    value: np.ndarray  # [G, n] sorted representative value of each bin, padded with the last
    count: np.ndarray  # [G] bins in each group
    centre: np.ndarray  # [G] the value `sc` and `qc` are centred on (the group's weighted mean)

    @property
    def groups(self) -> int:
        return self.w.shape[0]

    @property
    def n(self) -> int:
        return self.w.shape[1] - 1

    def rows(self, part: slice) -> "_Bins":
        return _Bins(*(getattr(self, f.name)[part] for f in dataclasses.fields(self)))

    def gather(self, prefix: np.ndarray, index: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """prefix[g, index[g, ...]] for an index array of shape [G, ...], or for the groups `rows`."""
        flat = index.reshape(index.shape[0], -1)
        if rows is None:
            return np.take_along_axis(prefix, flat, axis=1).reshape(index.shape)
        return prefix[rows[:, None], flat].reshape(index.shape)

    def at(self, index: np.ndarray, rows: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The prefix sums (w, sc, qc) at positions `index` [G, ...] (of the groups `rows`)."""
        return tuple(self.gather(p, index, rows) for p in (self.w, self.sc, self.qc))

    def cost(self, start: np.ndarray, stop: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Weighted squared error of the cluster of bins [start, stop), per group.

        `start` and `stop` are [G, ...] index arrays that broadcast against each other; each is
        gathered once, so an outer product of candidate starts and stops costs two small gathers.
        """
        (w0, s0, q0), (w1, s1, q1) = self.at(start, rows), self.at(stop, rows)
        return _squared_error(w1 - w0, s1 - s0, q1 - q0)

    def total_cost(self, cuts: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        return self.cost(cuts[:, :-1], cuts[:, 1:], rows).sum(1)

    @functools.cached_property
    def _value_keys(self) -> np.ndarray:
        """The bin values' float32 order keys, row g shifted by g << 33 so all rows search as one."""
        return (_ordered_key32(self.value) + (np.arange(self.groups, dtype=np.int64)[:, None] << 33)).reshape(-1)

    def nearest_cuts(self, table: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Cuts [G, K + 1] that give every bin the nearest entry of its group's sorted `table`
        [G, K] (of the groups `rows`), ties low (as `assign_nearest`): a value at or below the
        float32-rounded-down midpoint between two entries takes the lower. O(K log n) per group."""
        n = self.n
        row = (np.arange(self.groups, dtype=np.int64) if rows is None else rows)[:, None]
        mids = _round_down_f32((table[:, :-1] + table[:, 1:]) / 2)
        inner = np.searchsorted(self._value_keys, (_ordered_key32(mids) + (row << 33)).reshape(-1), side="right")
        inner = inner.reshape(len(row), -1) - row * n
        return np.concatenate([np.zeros((len(row), 1), np.int64), inner, np.full((len(row), 1), n)], axis=1)

    def outlier_aware(self, scale) -> "_Bins":
        """These bins with every value's weight multiplied by `outlier_factor(x, scale)` (`scale`
        > 0, a number or one per group): the objective of outlier-aware k-means (`kmeans_1d`).

        A bin's values share one float16 code, so the factor is taken at the bin's mean; exact
        for float16 values and for groups binned by exact value."""
        dw, ds, dsc, dqc = (np.diff(p, axis=1) for p in (self.w, self.s, self.sc, self.qc))
        mean = np.where(dw > 0, ds / np.where(dw > 0, dw, 1.0), self.value)
        factor = outlier_factor(mean, np.reshape(np.asarray(scale, dtype=np.float64), (-1, 1)))
        w = dw * factor
        total = w.sum(1, keepdims=True)
        centre = (ds * factor).sum(1, keepdims=True) / np.where(total > 0, total, 1.0)
        shift = self.centre[:, None] - centre  # x - centre = (x - old centre) + shift
        stats = (w, ds * factor, factor * (dsc + dw * shift), factor * (dqc + 2 * shift * dsc + dw * shift * shift))
        return _Bins(*(_prefix(x) for x in stats), self.value, self.count, centre[:, 0])

    def centroids(self, cuts: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Weighted mean of each cluster (of the groups `rows`); an empty cluster copies its
        nearest non-empty neighbour."""
        w = np.diff(self.gather(self.w, cuts, rows), axis=1)
        s = np.diff(self.gather(self.s, cuts, rows), axis=1)
        if (w > 0).all():
            return s / w
        return _fill_empty(np.where(w > 0, s / np.where(w > 0, w, 1.0), np.nan))


def _squared_error(w: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Squared error about the mean from weight, centred sum and centred sum of squares."""
    return np.maximum(np.where(w > 0, q - s * (s / np.where(w > 0, w, 1.0)), 0.0), 0.0)


_SORTED_BINS_MAX = 1 << 16  # groups up to this size are sorted and binned by exact value


def _bins_by_sort(values: np.ndarray) -> bool:
    return values.shape[-1] <= _SORTED_BINS_MAX


def _histogram(values: np.ndarray, weights: Optional[np.ndarray], scale: Optional[np.ndarray] = None) -> _Bins:
    """Bin each row of `values` [G, n]; weights default to 1.

    Rows of up to 65,536 values are sorted and binned by exact value (float16 rows sort their
    16-bit codes, which is cheap); larger rows are binned by float16 code over at most 65,536 slots
    per row: exactly for float16, and by float16 rounding for float32, with exact statistics of
    the values in each bin.

    `scale` (one per row): the bins of outlier-aware k-means (`_Bins.outlier_aware`); where every
    bin holds one value (no `weights`) the factor goes into the counts before the prefix sums.
    """
    if not _bins_by_sort(values):
        return _histogram_by_code(values, weights, scale)
    groups, n = values.shape
    if values.dtype == np.float16:
        keys = _ordered_key16(values)  # 16-bit codes: sorting them is cheap and exact
        if weights is None:  # binned in one compiled pass (the factor goes into the counts)
            return _Bins(*_compiled().sorted_bins(np.sort(keys, axis=1), _value_of_key16(), scale, OUTLIER_RMS))
    else:
        keys = values.astype(np.float32) + np.float32(0.0)  # -0.0 becomes +0.0: one bin
        if weights is None:
            keys = np.sort(keys, axis=1)
    if weights is not None:
        order = np.argsort(keys, axis=1)
        keys = np.take_along_axis(keys, order, axis=1)
    new_bin = np.ones((groups, n), dtype=bool)
    np.not_equal(keys[:, 1:], keys[:, :-1], out=new_bin[:, 1:])
    row_of, col_of = np.nonzero(new_bin)  # bin starts, row by row
    del new_bin
    bins_per_group = np.bincount(row_of, minlength=groups)
    n_bins = int(bins_per_group.max())
    first = np.cumsum(bins_per_group) - bins_per_group
    rank = np.arange(row_of.size) - first[row_of]
    starts = np.full((groups, n_bins + 1), n, dtype=np.int64)  # padded with the end: repeat totals
    starts[row_of, rank] = col_of
    present = np.arange(n_bins)[None, :] < bins_per_group[:, None]
    at_start = np.take_along_axis(keys, np.minimum(starts[:, :-1], n - 1), axis=1)
    value = _key16_to_value(at_start) if values.dtype == np.float16 else at_start.astype(np.float64)
    last = value[np.arange(groups), bins_per_group - 1][:, None]
    value = np.where(present, value, last)
    if weights is None:
        # Each bin holds one value: its statistics follow from its count.
        w = np.diff(starts, axis=1).astype(np.float64)
        if scale is not None:
            w *= outlier_factor(value, scale[:, None])
        total = w.sum(1, keepdims=True)
        mean = (w * value).sum(1, keepdims=True) / np.where(total > 0, total, 1.0)
        centred = value - mean
        stats = (w, w * value, w * centred, w * centred * centred)
        return _Bins(*(_prefix(s) for s in stats), value, bins_per_group, mean[:, 0])
    x = np.take_along_axis(values, order, axis=1).astype(np.float64)
    wt = np.take_along_axis(weights, order, axis=1).astype(np.float64)
    total = wt.sum(1, keepdims=True)
    mean = (wt * x).sum(1, keepdims=True) / np.where(total > 0, total, 1.0)
    centred = x - mean
    stats = (wt, wt * x, wt * centred, wt * centred * centred)
    # Prefix sums over the sorted values, read at the bin starts.
    bins = _Bins(*(np.take_along_axis(_prefix(s), starts, axis=1) for s in stats), value, bins_per_group, mean[:, 0])
    return bins if scale is None else bins.outlier_aware(scale)


def _prefix(stat: np.ndarray) -> np.ndarray:
    """[G, m] -> [G, m + 1]: totals over the first b entries."""
    result = np.zeros((stat.shape[0], stat.shape[1] + 1))
    np.cumsum(stat, axis=1, out=result[:, 1:])
    return result


def _histogram_by_code(values: np.ndarray, weights: Optional[np.ndarray], scale: Optional[np.ndarray] = None) -> _Bins:
    """Bins by float16 code (up to 65,536 slots per row), for rows too large to sort cheaply.

    The rows are read in slices of columns, so that no work array holds more than
    `_CHUNK_ELEMENTS` elements whatever the rows' length (a per-tensor table of a large weight)."""
    groups, n = values.shape
    exact = values.dtype == np.float16
    step = max(1, _CHUNK_ELEMENTS // groups)
    parts = [slice(first, first + step) for first in range(0, n, step)]

    def keys(part: slice) -> np.ndarray:
        chunk = values[:, part]
        return _ordered_key16(chunk if exact else np.clip(chunk, -_F16_MAX, _F16_MAX))

    if weights is None and exact:
        # One count of the raw 16-bit patterns, binned in key order in one compiled pass (the
        # factor goes into the counts).
        return _Bins(*_compiled().counted_bins(_code_counts(values), _raw_code_of_key16(), _value_of_key16(), scale, OUTLIER_RMS))
    extremes = [(int(k.min()), int(k.max())) for k in map(keys, parts)]
    low, high = min(e[0] for e in extremes), max(e[1] for e in extremes)
    width = high - low + 1
    nslots = groups * width
    base = np.arange(groups, dtype=np.int64)[:, None] * width - low

    def slots(part: slice) -> np.ndarray:
        return (base + keys(part)).reshape(-1)

    slot_value = _key16_to_value(np.arange(nslots) % width + low)
    count = np.zeros(nslots, dtype=np.int64)
    for part in parts:
        count += np.bincount(slots(part), minlength=nslots)

    def weighted(part: slice) -> Tuple[np.ndarray, np.ndarray]:
        x = values[:, part].astype(np.float64)
        return x, (np.ones_like(x) if weights is None else weights[:, part].astype(np.float64))

    total = np.zeros((groups, 1))
    moment = np.zeros((groups, 1))
    for part in parts:
        x, wt = weighted(part)
        total += wt.sum(1, keepdims=True)
        moment += (wt * x).sum(1, keepdims=True)
    mean = moment / np.where(total > 0, total, 1.0)
    w, s, sc, qc = (np.zeros(nslots) for _ in range(4))
    for part in parts:
        x, wt = weighted(part)
        slot, centred = slots(part), x - mean
        w += np.bincount(slot, wt.reshape(-1), nslots)
        s += np.bincount(slot, (wt * x).reshape(-1), nslots)
        sc += np.bincount(slot, (wt * centred).reshape(-1), nslots)
        qc += np.bincount(slot, (wt * centred * centred).reshape(-1), nslots)
    if not exact:
        slot_value = np.where(w > 0, s / np.where(w > 0, w, 1.0), slot_value)
    present = (count > 0).reshape(groups, width)
    bins_per_group = present.sum(1)
    n_bins = int(bins_per_group.max())
    row_of, col_of = np.nonzero(present)
    col_of = (np.cumsum(present, axis=1) - 1)[row_of, col_of]  # rank of each present slot in its row
    kept = present.reshape(-1)

    def prefix(stat: np.ndarray) -> np.ndarray:
        dense = np.zeros((groups, n_bins + 1))
        dense[row_of, col_of + 1] = stat[kept]
        return np.cumsum(dense, axis=1)

    value = np.zeros((groups, n_bins))
    value[row_of, col_of] = slot_value[kept]
    last = value[np.arange(groups), bins_per_group - 1][:, None]
    value = np.where(np.arange(n_bins)[None, :] < bins_per_group[:, None], value, last)
    bins = _Bins(prefix(w), prefix(s), prefix(sc), prefix(qc), value, bins_per_group, np.reshape(mean, groups))
    return bins if scale is None else bins.outlier_aware(scale)


def _fill_empty(c: np.ndarray) -> np.ndarray:
    """Replace NaN entries by the nearest finite entry to their left, else right, else 0."""
    k = c.shape[1]
    column = np.arange(k)[None, :]
    left = np.maximum.accumulate(np.where(np.isnan(c), -1, column), axis=1)
    right = np.minimum.accumulate(np.where(np.isnan(c), k, column)[:, ::-1], axis=1)[:, ::-1]
    source = np.where(left >= 0, left, np.where(right < k, right, -1))
    filled = np.take_along_axis(np.nan_to_num(c, nan=0.0), np.maximum(source, 0), axis=1)
    return np.where(source >= 0, filled, 0.0)


# ----------------------------------------------------------------------------------------------
# Cut search (compiled: `ops._kernels`).


def _cluster_bins(bins: _Bins, k: int, thorough: bool = True) -> np.ndarray:
    """Cluster one chunk of groups into k clusters: centroids [G, k].

    `thorough=False` is the estimate effort (`table_errors`): 5 Lloyd iterations instead of up to
    200; for k <= 16, one fine sweep instead of two; for larger k, no coarse sweeps.
    """
    return bins.centroids(_compiled().cluster_cuts(bins.w, bins.s, bins.sc, bins.qc, bins.value, bins.count, k, thorough))


def _chunks(values: np.ndarray):
    """Slices of rows of `values` [G, n] whose histograms stay within the chunk budget: a chunk's
    histogram spans up to n (sorted) or 65,536 (float16 codes) slots per group."""
    groups, n = values.shape
    per_chunk = max(1, _CHUNK_ELEMENTS // (n if _bins_by_sort(values) else max(n, 65536)))
    return [slice(first, min(groups, first + per_chunk)) for first in range(0, groups, per_chunk)]


def kmeans_1d(values: np.ndarray, k: int, weights: Optional[np.ndarray] = None, outlier_scale=None) -> np.ndarray:
    """Cluster each row of `values` [G, n] into `k` clusters: sorted centroids [G, k] (float64).

    `weights` [G, n] (>= 0) weight each value's squared error; zero-weight values do not pull any
    centroid. Rows with fewer than k distinct (binned) values get each value as a centroid and
    repeats. Deterministic.

    `outlier_scale` (a number, or one per row: the tensor's mean square, `outlier_scale()`), when
    given, multiplies each value's weight by `outlier_factor`: 1 below `OUTLIER_RMS` times the
    root of the scale, growing with the square of the distance beyond it. So a few values far
    out in the tails (an LLM's "super weights", 15 or more RMS out) get table entries instead of
    being clipped to the outermost entry the bulk wants, and ordinary weights keep their
    least-squares table (Gaussian weights: +0.3% squared error at 4 bits). The plain squared
    error spends no entry on a handful of values among a million: on SmolLM2-135M (stored as
    Q4_1) that clipping took 4-bit palettes of its down projections alone from perplexity 30 to
    255,000 (outlier-aware: 53), of the whole model to 566,000 (863), and groups of 16 to 1,047
    (225); MobileNetV2's 6-bit palettes gain too (top-1 agreement 0.838 -> 0.874, 198 crops).
    Tried: weighing every value by 1 + x^2 / scale (SmolLM2 per tensor 270, but MobileNetV2's
    4-bit top-1 0.38 -> 0.13), and pinning the extremes as entries (SmolLM2 699).
    """
    values = _check_rows(values)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups, n = values.shape
    result = np.empty((groups, k))
    if n == 0:
        result[:] = 0.0
        return result
    for chunk in _chunks(values):
        bins = _histogram(values[chunk], None if weights is None else weights[chunk],
                          None if outlier_scale is None else _rows_of(outlier_scale, groups)[chunk])
        result[chunk] = _cluster_bins(bins, k)
    return np.sort(result, axis=1)


def table_errors(
    values: np.ndarray, ks: Sequence[int], weights: Optional[np.ndarray] = None, dtype=np.float16, outlier_scale=None, *, with_tables: bool = False
):
    """What k-means tables of each size in `ks` would cost each row of `values` [G, n], without
    building them: ([len(ks), G] errors, [G] energies); `with_tables`: and the tables themselves
    (one [G, k] array in `dtype`, sorted, per k), so a caller can build the very palette whose
    error it weighed (`ops.palettize.palettize_estimated`) instead of clustering again.

    The error of a row is sum(w (x - t(x))^2), t(x) the nearest entry of the row's k-means table
    rounded to `dtype` (ties low, as `assign_nearest` maps them); its energy is sum(w x^2)
    (`weights` w default to 1). One histogram per chunk of rows serves every k, and the errors
    come from its prefix sums, not from a pass over the values. With `outlier_scale`, the tables
    are `kmeans_1d`'s outlier-aware ones and w includes their `outlier_factor`, in the errors and
    in the energies alike.

    This is the estimate effort: less polish than `kmeans_1d` (the 1-D problems of the sizes in
    tests/ops/test_kmeans.py: within about 1% of its error, mostly within 0.3%). Exact for
    float16 values and for rows of up to 65,536 values; longer float32 rows are binned by float16
    rounding, so values within a bin of a midpoint between entries may count on the wrong side.
    """
    values = _check_rows(values)
    groups, n = values.shape
    errors, energy = np.zeros((len(ks), groups)), np.zeros(groups)
    tables = [np.zeros((groups, k), dtype=dtype) for k in ks]
    if n == 0:
        return (errors, energy, tables) if with_tables else (errors, energy)
    for chunk in _chunks(values):
        bins = _histogram(values[chunk], None if weights is None else weights[chunk],
                          None if outlier_scale is None else _rows_of(outlier_scale, groups)[chunk])
        total_w, total_sc, total_qc = (p[:, -1] for p in (bins.w, bins.sc, bins.qc))
        energy[chunk] = np.maximum(total_qc + bins.centre * (2 * total_sc + bins.centre * total_w), 0.0)
        for row, k in enumerate(ks):
            table = np.sort(_cluster_bins(bins, k, thorough=False), axis=1).astype(dtype)
            tables[row][chunk] = table
            errors[row, chunk] = _error_of_table(bins, table.astype(np.float64))
    return (errors, energy, tables) if with_tables else (errors, energy)


def _error_of_table(bins: _Bins, table: np.ndarray) -> np.ndarray:
    """sum(w (x - t(x))^2) per group, t(x) the nearest entry of the sorted `table` [G, K]."""
    w, sc, qc = (np.diff(p, axis=1) for p in bins.at(bins.nearest_cuts(table)))
    # A cluster's error about its entry t: its error about its mean, plus its weight times the
    # entry's squared distance from that mean (sc is centred on the group's centre).
    off_mean = np.where(w > 0, bins.centre[:, None] + sc / np.where(w > 0, w, 1.0) - table, 0.0)
    return (_squared_error(w, sc, qc) + w * off_mean * off_mean).sum(1)


OUTLIER_RMS = 4.0  # outlier-aware k-means weighs values beyond this many RMS of their tensor more


def outlier_factor(values: np.ndarray, scale) -> np.ndarray:
    """The weight outlier-aware k-means gives a value's squared error: 1 + max(0, x^2 / scale -
    OUTLIER_RMS^2), `scale` the tensor's mean square (`outlier_scale`)."""
    values = np.asarray(values, dtype=np.float64)
    return 1.0 + np.maximum(values * values / scale - OUTLIER_RMS * OUTLIER_RMS, 0.0)


def outlier_scale(values: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """The scale of outlier-aware k-means for a tensor: the (weighted) mean square of its values,
    summed slice by slice in float64; 1 for an all-zero tensor."""
    values = np.asarray(values)
    if values.dtype == np.float16 and weights is None and values.size:
        # From the count of each 16-bit pattern: one cheap pass, no float64 copy of the values.
        counts = _code_counts(values.reshape(1, -1))[0]
        held = np.flatnonzero(counts)
        x = held.astype(np.uint16).view(np.float16).astype(np.float64)
        energy = float((counts[held] * (x * x)).sum())
        return energy / values.size if energy > 0 else 1.0
    w = np.ones((), dtype=np.float64) if weights is None else np.asarray(weights)
    if w.ndim and 0 in w.strides:  # a broadcast view: the weights it repeats
        w = w[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in w.strides)]
    if 0 < w.size < values.size and w.ndim <= values.ndim:
        # One weight per slice (per input channel, as the size allocation weighs them): sum the
        # squares along the slices first, then weigh the sums; 5-10 times faster than weighing
        # every element.
        w = w.reshape((1,) * (values.ndim - w.ndim) + w.shape).astype(np.float64)
        spread = tuple(axis for axis in range(values.ndim) if w.shape[axis] == 1 and values.shape[axis] > 1)
        reduced = tuple(1 if axis in spread else size for axis, size in enumerate(values.shape))
        squares = np.zeros(reduced)
        for rows in row_slices(values.shape):
            x = values[rows].astype(np.float32 if values.dtype == np.float16 else np.float64)  # float16 squares are exact in float32
            piece = np.square(x).sum(axis=spread, keepdims=True, dtype=np.float64)
            if 0 in spread:
                squares += piece
            else:
                squares[rows] = piece
        energy = float((w * squares).sum())
        total = float(np.broadcast_to(w, reduced).sum()) * (values.size // max(1, int(np.prod(reduced, dtype=np.int64))))
        return energy / total if energy > 0 and total > 0 else 1.0
    # In buffered pieces whatever the layout (a [1, n] row of a whole tensor, weights as large as
    # the values): never a float64 copy of the whole.
    energy = total = 0.0
    for x, ws in np.nditer([values, np.broadcast_to(w, values.shape)], flags=["external_loop", "buffered", "zerosize_ok"],
                           op_dtypes=[np.float64, np.float64], buffersize=1 << 16):
        energy += float(np.dot(ws, x * x))
        total += float(ws.sum())
    return energy / total if energy > 0 and total > 0 else 1.0


def _rows_of(scale, groups: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (groups,))


def _check_rows(values) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be [groups, n], got shape {values.shape}")
    return values


# ----------------------------------------------------------------------------------------------
# Vector k-means.


def kmeans_vectors(
    vectors: np.ndarray, k: int, weights: Optional[np.ndarray] = None, iterations: int = 100, starts: int = 3
) -> np.ndarray:
    """Cluster each group's vectors [G, n, d] into k centroids [G, k, d] (float64).

    Lloyd iteration from greedy k-means++ starts (each step keeps the best of several candidate
    centres, as scikit-learn does), `starts` times with fixed seeds; each group keeps its best
    run. Each group's start and iterations are one compiled loop (`ops._kernels.lloyd_vectors`).
    A group with at most k distinct vectors gets exactly those (lossless).

    Groups of more than `_vector_sample_size(k)` vectors run the starts on that many of their
    vectors (a fixed-seed sample), then Lloyd iteration on all of them from the best start, until
    no vector changes cluster, an iteration lowers the error by less than `_VECTOR_TOLERANCE` of
    it, or after `_VECTOR_FULL_ITERATIONS` iterations. The starts cost O(sample * k) per iteration instead of O(n * k); the error is that of
    Lloyd iteration run to convergence on every vector (scikit-learn, as coremltools calls it,
    stops at a tolerance of 1e-2).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    groups, n, dim = vectors.shape
    w = np.ones((groups, n)) if weights is None else np.asarray(weights, dtype=np.float64)
    result = np.empty((groups, k, dim))
    sample = min(n, _vector_sample_size(k))
    per_chunk = max(1, _VECTOR_CHUNK_ELEMENTS // max(1, sample * k))
    for first in range(0, groups, per_chunk):
        chunk = slice(first, min(groups, first + per_chunk))
        x, wx = (vectors[chunk], w[chunk]) if sample == n else _vector_sample(vectors[chunk], w[chunk], sample)
        best, best_error = None, None
        trials = 2 + int(np.log(k))  # k-means++ candidates per step, as scikit-learn draws them
        for seed in range(starts):
            uniforms = np.random.default_rng(seed).random((1 + (k - 1) * trials, x.shape[0])).T
            centroids, error = _compiled().lloyd_vectors(x, wx, k, iterations, uniforms, trials, _VECTOR_TOLERANCE)
            if best is None:
                best, best_error = centroids, error
            else:
                better = error < best_error
                best = np.where(better[:, None, None], centroids, best)
                best_error = np.where(better, error, best_error)
        if sample < n:
            best = _compiled().refine_vectors(vectors[chunk], w[chunk], best, min(iterations, _VECTOR_FULL_ITERATIONS), _VECTOR_TOLERANCE)
            energy = (wx * (x * x).sum(-1)).sum(1)
            # Lossless on the sample (but for the rounding of weighted means): maybe on the whole.
            for g in np.flatnonzero(best_error <= 1e-12 * energy):
                distinct = _distinct_vectors(vectors[first + g], w[first + g], k)
                if distinct is not None:
                    best[g, : len(distinct)], best[g, len(distinct) :] = distinct, distinct[-1]
        result[chunk] = best
    return result


_VECTOR_SAMPLE_MIN = 8192  # groups of up to this many vectors (or 64 per cluster) run the starts on all
_VECTOR_SAMPLE_PER_CLUSTER = 64
_VECTOR_TOLERANCE = 1e-4  # Lloyd iteration on all vectors stops when it gains less than this fraction
_VECTOR_FULL_ITERATIONS = 10  # or after this many iterations (1.18M vectors of 2, 16 entries: 0.06% more
# error than 100 iterations, in 5.2 s instead of 9.7; 5 iterations would save a third of the time
# on ResNet50's weights, but leave some groups 5% worse than starts run on every vector)


def _vector_sample_size(k: int) -> int:
    return max(_VECTOR_SAMPLE_MIN, _VECTOR_SAMPLE_PER_CLUSTER * k)


def _vector_sample(x: np.ndarray, w: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """`size` of each group's vectors [G, n, d] and their weights, standing for all of them: the
    quarter that weigh most in the error (largest w |x|^2, each for itself: a heavy tail's few
    far vectors decide entries that a uniform sample would miss), and a fixed-seed uniform
    sample of the rest, each weighted for the share of the rest it stands for."""
    groups, n, _ = x.shape
    top = size // 4
    mass = w * (x * x).sum(-1)
    heaviest = np.sort(np.argpartition(-mass, top - 1, axis=1)[:, :top], axis=1)  # a partition, not a sort of all n
    others = np.ones((groups, n), dtype=bool)
    np.put_along_axis(others, heaviest, False, axis=1)
    others = np.nonzero(others)[1].reshape(groups, n - top)  # the rest, in order
    rest = np.sort(np.random.default_rng(0).choice(n - top, size - top, replace=False))
    picks = np.concatenate([heaviest, others[:, rest]], axis=1)
    scale = np.concatenate([np.ones(top), np.full(size - top, (n - top) / (size - top))])
    return np.take_along_axis(x, picks[..., None], axis=1), np.take_along_axis(w, picks, axis=1) * scale


def _distinct_vectors(x: np.ndarray, w: np.ndarray, k: int) -> Optional[np.ndarray]:
    """The distinct vectors of positive weight of one group [n, d], if at most k; else None."""
    held = x[w > 0] if (w > 0).any() else x
    distinct = np.unique(held, axis=0)
    return distinct if len(distinct) <= k else None


def _vector_error(x: np.ndarray, w: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return (w * _nearest_vectors(x, centroids)[1]).sum(1)


def nearest_vectors(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid [G, k, d] for each vector of x [G, n, d] (ties go low): [G, n]."""
    return _nearest_vectors(x, centroids)[0]


def _nearest_vectors(x: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid, squared distance to it) for each vector of x [G, n, d]:
    compiled (`ops._kernels.nearest_vectors`), a running minimum over the centroids, no [n, k]
    distance matrix (1.18M vectors of 2, 16 centroids: numpy's best 0.14 s)."""
    return _compiled().nearest_vectors(x, centroids)
