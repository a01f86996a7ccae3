"""Error measures against float64 computations of the same formulas."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress.ops import _arrays
from milcompress.ops.metrics import noise_to_signal, snr_db
from tests.strategies import weights


def _float64_ratio(x, y, w=None):
    x, y = x.astype(np.float64), y.astype(np.float64)
    w = np.ones_like(x) if w is None else np.broadcast_to(w, x.shape).astype(np.float64)
    noise, signal = float(np.sum(w * (y - x) ** 2)), float(np.sum(w * x**2))
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


@given(x=weights(min_rank=2), seed=st.integers(0, 999), weighted=st.booleans())
def test_noise_to_signal_matches_float64(x, seed, weighted):
    rng = np.random.default_rng(seed)
    y = (x.astype(np.float64) + rng.normal(0, 0.1, x.shape) * np.abs(x).max()).astype(x.dtype)
    w = rng.uniform(0, 4, (1, x.shape[1]) + (1,) * (x.ndim - 2)) if weighted else None
    want = _float64_ratio(x, y, w)
    got = noise_to_signal(x, y, w)
    assert got == pytest.approx(want, rel=1e-5) or (math.isinf(got) and math.isinf(want))


def test_noise_to_signal_edge_cases_and_slices(monkeypatch):
    zeros = np.zeros((3, 4), np.float16)
    assert noise_to_signal(zeros, zeros) == 0.0
    assert noise_to_signal(zeros, zeros + np.float16(1)) == math.inf
    x = np.random.default_rng(0).normal(size=(40, 7)).astype(np.float16)
    y = (x * np.float16(1.01)).astype(np.float16)
    whole = noise_to_signal(x, y)
    monkeypatch.setattr(_arrays, "WORK_ELEMENTS", 10)  # slices of one row
    assert noise_to_signal(x, y) == pytest.approx(whole, rel=1e-12)
    assert x.dtype == np.float16 and np.array_equal(y, (x * np.float16(1.01)).astype(np.float16))  # inputs untouched
    assert 10 * math.log10(1 / whole) == pytest.approx(snr_db(x, y), abs=1e-5)


def test_float32_inputs_are_not_squared_in_place():
    x = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    before = x.copy()
    noise_to_signal(x, x * 0.5)
    np.testing.assert_array_equal(x, before)
