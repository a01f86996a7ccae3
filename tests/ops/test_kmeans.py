import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress.ops import kmeans
from milcompress.ops.kmeans import assign_nearest, kmeans_1d, kmeans_vectors, table_errors
from tests.ops.reference import optimal_sse, sse_to_nearest
from milcompress.ops._arrays import unique_values
from tests.strategies import weights

K = st.sampled_from([2, 4, 8, 16, 64, 256])


@given(x=weights(max_rank=2, max_side=40), k=K)
def test_small_inputs_are_clustered_optimally(x, k):
    flat = x.reshape(1, -1)
    centroids = kmeans_1d(flat, k)
    assert centroids.shape == (1, k)
    assert (np.diff(centroids[0]) >= 0).all()
    optimum = optimal_sse(flat, k)
    got = sse_to_nearest(flat, centroids)
    assert got <= optimum * (1 + 1e-9) + 1e-12 * float(np.sum(flat.astype(np.float64) ** 2))


@given(x=weights(max_rank=2, max_side=30), k=st.sampled_from([2, 4, 16]), seed=st.integers(0, 1000))
def test_weights_steer_the_optimum(x, k, seed):
    w = np.random.default_rng(seed).integers(0, 4, x.size).astype(np.float64).reshape(1, -1)
    centroids = kmeans_1d(x.reshape(1, -1), k, weights=w)
    assert sse_to_nearest(x, centroids, w) <= optimal_sse(x, k, w) * (1 + 1e-9) + 1e-12


DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(0, 0.05, n),
    "student_t3": lambda rng, n: rng.standard_t(3, n) * 0.02,
    "student_t1.5": lambda rng, n: rng.standard_t(1.5, n) * 0.02,
    "bimodal": lambda rng, n: np.concatenate([rng.normal(-0.3, 0.01, n // 2), rng.normal(0.2, 0.05, n - n // 2)]),
    "mostly_zero": lambda rng, n: np.where(rng.random(n) < 0.6, 0, rng.normal(0, 0.1, n)),
    "uniform": lambda rng, n: rng.uniform(-1, 1, n),
    "lattice_noise": lambda rng, n: rng.integers(-20, 20, n) * 0.01 + rng.normal(0, 1e-4, n),
    "outliers": lambda rng, n: np.concatenate([rng.normal(0, 0.01, n - 5), [1, -2, 3, 0.5, -0.7]]),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("k", [4, 16, 64])
def test_large_inputs_are_within_0_1_percent_of_optimal(name, k):
    """Above the exact-DP size the search is a heuristic: hold it to its promise on hard data."""
    rng = np.random.default_rng(7)
    x = DISTRIBUTIONS[name](rng, 6000).astype(np.float16)
    got = sse_to_nearest(x, kmeans_1d(x[None], k))
    assert got <= optimal_sse(x, k) * 1.001


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_inputs_256_clusters_are_within_0_1_percent_of_optimal(name, seed):
    x = DISTRIBUTIONS[name](np.random.default_rng(seed), 4000).astype(np.float16)
    got = sse_to_nearest(x, kmeans_1d(x[None], 256))
    assert got <= optimal_sse(x, 256) * 1.001


def test_float32_groups_beyond_exact_binning_stay_near_optimal():
    # 70,000 float32 values (past exact binning) spread inside 400 float16 bins: the clustering
    # works on bins, the error is measured on the float32 values.
    rng = np.random.default_rng(3)
    centres = rng.standard_t(3, 400).astype(np.float16).astype(np.float64)
    x = centres[rng.integers(0, 400, 70000)]
    x = (x * (1 + rng.uniform(-2e-4, 2e-4, x.size))).astype(np.float32)
    centroids = kmeans_1d(x[None], 16)
    assert sse_to_nearest(x, centroids) <= optimal_sse(x.astype(np.float16), 16) * 1.001


def test_groups_are_clustered_independently_in_one_batch():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, s, 3000) for s in (0.01, 1.0, 100.0)]).astype(np.float32)
    batched = kmeans_1d(x, 8)
    for g in range(3):
        assert sse_to_nearest(x[g], batched[g]) <= optimal_sse(x[g], 8) * 1.001


def test_deterministic():
    x = np.random.default_rng(1).standard_t(2, (4, 5000)).astype(np.float16)
    np.testing.assert_array_equal(kmeans_1d(x, 16), kmeans_1d(x, 16))


def test_few_distinct_values_are_kept_exactly():
    x = np.array([[1.0, 1.0000001, 1.0000002, 5.0, 5.0, -3.0]], dtype=np.float32)
    centroids = kmeans_1d(x, 8)
    assert set(unique_values(x).tolist()) <= set(centroids[0].astype(np.float32).tolist())


