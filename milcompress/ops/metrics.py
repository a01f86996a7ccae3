"""Error measures of a compressed tensor against the original. Computed in float64."""

from __future__ import annotations

import math

import numpy as np


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio in dB: 10 log10(sum(x^2) / sum((x - y)^2)); inf when exact."""
    x = np.asarray(reference, dtype=np.float64)
    error = float(np.sum((x - np.asarray(approximation, dtype=np.float64)) ** 2))
    signal = float(np.sum(x * x))
    if error == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / error)


def bits_per_weight(nbytes: int, count: int) -> float:
    return 8.0 * nbytes / count
