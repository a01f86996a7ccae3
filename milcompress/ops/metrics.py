"""Error measures of a compressed tensor against the original, accumulated in float64."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from milcompress.ops._arrays import row_slices


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio in dB: 10 log10(sum(x^2) / sum((x - y)^2)); inf when exact, -inf
    for an all-zero x that y misses (see `noise_to_signal`)."""
    ratio = noise_to_signal(reference, approximation)
    return math.inf if ratio == 0 else -math.inf if math.isinf(ratio) else -10.0 * math.log10(ratio)


def bits_per_weight(nbytes: int, count: int) -> float:
    return 8.0 * nbytes / count


def noise_to_signal(reference: np.ndarray, approximation: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """sum(w (y - x)^2) / sum(w x^2), `weights` w >= 0 broadcasting over x (1 when None); 0 for an
    all-zero x that y matches, inf where it does not.

    Slice by slice, summed in float64. For float16 x the products are formed in float32, at a
    fraction of float64's cost (the size allocation computes this for every candidate form of
    every weight): float16 values, their squares and their differences are exact or within
    2**-24 in float32 (no float16 square under- or overflows it), and w is scaled to at most 1
    first (the ratio does not change), so the result is within about 1e-6 of the float64 one.
    """
    x = np.asarray(reference).reshape(np.shape(reference) or (1,))
    y = np.asarray(approximation).reshape(x.shape)
    work = np.float32 if x.dtype == np.float16 else np.float64
    w = None
    if weights is not None:
        peak = float(np.max(weights)) if np.size(weights) else 0.0
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64) / (peak if peak > 0 else 1.0), x.shape)
    noise = signal = 0.0
    for rows in row_slices(x.shape):
        xs = x[rows].astype(work)  # a copy: squared in place below
        d = y[rows].astype(work) - xs
        d *= d
        xs *= xs
        if w is not None:
            ws = w[rows].astype(work)
            d *= ws
            xs *= ws
        noise += float(d.sum(dtype=np.float64))
        signal += float(xs.sum(dtype=np.float64))
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