def test_zero_weight_values_do_not_pull_centroids():
    x = np.array([[0.0, 0.0, 0.0, 1.0, 2.0]])
    w = np.array([[0.0, 0.0, 0.0, 1.0, 1.0]])
    assert kmeans_1d(x, 2, weights=w)[0].tolist() == [1.0, 2.0]


@given(x=weights(max_rank=2, max_side=30), k=st.sampled_from([1, 2, 3, 8]), seed=st.integers(0, 999))
def test_assign_nearest_is_exact(x, k, seed):
    flat = x.reshape(1, -1)
    table = np.sort(np.random.default_rng(seed).choice(flat.ravel(), k)).astype(x.dtype)[None, :]
    index = assign_nearest(flat, table)
    distance = np.abs(flat.astype(np.float64)[..., None] - table.astype(np.float64)[:, None, :])
    chosen = np.take_along_axis(distance, index[..., None], axis=-1)[..., 0]
    assert (chosen <= distance.min(-1)).all()


def test_vector_kmeans_is_lossless_with_few_distinct_vectors_and_deterministic():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 2))
    x = base[rng.integers(0, 4, 200)][None]
    centroids = kmeans_vectors(x, 4)
    assert sorted(map(tuple, centroids[0].round(12))) == sorted(map(tuple, base.round(12)))
    np.testing.assert_array_equal(kmeans_vectors(x, 4), kmeans_vectors(x, 4))


@pytest.mark.parametrize("distribution", ["normal", "student_t3"])
def test_sampled_vector_kmeans_is_as_good_as_clustering_every_vector(monkeypatch, distribution):
    """Groups larger than the sample run their starts on a sample, then Lloyd on every vector:
    on average within 2% of the error of running the starts on every vector, and no group more
    than 5% worse (k-means' local optima differ by a few percent from start to start)."""
    from milcompress.ops import kmeans

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(6, 3000, 2)) if distribution == "normal" else rng.standard_t(3, size=(6, 3000, 2))) * 0.02
    w = np.ones(x.shape[:2])
    monkeypatch.setattr(kmeans, "_VECTOR_SAMPLE_MIN", 4000)
    every = kmeans._vector_error(x, w, kmeans_vectors(x, 8))
    monkeypatch.setattr(kmeans, "_VECTOR_SAMPLE_MIN", 400)
    monkeypatch.setattr(kmeans, "_VECTOR_SAMPLE_PER_CLUSTER", 8)
    ratio = kmeans._vector_error(x, w, kmeans_vectors(x, 8)) / every
    assert ratio.mean() <= 1.02 and ratio.max() <= 1.05


def test_sampled_vector_kmeans_stays_lossless_and_deterministic(monkeypatch):
    """A group of more vectors than the sample with at most k distinct ones (some too rare for
    the sample to hold) still gets each of them as an entry."""
    from milcompress.ops import kmeans

    monkeypatch.setattr(kmeans, "_VECTOR_SAMPLE_MIN", 64)
    monkeypatch.setattr(kmeans, "_VECTOR_SAMPLE_PER_CLUSTER", 4)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(6, 3))
    picks = np.concatenate([rng.integers(0, 4, 5000), [4, 5]])  # vectors 4 and 5 appear once
    x = base[picks][None]
    centroids = kmeans_vectors(x, 8)
    assert {tuple(v) for v in base.round(12)} <= {tuple(v) for v in centroids[0].round(12)}
    np.testing.assert_array_equal(centroids, kmeans_vectors(x, 8))


@given(
    x=weights(max_rank=2, max_side=40),
    seed=st.integers(0, 999),
    weighted=st.booleans(),
)
def test_sorted_histogram_matches_the_code_histogram(x, seed, weighted):
    """Float16 groups of up to 65,536 values are binned by sorting; the 65,536-slot histogram by
    float16 code, kept for larger groups, is the oracle."""
    from milcompress.ops.kmeans import _histogram, _histogram_by_code

    rng = np.random.default_rng(seed)
    rows = np.stack([x.ravel(), rng.permutation(x.ravel())]).astype(np.float16)
    w = rng.integers(0, 3, rows.shape).astype(np.float64) if weighted else None
    got, want = _histogram(rows, w), _histogram_by_code(rows, w)
    np.testing.assert_array_equal(got.count, want.count)
    for field in ("w", "s", "sc", "qc", "value"):
        scale = np.abs(getattr(want, field)).max() + 1e-300
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("k", [64, 256])
@pytest.mark.parametrize("seed", [0, 1])
def test_many_clusters_on_few_distinct_values_are_near_optimal(k, seed):
    """Groups of a few hundred distinct values (too many for the exact DP at this k) sweep every
    position between neighbouring cuts, in batches of different widths: each stays near optimal."""
    rng = np.random.default_rng(seed)
    sizes = [150, 400, 900]
    x = np.stack([np.resize(rng.standard_t(3, s) * 0.02, 1200) for s in sizes]).astype(np.float16)
    centroids = kmeans_1d(x, k)
    for g in range(len(sizes)):
        assert sse_to_nearest(x[g], centroids[g]) <= optimal_sse(x[g], k) * 1.001


