"""Compiled kernels of k-means (`ops.kmeans`), one group at a time (numba): the 1-D cut search,
float16 histograms, the nearest-entry assignment, and vector k-means' starts and iterations.

`cluster_cuts` takes the prefix sums of `kmeans._Bins` ([G, n + 1], float64) and returns each
group's k - 1 cuts between bins ([G, k + 1], from 0 to n), by the algorithm `ops.kmeans`'s
docstring describes: the exact DP on small problems; else a start (the exact DP over coarse
atoms for k <= 16; for larger k the better after Lloyd of a divisive split and cuts at equal
steps of the density's cube root), Lloyd iterations, and sweeps of an exact DP over all cuts
jointly, each cut moving within a neighbourhood. The DP steps use divide and conquer over the
monotone optimal split (`_dp_step`). `sorted_bins` and `counted_bins` make those bins from a
float16 row's sorted codes or its counts of each 16-bit pattern (`count_codes`), in one pass.
`assign_by_keys` gives every value the index of its nearest table entry by comparing order keys
with the midpoints' (ties low). `nearest_vectors`, `lloyd_vectors` and `refine_vectors` are the
loops of vector k-means (`refine_vectors`: Lloyd iteration from given centroids).

Why compiled: each of these is a loop over one group's bins, cuts or values. In numpy the same
search was dozens of small array calls per Lloyd iteration and per sweep, a few milliseconds per
table whatever its size (ResNet50's 54 per-tensor 4-bit tables: 0.54 s of CPU against a floor of
0.15 s for the histogram, gather and pack; 8-bit: 2.8 s; now 0.17 and 0.41 s). numba compiles
these loops to machine code; `cache=True` keeps it on disk, so an installation compiles once
(about 16 s) and later processes load it (about 0.3 s). `ops.kmeans` imports this module on first
use: numba costs a process about 50 MB of memory and 120 MB of mapped library.

Deterministic and in float64, as the numpy code was; ties go to the first (lowest) candidate.
"""

from __future__ import annotations

from typing import Optional

import numba
import numpy as np

_EXACT_DP_BUDGET = 1 << 18  # k * (bins + 1) * log2(bins + 1) per group, below which the exact DP runs
_ESTIMATE_EXACT_DP_BUDGET = 1 << 15  # the same at the estimate effort (the heuristic costs about 1/100)
_COARSE_DP_MAX_K = 16
_COARSE_ATOMS_PER_CLUSTER = 4
_SWEEP_GRID = 32
_SWEEP_GRID_COARSE = 16
_MAX_SWEEPS = 64
_MAX_FINE_SWEEPS = 2
_LLOYD_ITERATIONS = 200
_ESTIMATE_LLOYD = 5  # Lloyd iterations at the estimate effort (`kmeans.table_errors`)
_SWEEP_TOLERANCE = 1e-7  # a sweep must lower a group's error by this fraction to continue

_jit = numba.njit(cache=True)


@_jit
def _cost(w, sc, qc, a, b):
    """Weighted squared error about the mean of the bins [a, b), from the prefix sums."""
    weight = w[b] - w[a]
    if weight <= 0.0:
        return 0.0
    s = sc[b] - sc[a]
    error = (qc[b] - qc[a]) - s * (s / weight)
    return error if error > 0.0 else 0.0


@_jit
def _total(w, sc, qc, cuts):
    total = 0.0
    for j in range(cuts.size - 1):
        total += _cost(w, sc, qc, cuts[j], cuts[j + 1])
    return total


