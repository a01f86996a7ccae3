import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from milcompress.config import PalettizeConfig
from milcompress.errors import ConfigError, NotCompressible
from milcompress.ops.palettize import LutParams, palettize
from milcompress.ops._arrays import unique_values
from tests.strategies import weights

NBITS = st.sampled_from([1, 2, 3, 4, 6, 8])


def _assert_nearest(w, params):
    """No weight is farther from its table entry than from any other entry of its table."""
    options = params.table_of_each_index()[..., 0].astype(np.float64)
    distance = np.abs(w.astype(np.float64)[..., None] - options)
    chosen = np.take_along_axis(distance, params.indices[..., None].astype(np.int64), axis=-1)[..., 0]
    assert (chosen <= distance.min(-1)).all()


@given(w=weights(), nbits=NBITS, mode=st.sampled_from(["kmeans", "uniform"]), data=st.data())
def test_scalar_tables_map_every_weight_to_its_nearest_entry(w, nbits, mode, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    channels = w.shape[axis]
    group = data.draw(st.sampled_from([d for d in range(1, channels + 1) if channels % d == 0]))
    config = PalettizeConfig(nbits=nbits, mode=mode, granularity="per_grouped_channel", group_size=group)
    params = palettize(w, config, channel_axis=axis)
    expected_lut = [1] * w.ndim + [1 << nbits, 1]
    expected_lut[axis] = channels // group
    assert params.lut.shape == tuple(expected_lut) and params.vector_axis is None
    assert params.lut.dtype == w.dtype and params.indices.dtype == np.uint8
    assert params.indices.shape == w.shape and params.indices.max() < 1 << nbits
    dense = params.decompress()
    assert dense.shape == w.shape and dense.dtype == w.dtype
    _assert_nearest(w, params)


@given(w=weights(), nbits=NBITS)
def test_kmeans_is_lossless_when_the_table_can_hold_every_value(w, nbits):
    assume(len(unique_values(w)) <= 1 << nbits)
    params = palettize(w, PalettizeConfig(nbits=nbits))
    np.testing.assert_array_equal(params.decompress(), w)


@given(w=weights(), nbits=NBITS)
def test_uniform_tables_hold_zero_and_are_evenly_spaced(w, nbits):
    params = palettize(w, PalettizeConfig(nbits=nbits, mode="uniform"))
    table = params.lut.reshape(-1).astype(np.float64)
    assert 0.0 in table
    steps = np.diff(table)
    assert (steps >= 0).all()
    if steps.max() > 0 and w.dtype == np.float32:
        np.testing.assert_allclose(steps, steps.max(), rtol=1e-5, atol=np.abs(table).max() * 1e-6)
    _assert_nearest(w, params)


def test_uniform_beats_a_table_without_zero_on_heavy_tails():
    rng = np.random.default_rng(0)
    w = (rng.standard_t(1.2, 20000) * 0.01).astype(np.float16).reshape(100, 200)
    params = palettize(w, PalettizeConfig(nbits=4, mode="uniform"))
    dense = params.decompress()
    # Small weights (most of them) decode to exactly 0 rather than to a far table entry.
    small = np.abs(w) < 0.5 * np.abs(np.diff(params.lut.reshape(-1).astype(np.float64))).max()
    assert (dense[small] == 0).mean() > 0.99


@given(w=weights(), grouped=st.booleans())
def test_unique_is_lossless_or_refuses(w, grouped):
    config = PalettizeConfig(mode="unique", granularity="per_grouped_channel" if grouped else "per_tensor", group_size=1)
    distinct = max(len(unique_values(g)) for g in (w.reshape(w.shape[0], -1) if grouped else w.reshape(1, -1)))
    if distinct > 256:
        with pytest.raises(NotCompressible, match="distinct values"):
            palettize(w, config)
        return
    params = palettize(w, config)
    np.testing.assert_array_equal(params.decompress(), w)
    assert params.nbits == min(b for b in (1, 2, 3, 4, 6, 8) if 1 << b >= distinct)


def test_unique_with_too_small_a_table_refuses():
    with pytest.raises(NotCompressible, match="5 distinct values in a group do not fit a 2-bit table"):
        palettize(np.arange(5, dtype=np.float32).reshape(5, 1), PalettizeConfig(mode="unique", nbits=2))


@given(w=weights(min_rank=2), nbits=st.sampled_from([1, 2, 4]), dim=st.sampled_from([2, 3]), data=st.data())
def test_vector_tables_fill_consecutive_channels(w, nbits, dim, data):
    assume(w.shape[0] % dim == 0)
    params = palettize(w, PalettizeConfig(nbits=nbits, cluster_dim=dim))
    assert params.lut.shape == (1,) * w.ndim + (1 << nbits, dim) and params.vector_axis == 0
    assert params.indices.shape == (w.shape[0] // dim,) + w.shape[1:] and params.shape == w.shape
    dense = params.decompress()
    expected = params.lut.reshape(1 << nbits, dim)[params.indices.astype(np.int64)]  # [C/d, ..., d]
    expected = np.moveaxis(expected, -1, 1).reshape(w.shape)
    np.testing.assert_array_equal(dense, expected)


def test_vector_tables_are_lossless_with_few_distinct_vectors():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 2)).astype(np.float32)
    w = vectors[rng.integers(0, 4, (8, 6))]  # [8, 6, 2]: vector along the last axis
    w = np.moveaxis(w, -1, 1).reshape(16, 6)  # consecutive channel pairs form the vectors
    params = palettize(w, PalettizeConfig(nbits=2, cluster_dim=2))
    np.testing.assert_array_equal(params.decompress(), w)


