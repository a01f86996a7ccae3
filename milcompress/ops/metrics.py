"""Error measures of a compressed tensor against the original. Computed in float64."""

from __future__ import annotations

import math

import numpy as np


_CHUNK = 1 << 18  # float64 temporaries stay a few MB, whatever the tensor's size


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio in dB: 10 log10(sum(x^2) / sum((x - y)^2)); inf when exact."""
    x, y = np.ravel(reference), np.ravel(approximation)
    error = signal = 0.0
    for start in range(0, x.size, _CHUNK):
        xs = x[start : start + _CHUNK].astype(np.float64)
        ys = y[start : start + _CHUNK].astype(np.float64)
        signal += float(np.dot(xs, xs))
        ys -= xs
        error += float(np.dot(ys, ys))
    if error == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / error)


def bits_per_weight(nbytes: int, count: int) -> float:
    return 8.0 * nbytes / count