@_jit
def _dp_step(w, sc, qc, sources, best, targets, new, choice, last, stack):
    """One step of a k-means DP: for each of the sorted positions `targets`, new[j] = the least
    best[i] + cost(sources[i], targets[j]) over the sorted `sources` at or before it, choice[j]
    the first i that attains it (every target must have a source at or before it).

    The cost of a run of sorted values is Monge, so the first optimal i never decreases with j:
    divide and conquer over j needs O(n log n) costs, not O(n^2)."""
    count = targets.size
    i = 0
    for j in range(count):  # the last source at or before each target (both sorted)
        while i + 1 < sources.size and sources[i + 1] <= targets[j]:
            i += 1
        last[j] = i
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 0, count - 1, 0, sources.size - 1
    top = 1
    while top > 0:
        top -= 1
        j_low, j_high, i_low, i_high = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if j_low > j_high:
            continue
        j = (j_low + j_high) >> 1
        lowest, where = np.inf, i_low
        for i in range(i_low, min(last[j], i_high) + 1):
            total = _cost(w, sc, qc, sources[i], targets[j]) + best[i]
            if total < lowest:
                lowest, where = total, i
        new[j] = lowest
        choice[j] = where
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = j + 1, j_high, where, i_high
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = j_low, j - 1, i_low, where
        top += 2


@_jit
def _dp_stack():
    """Work space of `_dp_step`: pending (j range, i range) pairs, depth at most log2(n) + 1."""
    return np.empty((2 * 64 + 8, 4), dtype=np.int64)


@_jit
def _dp_over_positions(w, sc, qc, positions, k):
    """Optimal k-cluster cuts restricted to the sorted `positions` (from 0 to the end):
    O(k n log n) costs for n positions."""
    count = positions.size
    best = np.empty(count)
    for j in range(count):
        best[j] = _cost(w, sc, qc, positions[0], positions[j])
    choices = np.zeros((max(k - 1, 1), count), dtype=np.int64)
    new = np.empty(count)
    last, stack = np.empty(count, dtype=np.int64), _dp_stack()
    for step in range(k - 1):
        _dp_step(w, sc, qc, positions, best, positions, new, choices[step], last, stack)
        best, new = new, best
    cuts = np.empty(k + 1, dtype=np.int64)
    index = count - 1
    cuts[k] = positions[index]
    for step in range(k - 2, -1, -1):
        index = choices[step, index]
        cuts[step + 1] = positions[index]
    cuts[0] = positions[0]
    return cuts


@_jit
def _coarse_positions(w, value, m, atoms):
    """0, m, and cut positions at equal steps of cumulative weight and of value, sorted."""
    total = w[m]
    lowest, highest = value[0], value[m - 1]
    span = highest - lowest if highest > lowest else 1.0
    scale = total if total > 0.0 else 1.0
    fraction_w = w[: m + 1] / scale
    fraction_v = (value[:m] - lowest) / span
    positions = np.empty(2 * atoms, dtype=np.int64)
    positions[0], positions[1] = 0, m
    for i in range(1, atoms):
        f = i / atoms
        positions[1 + i] = min(np.searchsorted(fraction_w, f, side="left"), m)
        positions[atoms + i] = min(np.searchsorted(fraction_v, f, side="right"), m)
    return np.sort(positions)


@_jit
def _centroids(w, s, cuts):
    """The weighted mean of each cluster; an empty one copies its nearest non-empty neighbour
    (the left one first), or 0 if every cluster is empty."""
    k = cuts.size - 1
    result = np.empty(k)
    filled = np.zeros(k, dtype=np.bool_)
    for j in range(k):
        weight = w[cuts[j + 1]] - w[cuts[j]]
        if weight > 0.0:
            result[j] = (s[cuts[j + 1]] - s[cuts[j]]) / weight
            filled[j] = True
    for j in range(k):
        if filled[j]:
            continue
        left = j - 1
        while left >= 0 and not filled[left]:
            left -= 1
        right = j + 1
        while right < k and not filled[right]:
            right += 1
        result[j] = result[left] if left >= 0 else (result[right] if right < k else 0.0)
    return result


@_jit
def _round_down_f32(x):
    r = np.float32(x)
    if np.float64(r) > x:
        r = np.nextafter(r, np.float32(-np.inf))
    return r


