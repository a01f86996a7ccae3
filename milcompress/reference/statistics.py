"""What feeds each weight: `ChannelStatistics`, an executor observer for calibration.

For every op that multiplies an activation by a constant weight (conv, conv_transpose, linear,
matmul with one constant side, lstm/gru/rnn), it accumulates, per input channel of that weight (the
axis the weight contracts), the sum of squares and the largest magnitude of the activation, over
every position and every run, the sum, the sum of squares and the largest magnitude of the
activation. `mean_square` is what activation-aware compression weights a column's error by: the
expected squared input that multiplies it; `mean` is what bias correction needs: the expected input,
whose product with a weight's error is the systematic shift compression adds to each output.

With `gram_limit` > 0 it also accumulates, for weights that act as a matrix on one input vector
at a time (linear, matmul, 1x1 convolutions with stride 1 and one group) of at most that many
input channels, the sum of the outer products of those vectors: `second_moment` = E[x x^T] is
what error feedback (`ops/feedback.py`) needs.

Records are keyed by the name of the weight var the op reads (a const, or the last op of a
constexpr chain), the name compression reports use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from milcompress._coremltools import Operation, Var
from milcompress.reference.kernels import OpArgs


@dataclass
class ChannelRecord:
    """Statistics of the activation a weight multiplies, per input channel of the weight."""

    op_name: str
    op_type: str
    activation: str  # the input name of the op the activation comes in on
    sums: np.ndarray  # float64, one per input channel
    sum_squares: np.ndarray  # float64, one per input channel
    max_abs: np.ndarray  # float64, one per input channel
    count: int  # activation vectors seen (positions x batch x runs)
    gram: Optional[np.ndarray] = None  # float64 [inputs, inputs]: sum of x x^T, where recorded

    @property
    def mean(self) -> np.ndarray:
        return self.sums / max(self.count, 1)

    @property
    def second_moment(self) -> Optional[np.ndarray]:
        return None if self.gram is None else self.gram / max(self.count, 1)

    @property
    def mean_square(self) -> np.ndarray:
        return self.sum_squares / max(self.count, 1)


def _is_weight(var: Optional[Var]) -> bool:
    return isinstance(var, Var) and var.op is not None and (var.op.op_type == "const" or var.op.op_type.startswith("constexpr_"))


def _contraction(op: Operation, args: OpArgs) -> Optional[Tuple[str, str, int]]:
    """(weight input, activation input, activation axis holding the weight's input channels)."""
    inputs = op.inputs
    if op.op_type in ("conv", "conv_transpose") and _is_weight(inputs.get("weight")):
        return "weight", "x", 1
    if op.op_type == "linear" and _is_weight(inputs.get("weight")):
        return "weight", "x", -1
    if op.op_type == "matmul":
        if _is_weight(inputs.get("y")) and not _is_weight(inputs.get("x")):
            return "y", "x", -2 if args.bool("transpose_x", False) else -1
        if _is_weight(inputs.get("x")) and not _is_weight(inputs.get("y")):
            return "x", "y", -1 if args.bool("transpose_y", False) else -2
    if op.op_type in ("lstm", "gru", "rnn"):
        for name in ("weight_ih", "weight"):
            if _is_weight(inputs.get(name)):
                return name, "x", -1
    return None


def _acts_as_matrix(op: Operation, args: OpArgs, weight: str) -> bool:
    """Whether each output vector of `op` is the weight times one input vector (no kernel window)."""
    if op.op_type != "conv":
        return op.op_type in ("linear", "matmul")
    kernel = args[weight]
    return (
        args.int("groups", 1) == 1
        and all(int(d) == 1 for d in tuple(kernel.shape)[2:])
        and all(s == 1 for s in args.ints("strides", [1]))
        and all(p == 0 for p in args.ints("pad", [0]))
    )


class ChannelStatistics:
    """An executor observer: `Interpreter(program, observers=[stats])`, run, then `stats.records`.

    `gram_limit`: also record the second moment of the input vectors of matrix-like weights with at
    most this many input channels (0: never)."""

    def __init__(self, gram_limit: int = 0):
        self.records: Dict[str, ChannelRecord] = {}
        self.gram_limit = gram_limit

    def __call__(self, op: Operation, args: OpArgs, outputs) -> None:
        found = _contraction(op, args)
        if found is None:
            return
        weight, activation, axis = found
        value = args[activation]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return
        columns = value.movedim(axis, -1).reshape(-1, value.shape[axis]).double()
        sums = columns.sum(dim=0).numpy()
        sum_squares = columns.square().sum(dim=0).numpy()
        max_abs = columns.abs().amax(dim=0).numpy() if columns.shape[0] else np.zeros(columns.shape[1])
        gram = None
        if 0 < columns.shape[1] <= self.gram_limit and _acts_as_matrix(op, args, weight):
            gram = (columns.T @ columns).numpy()
        key = op.inputs[weight].name
        record = self.records.get(key)
        if record is not None and record.sum_squares.shape != sum_squares.shape:
            # One weight read by ops that contract different axes: keep them apart.
            key = f"{key}@{op.name}"
            record = self.records.get(key)
        if record is None:
            self.records[key] = ChannelRecord(op.name, op.op_type, activation, sums, sum_squares, max_abs, columns.shape[0], gram)
        else:
            record.gram = None if record.gram is None or gram is None else record.gram + gram
            record.sums = record.sums + sums
            record.sum_squares = record.sum_squares + sum_squares
            record.max_abs = np.maximum(record.max_abs, max_abs)
            record.count += columns.shape[0]


@dataclass
class RangeRecord:
    """The smallest and largest value one activation took over every calibration run, and with
    `histogram_bins`, a histogram of its values: `counts[i]` values fell in bin i of `bins` equal
    bins spanning [-limit, limit] (limit a power of two at least max |value|)."""

    rmin: float
    rmax: float
    runs: int  # calls of the op that produced it
    counts: Optional[np.ndarray] = None  # int64 [bins], where histograms are kept
    limit: float = 0.0


def _power_of_two_above(value: float) -> float:
    return float(2.0 ** np.ceil(np.log2(value))) if value > 0 else 1.0


def _widened(counts: torch.Tensor, factor: int) -> torch.Tensor:
    """A histogram over [-L, L] as the same histogram over [-factor L, factor L] (factor a power of
    two dividing the bin count): each run of `factor` old bins becomes one bin of the middle."""
    bins = counts.numel()
    merged = counts.reshape(bins // factor, factor).sum(dim=1)
    pad = (bins - merged.numel()) // 2
    return torch.nn.functional.pad(merged, (pad, pad))


class ActivationRanges:
    """An executor observer recording the range of activations, for activation quantization:
    `Interpreter(program, observers=[ranges])`, `ranges.observe_inputs(sample)` for each sample
    run, then `ranges.records`. One pass over the samples, two numbers per activation (never a
    copy of one), for the float outputs named in `names` (every float output if None).

    Non-finite values are left out of the range and counted in `nonfinite`, so one overflow does
    not make a scale infinite; the pass reports them."""

    def __init__(self, names=None, histogram_bins: int = 0):
        if histogram_bins and (histogram_bins < 2 or histogram_bins & (histogram_bins - 1)):
            raise ValueError(f"histogram_bins must be 0 or a power of two >= 2, not {histogram_bins}")
        self.names = None if names is None else frozenset(names)
        self.histogram_bins = histogram_bins
        self.records: Dict[str, RangeRecord] = {}
        self.nonfinite: Dict[str, int] = {}
        self._histograms: Dict[str, torch.Tensor] = {}

    def __call__(self, op: Operation, args: OpArgs, outputs) -> None:
        for var, value in zip(op.outputs, outputs):
            self.observe(var.name, value)

    def observe_inputs(self, sample) -> None:
        """Record a run's function inputs (the executor observes ops, not its inputs)."""
        for name, value in sample.items():
            self.observe(name, value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value)))

    def observe(self, name: str, value) -> None:
        if self.names is not None and name not in self.names:
            return
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
            return
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            self.nonfinite[name] = self.nonfinite.get(name, 0) + int((~finite).sum())
            value = value[finite]
            if value.numel() == 0:
                return
        low, high = float(value.min()), float(value.max())
        record = self.records.get(name)
        if record is None:
            record = self.records[name] = RangeRecord(low, high, 1)
        else:
            record.rmin, record.rmax, record.runs = min(record.rmin, low), max(record.rmax, high), record.runs + 1
        if self.histogram_bins:
            self._add_to_histogram(name, record, value)

    def _add_to_histogram(self, name: str, record: RangeRecord, value: torch.Tensor) -> None:
        """Counts of this run added; the span doubles (bins merging in pairs) to take new extremes."""
        needed = _power_of_two_above(max(abs(record.rmin), abs(record.rmax)))
        counts = self._histograms.get(name)
        if counts is None:
            counts = torch.zeros(self.histogram_bins, dtype=torch.int64)
            record.limit = needed
        elif needed > record.limit:
            factor = int(round(needed / record.limit))
            if factor >= self.histogram_bins:  # the old span now fits in the two middle bins
                half = self.histogram_bins // 2
                below, above = counts[:half].sum(), counts[half:].sum()
                counts = torch.zeros_like(counts)
                counts[half - 1], counts[half] = below, above
            else:
                counts = _widened(counts, factor)
            record.limit = needed
        counts += torch.histc(value.detach().double().reshape(-1), bins=self.histogram_bins, min=-record.limit, max=record.limit).to(torch.int64)
        self._histograms[name] = counts
        record.counts = counts.numpy()