@given(w=weights(min_rank=2), nbits=st.sampled_from([2, 4, 8]))
def test_per_channel_scale(w, nbits):
    params = palettize(w, PalettizeConfig(nbits=nbits, enable_per_channel_scale=True))
    assert params.scale.shape == (1,) + w.shape[1:] and params.scale.dtype == w.dtype
    peak = np.abs(w.astype(np.float64)).max(axis=0, keepdims=True)
    assert (np.abs(params.lut.astype(np.float64)) <= 1.0).all()
    assert (params.scale.astype(np.float64) >= np.where(peak > 0, peak, 1.0)).all()
    unscaled = LutParams(params.indices, params.lut).decompress()
    np.testing.assert_array_equal(params.decompress(), unscaled * params.scale)


def test_per_channel_scale_helps_input_columns_of_very_different_size():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(256, 16)) * np.logspace(-3, 0, 16)[None, :]).astype(np.float32)
    plain = palettize(w, PalettizeConfig(nbits=4)).decompress()
    scaled = palettize(w, PalettizeConfig(nbits=4, enable_per_channel_scale=True)).decompress()
    relative = lambda d: np.mean(np.abs(d - w).mean(0) / np.abs(w).mean(0))  # noqa: E731
    assert relative(scaled) < relative(plain) / 3


def test_custom_function_receives_each_group_and_its_table_is_used():
    seen = []

    def lut_function(group):
        seen.append(group.shape)
        table = np.array([group.min(), group.max()])
        return table, (group.reshape(-1) > group.mean()).astype(np.int64)

    w = np.random.default_rng(0).normal(size=(4, 3, 2)).astype(np.float32)
    config = PalettizeConfig(mode="custom", lut_function=lut_function, granularity="per_grouped_channel", group_size=2)
    params = palettize(w, config)
    assert seen == [(2, 3, 2), (2, 3, 2)] and params.nbits == 1
    for g in range(2):
        part = w[2 * g : 2 * g + 2]
        expected = np.where(part > part.mean(), part.max(), part.min())
        np.testing.assert_array_equal(params.decompress()[2 * g : 2 * g + 2], expected)