@_jit
def _lloyd(w, s, sc, qc, value32, cuts, iterations):
    """Lloyd iteration on sorted bins: each cut moves to the midpoint of its neighbouring
    centroids (rounded down to float32, as `kmeans.assign_nearest` compares). Never raises the
    error; O(k log n) an iteration."""
    k = cuts.size - 1
    m = cuts[k]
    cuts = cuts.copy()
    for _ in range(iterations):
        centre = _centroids(w, s, cuts)
        moved = False
        for j in range(1, k):
            mid = _round_down_f32((centre[j - 1] + centre[j]) / 2)
            cut = min(np.searchsorted(value32[:m], mid, side="right"), m)
            if cut != cuts[j]:
                moved = True
                cuts[j] = cut
        if not moved:
            break
    return cuts


@_jit
def _sweep(w, sc, qc, cuts, offsets, grid):
    """One exact DP over all cuts jointly, cut t choosing from its neighbourhood: `grid`
    fractions of the way between its neighbours and moves by `offsets` bins, or every position
    between its neighbours where there are no more of them than that."""
    k = cuts.size - 1
    full = grid.size + offsets.size
    candidates = np.empty((k + 1, full), dtype=np.int64)  # row t: cut t's candidates, sorted, distinct
    spread = np.empty(grid.size, dtype=np.int64)
    near = np.empty(offsets.size, dtype=np.int64)
    sizes = np.ones(k + 1, dtype=np.int64)
    candidates[0, 0], candidates[k, 0] = cuts[0], cuts[k]
    for t in range(1, k):
        low, high, current = cuts[t - 1], cuts[t + 1], cuts[t]
        row = candidates[t]
        if high - low + 1 <= full:
            sizes[t] = high - low + 1
            for i in range(sizes[t]):
                row[i] = low + i
            continue
        for i in range(grid.size):
            spread[i] = low + np.int64(np.rint((high - low) * grid[i]))
        for i in range(offsets.size):
            near[i] = min(max(current + offsets[i], low), high)
        # Both runs are sorted: merge them, dropping repeats.
        a = b = size = 0
        while a < grid.size or b < offsets.size:
            if b == offsets.size or (a < grid.size and spread[a] <= near[b]):
                value = spread[a]
                a += 1
            else:
                value = near[b]
                b += 1
            if size == 0 or row[size - 1] != value:
                row[size] = value
                size += 1
        sizes[t] = size
    # Cut t's candidates all lie at or after cut t - 2's position, where cut t - 1's lowest lies.
    choices = np.zeros((k + 1, full), dtype=np.int64)
    best = np.zeros(full)
    new = np.empty(full)
    last, stack = np.empty(full, dtype=np.int64), _dp_stack()
    for t in range(1, k + 1):
        _dp_step(w, sc, qc, candidates[t - 1, : sizes[t - 1]], best[: sizes[t - 1]], candidates[t, : sizes[t]], new[: sizes[t]],
                 choices[t, : sizes[t]], last, stack)
        best, new = new, best
    result = np.empty(k + 1, dtype=np.int64)
    result[k] = cuts[k]
    index = 0
    for t in range(k, 0, -1):
        index = choices[t, index]
        result[t - 1] = candidates[t - 1, index]
    return result