@pytest.mark.parametrize("spread", ["lattice", "normal"])
def test_assign_nearest_is_exact_for_many_large_float16_groups(spread):
    # Enough groups to be split into chunks; lattice values take the per-code lookup.
    rng = np.random.default_rng(0)
    shape = (60, 5000)
    x = rng.integers(-50, 50, shape) * 0.01 if spread == "lattice" else rng.normal(0, 0.05, shape)
    x = x.astype(np.float16)
    tables = np.sort(rng.normal(0, 0.1, (60, 16)), axis=1).astype(np.float16)
    index = assign_nearest(x, tables)
    distance = np.abs(x.astype(np.float64)[..., None] - tables.astype(np.float64)[:, None, :])
    chosen = np.take_along_axis(distance, index[..., None], axis=-1)[..., 0]
    assert (chosen <= distance.min(-1)).all()


@pytest.mark.parametrize("groups", [1, 3])
def test_long_float16_rows_are_assigned_by_bit_pattern_exactly(groups):
    """Rows of 65,536 values or more are looked up per 16-bit pattern: every value at its nearest
    entry, ties (values on a midpoint) low, as the search by keys gives them."""
    rng = np.random.default_rng(1)
    x = (rng.standard_t(3, (groups, 70_000)) * 0.05).astype(np.float16)
    tables = np.sort(rng.normal(0, 0.1, (groups, 16)), axis=1).astype(np.float16)
    x[:, :15] = ((tables[:, :-1].astype(np.float64) + tables[:, 1:]) / 2).astype(np.float16)  # on (or next to) midpoints
    index = assign_nearest(x, tables)
    assert index.dtype == np.uint8 and index.shape == x.shape
    # The search by float32 order keys, in plain numpy: every value against the rounded-down midpoints.
    mids = kmeans._round_down_f32((tables[:, :-1].astype(np.float64) + tables[:, 1:]) / 2)
    mid_keys, keys = kmeans._ordered_key32(mids), kmeans._ordered_key32(x.astype(np.float32))
    expected = np.stack([np.searchsorted(mid_keys[g], keys[g], side="left") for g in range(groups)])
    np.testing.assert_array_equal(index, expected)
    distance = np.abs(x.astype(np.float64)[..., None] - tables.astype(np.float64)[:, None, :])
    assert (np.take_along_axis(distance, index[..., None].astype(np.intp), axis=-1)[..., 0] <= distance.min(-1)).all()


def test_the_per_pattern_lookup_and_the_direct_search_assign_alike(monkeypatch):
    """Long float16 rows are looked up per 16-bit pattern; with too many rows for that (a small
    chunk budget) every value is searched directly: the same indices, each at its nearest entry."""
    from milcompress.ops import kmeans

    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, (2, 70_000)) * 0.05).astype(np.float16)
    tables = np.sort(rng.normal(0, 0.1, (2, 16)), axis=1).astype(np.float16)
    by_pattern = assign_nearest(x, tables)
    monkeypatch.setattr(kmeans, "_CHUNK_ELEMENTS", 4096)
    direct = assign_nearest(x, tables)
    assert direct.dtype == np.uint8
    np.testing.assert_array_equal(direct, by_pattern)
    distance = np.abs(x.astype(np.float64)[..., None] - tables.astype(np.float64)[:, None, :])
    assert (np.take_along_axis(distance, direct[..., None].astype(np.intp), axis=-1)[..., 0] <= distance.min(-1)).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_code_histogram_in_slices_matches_the_whole(monkeypatch, dtype, weighted):
    from milcompress.ops import kmeans

    rng = np.random.default_rng(1)
    x = (rng.standard_t(3, (3, 20_000)) * 0.05).astype(dtype)
    w = rng.integers(0, 3, x.shape).astype(np.float64) if weighted else None
    whole = kmeans._histogram_by_code(x, w)
    monkeypatch.setattr(kmeans, "_CHUNK_ELEMENTS", 3000)
    sliced = kmeans._histogram_by_code(x, w)
    np.testing.assert_array_equal(sliced.count, whole.count)
    for field in ("w", "s", "sc", "qc", "value"):
        want = getattr(whole, field)
        np.testing.assert_allclose(getattr(sliced, field), want, rtol=0, atol=1e-12 * (np.abs(want).max() + 1e-300))


