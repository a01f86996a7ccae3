"""Activation quantization parameters from a calibrated range: pure numpy, no MIL.

An activation is quantized per tensor to 8 bits by a runtime `quantize` / `dequantize` pair
(iOS17). Its scale and zero point come from the range [rmin, rmax] calibration saw, exactly as
coremltools derives them for `linear_quantize_activations` (`optimize/_utils.py`,
`quantize_weight_by_dtype` on the two-element array [rmin, rmax]):
- `linear_symmetric`: range [-m, m] with m = max(|rmin|, |rmax|) onto [-127, 127] (int8, zero
  point 0) or [0, 254] (uint8, zero point 127); scale = 2m / 254;
- `linear`: range [min(rmin, 0), max(rmax, 0)] onto [-128, 127] or [0, 255]; scale = range / 255,
  zero point = round((qmin * max - qmax * min) / range), clipped.
coremltools rounds rmin and rmax to float16 and computes in float16: so does this, giving the same
scale and zero point to the bit, except where float16 would overflow (a range beyond 255, whose
zero point coremltools computes as inf): there float64. The scale is then stored in the dtype of
the tensor it quantizes. A tensor calibration saw only zeros gets scale 1 (coremltools' own fallback
for a zero scale), so its quantize op never divides by zero.

`quantize_dequantize` is the direct computation of what the pair does to values, the oracle the
pass and the executor are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

ACTIVATION_DTYPES = ("int8", "uint8")
ACTIVATION_MODES = ("linear_symmetric", "linear")


@dataclass(frozen=True)
class ActivationQuantization:
    """Per-tensor quantization of one activation: `quantize(x) = clip(round(x / scale) + zero_point)`."""

    scale: np.ndarray  # 0-d, float16 or float32 (the dtype of the tensor quantized)
    zero_point: Optional[np.ndarray]  # 0-d int8/uint8, or None (symmetric int8: zero)
    dtype: str  # "int8" or "uint8"
    rmin: float  # the calibrated range the parameters were derived from
    rmax: float

    @property
    def limits(self):
        return (-128, 127) if self.dtype == "int8" else (0, 255)


def quant_range(dtype: str, mode: str):
    """coremltools' integer range for 8 bits (`get_quant_range`): symmetric modes drop one end."""
    if dtype == "int8":
        return (-127, 127) if mode == "linear_symmetric" else (-128, 127)
    return (0, 254) if mode == "linear_symmetric" else (0, 255)


def activation_qparams(rmin: float, rmax: float, mode: str = "linear_symmetric", dtype: str = "int8", scale_dtype=np.float32) -> ActivationQuantization:
    """Scale and zero point for a tensor whose calibrated values lie in [rmin, rmax]."""
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"mode must be one of {', '.join(ACTIVATION_MODES)}, not {mode!r}")
    if dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"activations are quantized to int8 or uint8, not {dtype!r}")
    if not (np.isfinite(rmin) and np.isfinite(rmax)) or rmin > rmax:
        raise ValueError(f"calibrated range [{rmin}, {rmax}] is not a finite interval")
    qmin, qmax = quant_range(dtype, mode)
    # coremltools' arithmetic, in float16 where it cannot overflow (products reach 255 * range).
    work = np.float16 if max(abs(float(rmin)), abs(float(rmax))) * 256 <= float(np.finfo(np.float16).max) else np.float64
    low, high = work(rmin), work(rmax)
    zero_point = None
    if mode == "linear_symmetric":
        magnitude = max(abs(low), abs(high))
        low, high = -magnitude, magnitude
        if dtype == "uint8":
            zero_point = qmax // 2
    else:
        low, high = min(low, work(0)), max(high, work(0))
    scale = (high - low) / work(qmax - qmin)
    if mode == "linear":
        zero_point = 0 if high == low else int(np.clip(np.round((work(qmin) * high - work(qmax) * low) / (high - low)), qmin, qmax))
    rounded = np.asarray(scale, dtype=scale_dtype)
    if not rounded > 0:  # all zeros seen, or a range below the dtype's smallest subnormal
        rounded = np.asarray(1.0, dtype=scale_dtype)
    point = None if zero_point is None else np.asarray(zero_point, dtype=dtype)
    return ActivationQuantization(rounded, point, dtype, float(rmin), float(rmax))


