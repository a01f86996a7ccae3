"""Activation quantization parameters and range estimators (pure numpy), and the histogram the
calibration observer keeps for them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from milcompress.ops.activations import activation_qparams, estimated_range, quantize_dequantize
from milcompress.reference.statistics import ActivationRanges

modes = st.sampled_from(["linear_symmetric", "linear"])
dtypes = st.sampled_from(["int8", "uint8"])


@given(low=st.floats(-1e4, 1e4), width=st.floats(1e-3, 1e4), mode=modes, dtype=dtypes, fraction=st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_values_inside_the_range_are_within_half_a_step_and_zero_is_exact(low, width, mode, dtype, fraction):
    high = low + width
    params = activation_qparams(low, high, mode, dtype)
    values = low + width * np.array(fraction)
    error = np.abs(quantize_dequantize(values, params) - values)
    scale = float(params.scale)
    # Half a step, plus float16 rounding of the range (coremltools' arithmetic) at the ends.
    assert np.all(error <= scale / 2 + 2e-3 * max(abs(low), abs(high)) + 1e-6)
    assert quantize_dequantize(np.zeros(1), params)[0] == 0.0


@pytest.mark.parametrize("mode", ["linear_symmetric", "linear"])
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_a_range_of_zeros_gets_scale_one(mode, dtype):
    params = activation_qparams(0.0, 0.0, mode, dtype)
    assert float(params.scale) == 1.0
    assert quantize_dequantize(np.array([0.0, 0.4]), params).tolist() == [0.0, 0.0]


def test_bad_ranges_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="int8 or uint8"):
        activation_qparams(0, 1, dtype="int4")
    with pytest.raises(ValueError, match="finite"):
        activation_qparams(0, float("inf"))
    with pytest.raises(ValueError, match="estimator"):
        estimated_range(0, 1, None, 1.0, "kl")


@given(scales=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_the_histogram_grows_without_losing_a_value(scales, seed):
    """Runs of growing spread: the histogram (its span doubling as needed) equals one computed
    at the end over the final span, and holds every value."""
    rng = np.random.default_rng(seed)
    observer = ActivationRanges(["a"], histogram_bins=256)
    seen = []
    for scale in scales:
        values = rng.standard_normal(200) * scale
        observer.observe("a", torch.from_numpy(values))
        seen.append(values)
    record = observer.records["a"]
    everything = np.concatenate(seen)
    assert record.counts.sum() == everything.size
    assert record.rmin == everything.min() and record.rmax == everything.max()
    assert record.limit >= np.abs(everything).max()
    direct, _ = np.histogram(everything, bins=256, range=(-record.limit, record.limit))
    assert np.abs(direct - record.counts).sum() <= 2  # values on a bin edge may fall either way


def test_non_finite_values_are_counted_not_ranged():
    observer = ActivationRanges(["a"])
    observer.observe("a", torch.tensor([1.0, float("inf"), -2.0, float("nan")]))
    assert (observer.records["a"].rmin, observer.records["a"].rmax) == (-2.0, 1.0)
    assert observer.nonfinite == {"a": 2}


@pytest.mark.parametrize("mode", ["linear_symmetric", "linear"])
def test_clipping_estimators_beat_min_max_on_heavy_tails(mode):
    """Student-t activations (a few huge values): the MSE range gives a smaller quantization error
    than min/max on the same values; the percentile range holds all but about 0.01% of the
    values at each end (not always a smaller error: clipped tails cost); on uniform values MSE
    keeps nearly all of min/max."""
    rng = np.random.default_rng(0)
    values = rng.standard_t(3, 200_000)
    observer = ActivationRanges(["a"], histogram_bins=2048)
    observer.observe("a", torch.from_numpy(values))
    r = observer.records["a"]

    def error(estimator):
        low, high = estimated_range(r.rmin, r.rmax, r.counts, r.limit, estimator, mode, "int8")
        assert r.rmin <= low <= high <= r.rmax
        return np.mean((quantize_dequantize(values, activation_qparams(low, high, mode, "int8")) - values) ** 2)

    assert error("mse") < 0.75 * error("minmax")
    low, high = estimated_range(r.rmin, r.rmax, r.counts, r.limit, "percentile", mode, "int8", percentile=99.99)
    outside = np.mean(values < low) + np.mean(values > high)
    assert 0 < outside <= 2.5e-4 and high < r.rmax and low > r.rmin

    uniform = rng.uniform(-1, 1, 100_000)
    observer = ActivationRanges(histogram_bins=2048)
    observer.observe("u", torch.from_numpy(uniform))
    u = observer.records["u"]
    low, high = estimated_range(u.rmin, u.rmax, u.counts, u.limit, "mse", mode, "int8")
    assert high >= 0.95 * u.rmax