@pytest.mark.parametrize(
    "result, message",
    [
        ((np.zeros(2), np.zeros(3, np.int64)), "returned 3 indices for 4 weights"),
        ((np.zeros(2), np.full(4, 2)), r"integers in \[0, 1\]"),
        ((np.zeros(300), np.zeros(4, np.int64)), "at most 256"),
        ((np.array([np.nan, 0]), np.zeros(4, np.int64)), "non-finite"),
    ],
)
def test_custom_function_results_are_checked(result, message):
    config = PalettizeConfig(mode="custom", lut_function=lambda g: result)
    with pytest.raises(ConfigError, match=message):
        palettize(np.ones((2, 2), np.float32), config)


def test_group_size_that_does_not_divide_names_the_largest_that_does():
    config = PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16)
    with pytest.raises(NotCompressible, match=r"1000 channels on axis 0 are not divisible by group_size 16 .* is 10\)"):
        palettize(np.ones((1000, 4), np.float16), config)


def test_config_channel_axis_overrides_the_op_axis():
    w = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    config = PalettizeConfig(nbits=2, granularity="per_grouped_channel", group_size=2, channel_axis=1)
    params = palettize(w, config, channel_axis=0)
    assert params.lut.shape == (1, 4, 4, 1)


def test_importance_zero_weights_do_not_shape_the_table():
    w = np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0]], dtype=np.float32).T
    importance = (w != 0).astype(np.float64)
    params = palettize(w, PalettizeConfig(nbits=1), importance=importance)
    assert sorted(params.lut.reshape(-1).tolist()) == [1.0, 2.0]


def test_nbytes():
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float16)
    params = palettize(w, PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16))
    assert params.nbytes == 64 * 64 // 2 + 4 * 16 * 2


@given(
    w=weights(min_rank=2, max_rank=3, max_side=7),  # at most 343 values: the exact DP's size for 16 entries
    bits=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=3, unique=True),
    grouped=st.booleans(),
    axis_last=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_estimates_are_the_size_and_error_of_the_palettes_where_kmeans_is_exact(w, bits, grouped, axis_last, weighted, seed):
    """Groups this small get the exact DP at either effort: each estimate's bytes, tables and
    (importance-weighted) noise-to-signal ratio are those of `palettize`'s form."""
    from milcompress.lowering import required_target
    from milcompress.ops.kmeans import outlier_scale
    from milcompress.ops.metrics import noise_to_signal
    from milcompress.ops.palettize import estimate_palettes

    rng = np.random.default_rng(seed)
    axis = w.ndim - 1 if axis_last else 0
    group = next(d for d in (3, 2, 1) if w.shape[axis] % d == 0) if grouped else None
    configs = [PalettizeConfig(nbits=n, **({"granularity": "per_grouped_channel", "group_size": group} if grouped else {})) for n in bits]
    importance = rng.random(w.shape) if weighted else None
    estimates = estimate_palettes(w, configs, channel_axis=axis, importance=importance)
    for config, estimate in zip(configs, estimates):
        params = palettize(w, config, channel_axis=axis, importance=importance)
        assert (estimate.nbytes, estimate.tables, estimate.nbits, estimate.sampled) == (params.nbytes, params.tables, params.nbits, None)
        assert required_target(estimate) == required_target(params)
        exact = noise_to_signal(w, params.decompress(), importance, outlier_scale=outlier_scale(w, importance))
        assert estimate.error == pytest.approx(exact, rel=1e-6, abs=1e-12)


