"""Planted outliers: no palette clips an isolated extreme weight.

An LLM's "super weights" (Yu et al., 2024) are a handful of values 15 or more standard deviations
out in a tensor of a million; a least-squares table spends no entry on them and clips them, which
destroys the model while the weight's SNR still looks healthy. Every palettization mode and
granularity must keep them: with at most a quarter as many well-separated outliers as table
entries among many ordinary weights, no outlier may be farther from its entry than the worst
ordinary weight of its group is from its own (the table's resolution there; for an evenly
spaced table, half its step).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress.config import JointConfig, MagnitudePruneConfig, PalettizeConfig
from milcompress.ops import compress
from milcompress.ops.palettize import palettize

LAYOUTS = {
    "per tensor": {},
    "per group of 8": {"granularity": "per_grouped_channel", "group_size": 8},
    "vectors of 2": {"cluster_dim": 2},
    "per-channel scale": {"enable_per_channel_scale": True},
    "uniform": {"mode": "uniform"},
}


def planted(rng: np.random.Generator, rows: int, columns: int, count: int, dtype) -> tuple:
    """A [rows, columns] weight of N(0, 0.02) values with `count` (at most 9) outliers in row 0, at 12 to 61
    standard deviations, each at least 6 from the others, with random signs; and their positions."""
    w = rng.normal(0.0, 0.02, (rows, columns))
    magnitudes = 12 + 6 * np.sort(rng.choice(9, size=count, replace=False)) + rng.random(count)
    positions = rng.choice(columns, size=count, replace=False)
    w[0, positions] = 0.02 * magnitudes * rng.choice([-1.0, 1.0], size=count)
    return w.astype(dtype), [(0, int(p)) for p in positions]


def worst_ordinary_error(w: np.ndarray, back: np.ndarray, outliers, rows) -> float:
    error = np.abs(back.astype(np.float64) - w.astype(np.float64))[rows]
    for r, c in outliers:
        if rows.start <= r < rows.stop:
            error[r - rows.start, c] = 0.0
    return float(error.max())


@settings(max_examples=25, deadline=None)
@given(
    layout=st.sampled_from(sorted(LAYOUTS)),
    nbits=st.sampled_from([2, 3, 4, 6]),
    share=st.floats(0.0, 1.0),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_no_palette_clips_a_planted_outlier(layout, nbits, share, dtype, seed):
    rng = np.random.default_rng(seed)
    count = 1 + int(share * (min(8, (1 << nbits) // 4) - 1))
    w, outliers = planted(rng, 16, 256, count, dtype)
    config = PalettizeConfig(nbits=nbits, **LAYOUTS[layout])
    params = palettize(w, config)
    back = params.decompress()
    # With per-channel scales the table serves the scaled weights: compare there.
    unit = np.ones(w.shape) if params.scale is None else np.broadcast_to(params.scale.astype(np.float64), w.shape)
    w, back = w / unit, back / unit
    group = slice(0, 8) if config.granularity == "per_grouped_channel" else slice(0, 16)
    resolution = worst_ordinary_error(w, back, outliers, group)
    if config.mode == "uniform":  # evenly spaced: its resolution is half its step, everywhere
        resolution = max(resolution, float(np.diff(params.lut.reshape(-1).astype(np.float64)).max()) / 2)
    for r, c in outliers:
        lost = abs(float(back[r, c]) - float(w[r, c]))
        rounding = float(np.spacing(np.float16(abs(w[r, c])))) * 2  # tables and scales are float16
        assert lost <= resolution + rounding, f"outlier {w[r, c]} at {(r, c)} came back as {back[r, c]}; ordinary weights lose at most {resolution}"


@settings(max_examples=10, deadline=None)
@given(nbits=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_joint_pruning_then_palettes_keeps_a_planted_outlier(nbits, seed):
    rng = np.random.default_rng(seed)
    w, outliers = planted(rng, 16, 256, 1, np.float16)
    params = compress(w, JointConfig(MagnitudePruneConfig(target_sparsity=0.5), PalettizeConfig(nbits=nbits)))
    back = params.decompress()
    kept = back != 0
    error = np.where(kept, np.abs(back.astype(np.float64) - w.astype(np.float64)), 0.0)
    (r, c), = outliers
    lost = error[r, c]
    error[r, c] = 0.0
    assert lost <= error.max()


def test_the_least_squares_table_clips_what_the_outlier_aware_one_keeps():
    """The difference is the objective, not luck: coremltools' least-squares table (our
    outlier_aware=False) clips a lone value 15 standard deviations out among a million, as in
    SmolLM2's down projections, to the bulk's edge."""
    rng = np.random.default_rng(0)
    w, ((r, c),) = planted(rng, 512, 2048, 1, np.float16)
    w[r, c] = np.float16(0.3)
    plain = palettize(w, PalettizeConfig(nbits=4, outlier_aware=False)).decompress()
    aware = palettize(w, PalettizeConfig(nbits=4)).decompress()
    assert abs(float(plain[r, c]) - 0.3) > 0.15
    assert abs(float(aware[r, c]) - 0.3) < 0.01


@pytest.mark.parametrize("granularity", [{}, {"granularity": "per_grouped_channel", "group_size": 4}])
def test_outlier_aware_tables_cost_little_on_ordinary_weights(granularity):
    """On Gaussian weights, with nothing to protect, the outlier-aware table's squared error is
    within 2% of the least-squares table's."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 512)).astype(np.float16)
    config = PalettizeConfig(nbits=4, **granularity)

    def error(c):
        return float(((palettize(w, c).decompress().astype(np.float64) - w) ** 2).sum())

    assert error(config) <= 1.02 * error(dataclasses.replace(config, outlier_aware=False))


def test_a_clipped_outlier_is_named_and_an_ordinary_error_is_not():
    from milcompress.ops.metrics import clipped_outlier

    rng = np.random.default_rng(2)
    w, ((r, c),) = planted(rng, 512, 2048, 1, np.float16)
    w[r, c] = np.float16(0.3)
    plain = palettize(w, PalettizeConfig(nbits=4, outlier_aware=False)).decompress()
    index, original, back = clipped_outlier(w, plain)
    assert index == (r, c) and original == pytest.approx(0.3, abs=1e-3) and back < 0.15
    assert clipped_outlier(w, palettize(w, PalettizeConfig(nbits=4)).decompress()) is None
    # Uniform rounding error everywhere is no clipped outlier, however coarse.
    assert clipped_outlier(w, np.round(w.astype(np.float64) * 10) / 10) is None