def quantize_dequantize(values: np.ndarray, params: ActivationQuantization) -> np.ndarray:
    """What a quantize -> dequantize pair with `params` gives for `values`, in float64:
    `scale * (clip(round_half_even(x / scale) + zp) - zp)`."""
    scale = float(params.scale)
    point = 0.0 if params.zero_point is None else float(params.zero_point)
    low, high = params.limits
    # The runtime op divides in float32: so does the oracle, so ties fall the same way.
    quotient = (np.asarray(values, dtype=np.float32) / np.float32(scale)).astype(np.float64)
    integers = np.clip(np.round(quotient) + point, low, high)
    return scale * (integers - point)


# -- ranges beyond min/max, from a histogram --------------------------------------------------------

RANGE_ESTIMATORS = ("minmax", "percentile", "mse")
DEFAULT_ESTIMATOR = "percentile"
"""The range estimator activation quantization uses unless told otherwise. It won on every
benchmark model where the choice mattered (`python benchmarks/activations.py`, W8A8, float16
emulation): MobileNetV2 on 198 crops, top-1 agreement 0.611 (min/max, coremltools' choice) ->
0.788 (percentile) against 0.753 (mse); all-MiniLM-L6-v2, mean cosine 0.243 -> 0.409 against
0.297. Per-tensor min/max spends the int8 grid on the rarest extremes of a few heavy-tailed
tensors (MobileNetV2's late residual stream reaches 34 where the median image's maximum is 2)."""
MSE_CANDIDATES = 128  # clipping ranges tried, from 1/MSE_CANDIDATES of min/max's up to all of it


def estimated_range(
    rmin: float, rmax: float, counts: Optional[np.ndarray], limit: float, estimator: str = "minmax",
    mode: str = "linear_symmetric", dtype: str = "int8", percentile: float = 99.99,
):
    """(low, high) to quantize a tensor over, from its calibrated extremes and, for the other
    estimators, its histogram (`counts` over equal bins spanning [-limit, limit]):
    - "minmax": [rmin, rmax], every value representable (coremltools' choice);
    - "percentile": the `percentile`-th and (100 - `percentile`)-th percentiles: the rarest
      extremes are clipped so the common values get a finer grid;
    - "mse": the clipping range with the least expected squared error, clipping plus rounding
      (a uniform error of scale^2 / 12 inside the range), over the histogram.
    A range never grows beyond [rmin, rmax]. Float64 throughout."""
    if estimator not in RANGE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(RANGE_ESTIMATORS)}, not {estimator!r}")
    if estimator == "minmax" or counts is None or counts.sum() == 0 or rmin == rmax:
        return float(rmin), float(rmax)
    counts = np.asarray(counts, dtype=np.float64)
    width = 2.0 * limit / counts.size
    centres = -limit + width * (np.arange(counts.size) + 0.5)
    if estimator == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], not {percentile}")
        cumulative = np.cumsum(counts) / counts.sum()
        tail = 1.0 - percentile / 100.0
        low = centres[min(np.searchsorted(cumulative, tail, side="right"), counts.size - 1)] - width / 2
        high = centres[min(np.searchsorted(cumulative, 1.0 - tail, side="left"), counts.size - 1)] + width / 2
        return float(max(rmin, low)), float(min(rmax, max(high, low)))
    qmin, qmax = quant_range(dtype, mode)
    if mode == "linear_symmetric":
        magnitude = max(abs(rmin), abs(rmax))
        highs = magnitude * np.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
        lows = -highs
    else:
        low, high = min(rmin, 0.0), max(rmax, 0.0)
        fractions = np.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
        lows, highs = low * fractions, high * fractions
    scales = (highs - lows) / (qmax - qmin)
    # Expected squared error per candidate: rounding inside, distance to the range outside.
    clipped = np.maximum(centres[None, :] - highs[:, None], 0.0) + np.maximum(lows[:, None] - centres[None, :], 0.0)
    inside = clipped == 0
    errors = (counts[None, :] * np.where(inside, scales[:, None] ** 2 / 12.0, clipped ** 2)).sum(axis=1)
    best = int(np.argmin(errors))
    return float(max(rmin, lows[best])), float(min(rmax, highs[best]))
