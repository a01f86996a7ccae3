"""Error measures of a compressed tensor against the original, accumulated in float64."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from milcompress.ops._arrays import row_slices
from milcompress.ops.kmeans import OUTLIER_RMS


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio in dB: 10 log10(sum(x^2) / sum((x - y)^2)); inf when exact, -inf
    for an all-zero x that y misses (see `noise_to_signal`)."""
    ratio = noise_to_signal(reference, approximation)
    return math.inf if ratio == 0 else -math.inf if math.isinf(ratio) else -10.0 * math.log10(ratio)


def bits_per_weight(nbytes: int, count: int) -> float:
    return 8.0 * nbytes / count


def noise_to_signal(
    reference: np.ndarray, approximation: np.ndarray, weights: Optional[np.ndarray] = None, outlier_scale: Optional[float] = None
) -> float:
    """sum(w (y - x)^2) / sum(w x^2), `weights` w >= 0 broadcasting over x (1 when None); 0 for an
    all-zero x that y matches, inf where it does not. With `outlier_scale` s, w also includes
    outlier-aware k-means' factor (`ops.kmeans.outlier_factor`), so a clipped far-out value
    counts as much as its damage to a model that depends on it.

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
        if w is not None or outlier_scale is not None:
            ws = np.ones_like(xs) if w is None else w[rows].astype(work)
            if outlier_scale is not None:  # xs holds x^2 here: ops.kmeans.outlier_factor
                ws *= 1 + np.maximum(xs / work(outlier_scale) - work(OUTLIER_RMS * OUTLIER_RMS), 0)
            d *= ws
            xs *= ws
        noise += float(d.sum(dtype=np.float64))
        signal += float(xs.sum(dtype=np.float64))
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


CLIPPED_ERROR_RATIO = 10.0  # an outlier's error this many times the weight's RMS error is flagged
ISOLATED_RMS = 8.0  # an outlier this many RMS out: ~1e-15 of Gaussian values, the super weights of LLMs


def clipped_outlier(reference: np.ndarray, approximation: np.ndarray) -> Optional[Tuple[Tuple[int, ...], float, float]]:
    """The element a compressed form moved farthest, as (index, original, compressed), when it is
    an isolated outlier of the weight (beyond `ISOLATED_RMS` times its RMS) and lost over a
    quarter of its value, over `CLIPPED_ERROR_RATIO` times the weight's RMS error: far outside
    what the weight's SNR suggests, as when a table clips an LLM's super weight. None otherwise.

    The SNR of a weight with one clipped value among a million barely moves; the model may not
    survive it, so the report names the element."""
    x = np.asarray(reference)
    if x.ndim == 0 or x.size == 0:
        return None
    y = np.asarray(approximation).reshape(x.shape)
    noise = signal = 0.0
    worst, index = -1.0, None
    for rows in row_slices(x.shape):
        xs = x[rows].astype(np.float64)
        error = np.abs(y[rows].astype(np.float64) - xs)
        noise += float((error * error).sum())
        signal += float((xs * xs).sum())
        inner = np.unravel_index(int(error.argmax()), error.shape)
        if error[inner] > worst:
            worst = float(error[inner])
            index = (rows.start + int(inner[0]),) + tuple(int(i) for i in inner[1:])
    original = float(x[index])
    rms_error, rms = math.sqrt(noise / x.size), math.sqrt(signal / x.size)
    if abs(original) <= ISOLATED_RMS * rms or worst <= max(CLIPPED_ERROR_RATIO * rms_error, abs(original) / 4):
        return None
    return index, original, float(y[index])