@given(
    x=weights(max_rank=2, max_side=40),
    k=st.sampled_from([1, 2, 3, 8]),
    seed=st.integers(0, 999),
    weighted=st.booleans(),
    by_code=st.booleans(),
)
def test_the_error_of_a_table_from_the_histogram_is_the_error_of_looking_every_value_up(x, k, seed, weighted, by_code):
    """`table_errors` reads errors off the histogram's prefix sums: for any sorted table (in the
    values' dtype), that is the error of mapping each value to its nearest entry as
    `assign_nearest` does, ties included. Float16 rows take both histograms (sorted, and by code
    as rows beyond 65,536 values do)."""
    from milcompress.ops.kmeans import _error_of_table, _histogram, _histogram_by_code

    rng = np.random.default_rng(seed)
    rows = np.stack([x.ravel(), rng.permutation(x.ravel())])
    w = rng.integers(0, 3, rows.shape).astype(np.float64) if weighted else None
    table = np.sort(rng.choice(rows.ravel(), (2, k)) * rng.choice([1.0, 1.001], (2, k)), axis=1).astype(x.dtype)
    bins = _histogram_by_code(rows, w) if by_code and x.dtype == np.float16 else _histogram(rows, w)
    got = _error_of_table(bins, table.astype(np.float64))
    index = assign_nearest(rows, table).astype(np.intp)
    noise = np.square(rows.astype(np.float64) - np.take_along_axis(table, index, axis=1).astype(np.float64))
    want = (noise if w is None else noise * w).sum(1)
    energy = (np.square(rows.astype(np.float64)) * (1 if w is None else w)).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * energy.max())


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("weighted", [False, True])
def test_table_errors_are_close_to_those_of_the_thorough_tables(name, weighted):
    """The estimate effort polishes less than `kmeans_1d`: its errors (every size from one
    histogram) stay within 3% of those of kmeans_1d's tables; with a few far outliers, within 15%
    (the batched greedy start spends splits on them that one fine polish does not win back: 64
    clusters, 12% measured). Its energies are exact."""
    rng = np.random.default_rng(11)
    x = np.stack([DISTRIBUTIONS[name](rng, 6000) for _ in range(2)]).astype(np.float16)
    w = rng.uniform(0, 2, x.shape) if weighted else None
    ks = (256, 64, 16, 8, 4)
    errors, energy = table_errors(x, ks, w)
    np.testing.assert_allclose(energy, (np.square(x.astype(np.float64)) * (1 if w is None else w)).sum(1), rtol=1e-12)
    bound = 1.15 if name == "outliers" else 1.03
    for row, k in zip(errors, ks):
        tables = kmeans_1d(x, k, w).astype(np.float16)
        thorough = np.array([sse_to_nearest(x[g], tables[g], None if w is None else w[g]) for g in range(2)])
        assert np.all(row <= thorough * bound + 1e-12 * energy), (k, row / thorough)


def test_table_errors_of_small_groups_are_the_optimum():
    """Groups small enough for the exact DP get the optimal tables at the estimate effort too."""
    x = np.random.default_rng(5).standard_t(3, (3, 200)).astype(np.float16)
    errors, _ = table_errors(x, (16, 4), dtype=np.float32)  # float32 tables: no rounding of the optimum
    for row, k in zip(errors, (16, 4)):
        np.testing.assert_allclose(row, [optimal_sse(x[g], k) for g in range(3)], rtol=1e-6)


@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    mask=st.lists(st.booleans(), min_size=3, max_size=3),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 999),
)
@settings(max_examples=60, deadline=None)
def test_the_outlier_scale_is_the_weighted_mean_square_whatever_the_weights_broadcast_along(shape, mask, dtype, seed):
    from milcompress.ops.kmeans import outlier_scale

    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(shape) * 3).astype(dtype)
    weights_shape = [size if keep else 1 for size, keep in zip(shape, mask)]  # one weight per slice along some axes
    weights = rng.random(weights_shape)
    full = np.broadcast_to(weights, values.shape).astype(np.float64)
    expected = float((full * values.astype(np.float64) ** 2).sum() / full.sum())
    assert outlier_scale(values, weights) == pytest.approx(expected if expected > 0 else 1.0, rel=1e-9)
    assert outlier_scale(values, full) == pytest.approx(expected if expected > 0 else 1.0, rel=1e-9)
    assert outlier_scale(values) == pytest.approx(float((values.astype(np.float64) ** 2).mean()) or 1.0, rel=1e-9)
