"""Bias correction: the systematic output shift a weight's compression error adds, per output.

A layer computes y = W x + b. Compressed, it computes W' x + b, off by (W' - W) x. Over the inputs
the model sees, that error has a mean, (W' - W) E[x], the same at every position and for every
input: a shift of each output channel, which the next layers cannot tell from a real signal. The
activations feeding most layers follow a ReLU and are far from zero mean, so the shift is often
the larger part of the error. Subtracting it from the bias removes it at no cost in size (Nagel et
al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section
4.2, with E[x] measured on calibration inputs).

`output_shift` computes (W' - W) E[x] for the two layer kinds whose bias adds per output channel:
- "linear": weight [out, in], E[x] [in];
- "conv": weight [out, in / groups, *kernel], E[x] [in]; each output reads the input channels of
  its group, and every kernel tap sees the same mean (padding, which adds zeros at the borders, is
  ignored: the shift is exact away from them).
"""

from __future__ import annotations

import numpy as np


def output_shift(delta: np.ndarray, input_mean: np.ndarray, kind: str, groups: int = 1) -> np.ndarray:
    """(W' - W) E[x] per output channel, in float64; `delta` is W' - W."""
    delta = np.asarray(delta, dtype=np.float64)
    mean = np.asarray(input_mean, dtype=np.float64).reshape(-1)
    if kind == "linear":
        if delta.ndim != 2 or delta.shape[1] != mean.size:
            raise ValueError(f"linear weight of shape {list(delta.shape)} does not read {mean.size} input channels")
        return delta @ mean
    if kind == "conv":
        outputs, per_group = delta.shape[0], delta.shape[1]
        if delta.ndim < 3 or per_group * groups != mean.size or outputs % groups:
            raise ValueError(f"conv weight of shape {list(delta.shape)} with {groups} groups does not read {mean.size} input channels")
        taps = delta.reshape(outputs, per_group, -1).sum(axis=2)  # [out, in / groups]
        group_means = mean.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]  # [out, in / groups]
        return np.sum(taps * group_means, axis=1)
    raise ValueError(f"no bias correction for layer kind {kind!r}")