@_jit
def _improve(w, sc, qc, cuts, coarse, fine_sweeps):
    """Sweep until the error stops falling: on a coarse grid (finds large moves) if `coarse`,
    then on a fine grid plus moves of +-1, 2, 4, ... bins up to its spacing (at most
    `fine_sweeps` times)."""
    k = cuts.size - 1
    cost = _total(w, sc, qc, cuts)
    for phase in range(2):
        if phase == 0 and not coarse:
            continue
        fine = phase == 1
        size = _SWEEP_GRID if fine else _SWEEP_GRID_COARSE
        sweeps = fine_sweeps if fine else _MAX_SWEEPS
        grid = np.linspace(0.0, 1.0, size + 1)
        offsets = np.zeros(1, dtype=np.int64)
        if fine:
            widest = 0
            for t in range(1, k):
                widest = max(widest, cuts[t + 1] - cuts[t - 1])
            steps = _bit_length(widest // size) + 1
            offsets = np.zeros(2 * steps + 1, dtype=np.int64)
            for i in range(steps):
                offsets[steps - 1 - i] = -(1 << i)
                offsets[steps + 1 + i] = 1 << i
        for _ in range(sweeps):
            proposal = _sweep(w, sc, qc, cuts, offsets, grid)
            proposed = _total(w, sc, qc, proposal)
            if not proposed < cost * (1 - _SWEEP_TOLERANCE):
                break
            cuts, cost = proposal, proposed
    return cuts


@_jit
def _best_split(w, sc, qc, a, b):
    """The best single cut of the bins [a, b): (gain in squared error, cut); (-inf, a) when
    there is nothing to split. The first minimum wins."""
    if b - a < 2:
        return -np.inf, a
    lowest, where = np.inf, a + 1
    for cut in range(a + 1, b):
        total = _cost(w, sc, qc, a, cut) + _cost(w, sc, qc, cut, b)
        if total < lowest:
            lowest, where = total, cut
    return _cost(w, sc, qc, a, b) - lowest, where


@_jit
def _greedy_cuts(w, sc, qc, m, k):
    """Divisive start: each round splits up to half of the clusters, those whose best 2-split
    lowers the error most (about 1.6 log2(k) rounds); with nothing left to split, an empty
    cluster at the end."""
    start = np.zeros(k, dtype=np.int64)
    stop = np.zeros(k, dtype=np.int64)
    gain = np.full(k, -np.inf)
    split = np.zeros(k, dtype=np.int64)
    stop[0] = m
    gain[0], split[0] = _best_split(w, sc, qc, 0, m)
    count = 1
    while count < k:
        limit = min(k - count, max(1, count // 2))
        order = np.argsort(-gain[:count], kind="mergesort")
        taken = 0
        for rank in range(min(limit, count)):
            j = order[rank]
            if gain[j] == -np.inf:
                break
            new = count + taken
            s, b = split[j], stop[j]
            stop[j] = s
            start[new], stop[new] = s, b
            gain[j], split[j] = _best_split(w, sc, qc, start[j], s)
            gain[new], split[new] = _best_split(w, sc, qc, s, b)
            taken += 1
        if taken == 0:  # nothing to split: an empty cluster
            start[count], stop[count] = m, m
            taken = 1
        count += taken
    cuts = np.empty(k + 1, dtype=np.int64)
    cuts[:k] = np.sort(start)
    cuts[k] = m
    return cuts


@_jit
def _companded_cuts(w, value, m, k):
    """Cuts at equal steps of the integral of the weight density's cube root: the point density
    of the least-squares quantizer with many levels (Panter and Dite, 1951)."""
    cumulative = np.empty(m)
    running = 0.0
    for i in range(m):
        left = value[0] if i == 0 else (value[i] + value[i - 1]) / 2
        right = value[m - 1] if i == m - 1 else (value[i + 1] + value[i]) / 2
        width = right - left
        weight = w[i + 1] - w[i]
        running += np.cbrt(weight * width * width) if width > 0 else np.cbrt(weight)
        cumulative[i] = running
    scale = running if running > 0 else 1.0
    cumulative /= scale
    cuts = np.empty(k + 1, dtype=np.int64)
    cuts[0], cuts[k] = 0, m
    for i in range(1, k):
        cut = min(max(np.searchsorted(cumulative, i / k, side="left") + 1, 1), m)
        cuts[i] = max(cut, cuts[i - 1]) if i > 1 else cut
    return cuts


@_jit
def _bit_length(x):
    length = 0
    while x > 0:
        length += 1
        x >>= 1
    return length


@_jit
def _group_cuts(w, s, sc, qc, value, m, k, thorough):
    if m <= k:
        cuts = np.empty(k + 1, dtype=np.int64)
        for j in range(k + 1):
            cuts[j] = min(j, m)
        return cuts
    if k * (m + 1) * _bit_length(m + 1) <= (_EXACT_DP_BUDGET if thorough else _ESTIMATE_EXACT_DP_BUDGET):
        return _dp_over_positions(w, sc, qc, np.arange(m + 1), k)
    iterations = _LLOYD_ITERATIONS if thorough else _ESTIMATE_LLOYD
    value32 = value[:m].astype(np.float32)
    if k <= _COARSE_DP_MAX_K:
        # The coarse DP already places the clusters well: Lloyd and a fine polish finish the job.
        start = _dp_over_positions(w, sc, qc, _coarse_positions(w, value, m, _COARSE_ATOMS_PER_CLUSTER * k), k)
        return _improve(w, sc, qc, _lloyd(w, s, sc, qc, value32, start, iterations), False, _MAX_FINE_SWEEPS if thorough else 1)
    # Two starts, each polished by Lloyd, the better kept: the divisive one suits heavy tails,
    # the companded one (near the optimum for smooth densities) spares the sweeps most of their
    # work there.
    divisive = _lloyd(w, s, sc, qc, value32, _greedy_cuts(w, sc, qc, m, k), iterations)
    companded = _lloyd(w, s, sc, qc, value32, _companded_cuts(w, value, m, k), iterations)
    better = companded if _total(w, sc, qc, companded) < _total(w, sc, qc, divisive) else divisive
    return _improve(w, sc, qc, better, thorough, _MAX_FINE_SWEEPS)


@_jit
def _cluster_cuts(w, s, sc, qc, value, count, k, thorough):
    groups, n = value.shape
    result = np.empty((groups, k + 1), dtype=np.int64)
    for g in range(groups):
        result[g] = _group_cuts(w[g], s[g], sc[g], qc[g], value[g], count[g], k, thorough)
        result[g, k] = n  # a group's bins past its own count are padding of zero weight
    return result


def cluster_cuts(w: np.ndarray, s: np.ndarray, sc: np.ndarray, qc: np.ndarray, value: np.ndarray, count: np.ndarray,
                 k: int, thorough: bool = True) -> np.ndarray:
    """k-means cuts [G, k + 1] of each group's sorted bins: prefix sums of weight `w`, sum `s`,
    centred sum `sc` and centred squares `qc` [G, n + 1], bin values `value` [G, n], bins per
    group `count` [G]. `thorough=False` is the estimate effort (5 Lloyd iterations; k <= 16: one
    fine sweep; larger k: no coarse sweeps)."""
    # Contiguous float64 and int64 whatever the caller holds: one compiled signature.
    w, s, sc, qc, value = (np.ascontiguousarray(x, dtype=np.float64) for x in (w, s, sc, qc, value))
    return _cluster_cuts(w, s, sc, qc, value, np.ascontiguousarray(count, dtype=np.int64), int(k), bool(thorough))


@_jit
def _key32(bits):
    """The order key of a float32 from its bits (as `kmeans._ordered_key32`)."""
    bits = np.int64(bits)
    return 0x7FFFFFFF - (bits & 0x7FFFFFFF) if bits & 0x80000000 else bits | 0x80000000


@_jit
def _count_below(mids, key):
    """How many of the sorted `mids` are below `key`: the index of the nearest entry. A short
    table is counted without branches (faster than a search whose branches cannot be predicted)."""
    if mids.size <= 32:
        count = 0
        for j in range(mids.size):
            count += mids[j] < key
        return count
    low, high = 0, mids.size
    while low < high:
        middle = (low + high) >> 1
        if mids[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low


@_jit
def _assign_float16(raw, key_of_pattern, mid_keys, out):
    for g in range(raw.shape[0]):
        mids = mid_keys[g]
        for i in range(raw.shape[1]):
            out[g, i] = _count_below(mids, key_of_pattern[raw[g, i]])


@_jit
def _assign_float32(raw, mid_keys, out):
    for g in range(raw.shape[0]):
        mids = mid_keys[g]
        for i in range(raw.shape[1]):
            out[g, i] = _count_below(mids, _key32(raw[g, i]))


def assign_by_keys(values: np.ndarray, mid_keys: np.ndarray, key_of_pattern: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Into `out` [G, n]: for each value of `values` [G, n] (float16 or float32), how many of its
    group's sorted midpoint keys `mid_keys` [G, K - 1] (`kmeans._ordered_key32`) lie below its own
    float32 order key; `key_of_pattern` [65536] is that key for each float16 bit pattern."""
    mid_keys = np.ascontiguousarray(mid_keys, dtype=np.int64)
    if values.dtype == np.float16:
        _assign_float16(np.ascontiguousarray(values).view(np.uint16), key_of_pattern, mid_keys, out)
    else:
        _assign_float32(np.ascontiguousarray(values, dtype=np.float32).view(np.uint32), mid_keys, out)
    return out


@_jit
def _count_codes(raw, out):
    for g in range(raw.shape[0]):
        for i in range(raw.shape[1]):
            out[g, raw[g, i]] += 1


def count_codes(values: np.ndarray) -> np.ndarray:
    """How many of each row of the float16 `values` [G, n] hold each 16-bit pattern: [G, 65536]
    int64 (`np.bincount` converts its input to 8-byte integers first: 3x slower)."""
    raw = np.ascontiguousarray(values).view(np.uint16).reshape(values.shape[0], -1)
    out = np.zeros((raw.shape[0], 1 << 16), dtype=np.int64)
    _count_codes(raw, out)
    return out


@_jit
def _finish_bins(g, bins, bin_weight, value, scale, outlier_rms2, w, s, sc, qc, centre):
    """Row g of the bins' prefix sums from its `bins` values (in `value[g]`, sorted) and counts
    (`bin_weight`, multiplied here by the outlier factor when `scale` is given); padding repeats
    the last value and the totals."""
    width = value.shape[1]
    total = moment = 0.0
    for b in range(bins):
        x = value[g, b]
        if scale.size:
            bin_weight[b] *= 1.0 + max(x * x / scale[g] - outlier_rms2, 0.0)
        total += bin_weight[b]
        moment += bin_weight[b] * x
    mean = moment / total if total > 0 else 0.0
    centre[g] = mean
    for b in range(bins):
        x, weight = value[g, b], bin_weight[b]
        d = x - mean
        w[g, b + 1] = w[g, b] + weight
        s[g, b + 1] = s[g, b] + weight * x
        sc[g, b + 1] = sc[g, b] + weight * d
        qc[g, b + 1] = qc[g, b] + weight * d * d
    for b in range(bins, width):
        value[g, b] = value[g, bins - 1]
        w[g, b + 1], s[g, b + 1], sc[g, b + 1], qc[g, b + 1] = w[g, b], s[g, b], sc[g, b], qc[g, b]


@_jit
def _empty_bins(groups, width):
    shape = (groups, width + 1)
    return np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape), np.empty((groups, width)), np.zeros(groups)


@_jit
def _sorted_bins(keys, value_of_key, scale, outlier_rms2):
    groups, n = keys.shape
    count = np.zeros(groups, dtype=np.int64)
    for g in range(groups):
        if n:
            count[g] = 1
        for i in range(1, n):
            count[g] += keys[g, i] != keys[g, i - 1]
    w, s, sc, qc, value, centre = _empty_bins(groups, max(1, count.max()))
    bin_weight = np.empty(value.shape[1])
    for g in range(groups):
        b = -1
        for i in range(n):
            if i == 0 or keys[g, i] != keys[g, i - 1]:
                b += 1
                value[g, b] = value_of_key[keys[g, i]]
                bin_weight[b] = 0.0
            bin_weight[b] += 1.0
        _finish_bins(g, b + 1, bin_weight, value, scale, outlier_rms2, w, s, sc, qc, centre)
    return w, s, sc, qc, value, count, centre


@_jit
def _counted_bins(counts, raw_of_key, value_of_key, scale, outlier_rms2):
    groups, codes = counts.shape
    count = np.zeros(groups, dtype=np.int64)
    for g in range(groups):
        for raw in range(codes):
            count[g] += counts[g, raw] > 0
    w, s, sc, qc, value, centre = _empty_bins(groups, max(1, count.max()))
    bin_weight = np.empty(value.shape[1])
    for g in range(groups):
        b = 0
        for key in range(codes):
            held = counts[g, raw_of_key[key]]
            if held:
                value[g, b] = value_of_key[key]
                bin_weight[b] = held
                b += 1
        _finish_bins(g, b, bin_weight, value, scale, outlier_rms2, w, s, sc, qc, centre)
    return w, s, sc, qc, value, count, centre


def counted_bins(counts: np.ndarray, raw_of_key: np.ndarray, value_of_key: np.ndarray, scale: Optional[np.ndarray], outlier_rms: float):
    """The bins of float16 rows from their counts of each 16-bit pattern [G, 65536]
    (`count_codes`), one per pattern held, in value order, as `sorted_bins` gives them;
    `raw_of_key` [65536]: the pattern of each order key."""
    return _counted_bins(counts, raw_of_key, value_of_key, _scales(scale), float(outlier_rms) ** 2)


def sorted_bins(keys: np.ndarray, value_of_key: np.ndarray, scale: Optional[np.ndarray], outlier_rms: float):
    """The bins of rows of sorted 16-bit order keys [G, n] (`kmeans._ordered_key16`), one bin per
    distinct key, as `kmeans._Bins` fields (w, s, sc, qc, value, count, centre); `value_of_key`
    [65536] float64. `scale` (one per row, or None): each bin's count times the outlier factor
    1 + max(0, x^2 / scale - outlier_rms^2) of outlier-aware k-means."""
    return _sorted_bins(np.ascontiguousarray(keys, dtype=np.uint16), value_of_key, _scales(scale), float(outlier_rms) ** 2)


def _scales(scale: Optional[np.ndarray]) -> np.ndarray:
    """One outlier scale per row for the compiled bins, or an empty array for none."""
    return np.zeros(0) if scale is None else np.ascontiguousarray(scale, dtype=np.float64)


@_jit
def _norm2(a):
    total = 0.0
    for e in range(a.size):
        total += a[e] * a[e]
    return total


@_jit
def _squared_distance(a, b):
    total = 0.0
    for e in range(a.size):
        d = a[e] - b[e]
        total += d * d
    return total


@_jit
def _norms(centroids):
    result = np.empty(centroids.shape[0])
    for j in range(centroids.shape[0]):
        result[j] = _norm2(centroids[j])
    return result


@_jit
def _nearest(v, centroids, c_norm):
    """(|c|^2 - 2 v.c, index) of the centroid nearest to the vector v: |v - c|^2 less |v|^2, a
    running minimum over the centroids (ties keep the lower index)."""
    best, label = np.inf, 0
    for j in range(centroids.shape[0]):
        dot = v[0] * centroids[j, 0]
        for e in range(1, v.size):
            dot += v[e] * centroids[j, e]
        value = dot * -2.0 + c_norm[j]
        if value < best:
            best, label = value, j
    return best, label


@_jit
def _nearest_vectors(x, centroids, labels, distance):
    for g in range(x.shape[0]):
        c_norm = _norms(centroids[g])
        for i in range(x.shape[1]):
            best, labels[g, i] = _nearest(x[g, i], centroids[g], c_norm)
            distance[g, i] = max(best + _norm2(x[g, i]), 0.0)


def nearest_vectors(x: np.ndarray, centroids: np.ndarray):
    """(index of the nearest centroid [G, n], squared distance to it [G, n]) for each vector of
    x [G, n, d] among centroids [G, k, d] (float64; ties go low). |x - c|^2 = |x|^2 + (|c|^2 -
    2 x.c): the nearest c minimises the second term."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    labels = np.empty(x.shape[:2], dtype=np.int64)
    distance = np.empty(x.shape[:2])
    _nearest_vectors(x, np.ascontiguousarray(centroids, dtype=np.float64), labels, distance)
    return labels, distance


@_jit
def _draw(weights, u):
    """An index drawn with probability proportional to `weights` (uniform if all are zero), by
    the uniform number `u` in [0, 1)."""
    n = weights.size
    total = 0.0
    for i in range(n):
        total += weights[i]
    if not total > 0.0:
        return min(int(u * n), n - 1)
    target, running = u * total, 0.0
    for i in range(n):
        running += weights[i]
        if running > target:
            return i
    return n - 1


@_jit
def _kmeans_plus_plus(x, w, uniforms, trials, centroids):
    """A greedy k-means++ start into centroids [k, d]: each step keeps the best of `trials`
    candidates drawn (by `uniforms`) in proportion to w times the squared distance to the nearest
    centroid so far; chosen vectors' draw weights drop to zero, so at most k distinct vectors
    each get a centroid."""
    n, k = x.shape[0], centroids.shape[0]
    nearest = np.empty(n)
    drawn = np.empty(n)
    centroids[0] = x[_draw(w, uniforms[0])]
    for i in range(n):
        nearest[i] = _squared_distance(x[i], centroids[0])
    for j in range(1, k):
        for i in range(n):
            drawn[i] = w[i] * nearest[i]
        best_total, best = np.inf, 0
        for t in range(trials):
            pick = _draw(drawn, uniforms[1 + (j - 1) * trials + t])
            total = 0.0
            for i in range(n):
                total += w[i] * min(nearest[i], _squared_distance(x[i], x[pick]))
            if total < best_total:
                best_total, best = total, pick
        centroids[j] = x[best]
        for i in range(n):
            nearest[i] = min(nearest[i], _squared_distance(x[i], x[best]))


@_jit
def _lloyd_from(x, w, centroids, iterations, tolerance):
    """Lloyd iteration on one group's vectors x [n, d] from centroids [k, d] (updated in place;
    an empty cluster keeps its centroid) until no vector changes cluster, an iteration gains
    less than `tolerance` of the error, or `iterations` updates. Returns the error of the
    centroids it leaves (the weighted squared distance to the nearest)."""
    n, dim = x.shape
    k = centroids.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    mass = np.empty(k)
    sums = np.empty((k, dim))
    error = np.inf
    for iteration in range(iterations + 1):
        c_norm = _norms(centroids)
        new_error = 0.0
        changed = False
        mass[:] = 0.0
        sums[:] = 0.0
        for i in range(n):
            best, label = _nearest(x[i], centroids, c_norm)
            changed |= label != labels[i]
            labels[i] = label
            new_error += w[i] * max(best + _norm2(x[i]), 0.0)
            mass[label] += w[i]
            for e in range(dim):
                sums[label, e] += w[i] * x[i, e]
        if iteration == iterations or (iteration > 0 and (not changed or error - new_error <= tolerance * error)):
            return new_error
        error = new_error
        for j in range(k):
            if mass[j] > 0:
                for e in range(dim):
                    centroids[j, e] = sums[j, e] / mass[j]
    return error


@_jit
def _lloyd_vectors(x, w, k, iterations, uniforms, trials, tolerance):
    groups, n, dim = x.shape
    centroids = np.empty((groups, k, dim))
    error = np.empty(groups)
    for g in range(groups):
        _kmeans_plus_plus(x[g], w[g], uniforms[g], trials, centroids[g])
        error[g] = _lloyd_from(x[g], w[g], centroids[g], iterations, tolerance)
    return centroids, error


def lloyd_vectors(x: np.ndarray, w: np.ndarray, k: int, iterations: int, uniforms: np.ndarray, trials: int, tolerance: float):
    """k-means of each group's vectors x [G, n, d] with weights w [G, n]: a greedy k-means++
    start drawn by `uniforms` [G, 1 + (k - 1) * trials] (numbers in [0, 1)), then Lloyd iteration
    (`_lloyd_from`). Centroids [G, k, d] and each group's error."""
    return _lloyd_vectors(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64), int(k), int(iterations),
                          np.ascontiguousarray(uniforms, dtype=np.float64), int(trials), float(tolerance))


@_jit
def _refine_vectors(x, w, centroids, iterations, tolerance):
    for g in range(x.shape[0]):
        _lloyd_from(x[g], w[g], centroids[g], iterations, tolerance)


def refine_vectors(x: np.ndarray, w: np.ndarray, centroids: np.ndarray, iterations: int, tolerance: float) -> np.ndarray:
    """Lloyd iteration (`_lloyd_from`) on each group's vectors x [G, n, d] from `centroids`
    [G, k, d]: the refined centroids (a new array)."""
    refined = np.array(centroids, dtype=np.float64, order="C")
    _refine_vectors(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64), refined, int(iterations), float(tolerance))
    return refined