@given(
    nbits=st.sampled_from([2, 4]),
    groups=st.integers(40, 90),
    rest=st.sampled_from([(7,), (3, 5)]),
    axis_last=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_palette_of_many_groups_is_estimated_on_evenly_spaced_groups_and_sized_whole(nbits, groups, rest, axis_last, weighted, seed):
    """Past `sample_values`, the error is that of MIN_SAMPLE_GROUPS evenly spaced groups (each
    group's table depends on its own weights and, outlier-aware, on the whole tensor's mean
    square), and the size is the whole palette's."""
    from milcompress.ops.kmeans import outlier_scale, table_errors
    from milcompress.ops.palettize import MIN_SAMPLE_GROUPS, _group_weights, _to_groups, estimate_palettes

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((groups * 2, *rest)).astype(np.float16)
    importance = rng.random(w.shape) if weighted else None
    if axis_last:
        w = np.moveaxis(w, 0, -1)
        importance = None if importance is None else np.moveaxis(importance, 0, -1)
    axis = w.ndim - 1 if axis_last else 0
    config = PalettizeConfig(nbits=nbits, granularity="per_grouped_channel", group_size=2)
    (sampled,) = estimate_palettes(w, [config], channel_axis=axis, importance=importance, sample_values=1)
    assert sampled.sampled == MIN_SAMPLE_GROUPS and sampled.tables == groups
    assert sampled.nbytes == palettize(w, config, channel_axis=axis).nbytes
    rows = ((np.arange(MIN_SAMPLE_GROUPS) * groups // MIN_SAMPLE_GROUPS)[:, None] * 2 + np.arange(2)).reshape(-1)
    part = None if importance is None else np.take(importance, rows, axis=axis)
    plain = dataclasses.replace(config, outlier_aware=False)
    (alone,) = estimate_palettes(np.take(w, rows, axis=axis), [plain], channel_axis=axis, importance=part)
    assert estimate_palettes(w, [plain], channel_axis=axis, importance=importance, sample_values=1)[0].error == alone.error
    # Outlier-aware: the sampled groups' errors relative to the whole tensor's mean square.
    values = _to_groups(np.take(w, rows, axis=axis), axis, MIN_SAMPLE_GROUPS, 1)[..., 0]
    weights = None if part is None else _group_weights(part, part.shape, axis, MIN_SAMPLE_GROUPS, 1)
    errors, energy = table_errors(values, [1 << nbits], weights, outlier_scale=outlier_scale(w, importance))
    assert sampled.error == pytest.approx(errors.sum() / energy.sum(), rel=1e-12)


@pytest.mark.parametrize(
    "configs",
    [
        [PalettizeConfig(nbits=4, mode="uniform")],
        [PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=2, cluster_dim=2)],
        [PalettizeConfig(nbits=4, enable_per_channel_scale=True)],
        [PalettizeConfig(nbits=4, mode="unique", granularity="auto")],
        [PalettizeConfig(nbits=4), PalettizeConfig(nbits=2, granularity="per_grouped_channel", group_size=2)],
        [],
    ],
)
def test_estimates_take_only_kmeans_scalar_palettes_of_one_layout(configs):
    from milcompress.ops.palettize import estimate_layout, estimate_palettes

    w = np.random.default_rng(0).standard_normal((32, 6)).astype(np.float16)
    if len(configs) == 1:
        assert estimate_layout(configs[0]) is None
    with pytest.raises(ValueError):
        estimate_palettes(w, configs)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_grouped_channel"])
def test_large_tensors_decompress_slice_by_slice_alike(monkeypatch, granularity):
    from milcompress.ops import _arrays

    w = (np.random.default_rng(4).normal(size=(16, 12, 3)) * 0.1).astype(np.float16)
    params = palettize(w, PalettizeConfig(nbits=3, granularity=granularity, group_size=4), channel_axis=0)
    dense = params.decompress()
    monkeypatch.setattr(_arrays, "WORK_ELEMENTS", 50)
    np.testing.assert_array_equal(params.decompress(), dense)
    assert dense.dtype == w.dtype and dense.shape == w.shape


@given(
    nbits=st.sampled_from([1, 2, 4, 6]),
    groups=st.integers(1, 60),
    rest=st.sampled_from([(5,), (3, 7), (40,)]),
    group_size=st.sampled_from([None, 1, 2]),
    sample=st.booleans(),
    weighted=st.booleans(),
    heavy_tailed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_palette_built_from_its_estimate_is_the_form_weighed(nbits, groups, rest, group_size, sample, weighted, heavy_tailed, seed):
    """`palettize_estimated` writes the estimate's own tables (clustering only the groups a sampled
    estimate left out, as the estimate would): the bytes are the estimate's, every weight maps to
    its nearest entry, and unsampled, the error is exactly the estimate's."""
    from milcompress.ops.kmeans import outlier_scale
    from milcompress.ops.metrics import noise_to_signal
    from milcompress.ops.palettize import MIN_SAMPLE_GROUPS, estimate_palettes, palettize_estimated

    rng = np.random.default_rng(seed)
    size = 1 if group_size is None else group_size
    shape = (groups * size, *rest)
    w = (rng.standard_t(2, shape) if heavy_tailed else rng.standard_normal(shape)).astype(np.float16)
    importance = rng.random(shape) if weighted else None
    config = PalettizeConfig(nbits=nbits) if group_size is None else PalettizeConfig(nbits=nbits, granularity="per_grouped_channel", group_size=size)
    (estimate,) = estimate_palettes(w, [config], importance=importance, sample_values=1 if sample else None)
    params = palettize_estimated(w, config, estimate, importance=importance)
    assert params.nbytes == estimate.nbytes and params.tables == estimate.tables
    _assert_nearest(w, params)
    measured = np.arange(estimate.tables) if estimate.groups is None else estimate.groups
    assert np.array_equal(params.lut.reshape(estimate.tables, -1)[measured], estimate.lut)
    assert (estimate.sampled is not None) == (sample and group_size is not None and groups > MIN_SAMPLE_GROUPS)
    if estimate.sampled is None:
        exact = noise_to_signal(w, params.decompress(), importance, outlier_scale=outlier_scale(w, importance))
        assert exact == pytest.approx(estimate.error, rel=1e-6, abs=1e-12)


def test_a_palette_built_from_an_estimate_needs_one():
    from milcompress.ops.palettize import estimate_palettes, palettize_estimated

    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float16)
    (estimate,) = estimate_palettes(w, [PalettizeConfig(nbits=2)])
    with pytest.raises(ValueError, match="estimate_palettes"):
        palettize_estimated(w, PalettizeConfig(nbits=2, mode="uniform"), estimate)


@given(axis=st.integers(0, 2), vector=st.sampled_from([1, 2]), groups=st.sampled_from([1, 2]), seed=st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_grouped_importance_is_the_grouped_layout_of_the_broadcast_importance(axis, vector, groups, seed):
    from milcompress.ops.palettize import _group_weights, _to_groups

    rng = np.random.default_rng(seed)
    shape = [3, 5, 7]
    shape[axis] = 4
    per_channel = [1, 1, 1]
    per_channel[(axis + 1) % 3] = shape[(axis + 1) % 3]
    importance = rng.random(per_channel)  # one per input channel, as the size allocation has it
    expected = _to_groups(np.broadcast_to(importance, shape).astype(np.float64), axis, groups, vector).mean(-1)
    found = _group_weights(importance, tuple(shape), axis, groups, vector)
    assert found.dtype == np.float32 and found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-6)


def test_a_per_tensor_palette_weighted_per_input_channel_needs_no_float64_copy_of_the_weight():
    """A large embedding's per-tensor palette with activation-weighted k-means (the size
    allocation's sensitivity probe) took 30 bytes of work arrays per element: 1.3 GB for a
    43M-element embedding, 4 GB at 8B parameters."""
    import tracemalloc

    w = (np.random.default_rng(0).standard_normal((2000, 1000)) * 0.02).astype(np.float16)
    importance = np.broadcast_to(np.random.default_rng(1).random((1, 1000)), w.shape)
    tracemalloc.start()
    try:
        params = palettize(w, PalettizeConfig(nbits=4), channel_axis=0, importance=importance)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert params.indices.shape == w.shape
    assert peak < 16 * w.size, f"{peak / w.size:.1f} bytes per element"
