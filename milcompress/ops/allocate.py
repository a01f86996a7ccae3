"""Allocation: choose one compressed form per weight tensor so that the model meets a byte budget.

"Compress to a size" offers every weight tensor a few forms (dense fp16, int8, 8/6/4/3/2-bit
palettes, ...), each with a stored size in bytes and a weighted error, and picks one form per tensor
so that the total size is at most the budget and the total error is as small as possible: a
multiple-choice knapsack. `allocate(options, budget_bytes)` solves it and returns an `Allocation`.
This module owns only that choice; measuring sizes and errors is the caller's business.

How it works, and what it promises:
- Dominated options (no smaller than another option of the same tensor and no better) are dropped.
  What is left of a tensor, its frontier, has strictly growing sizes and strictly falling errors.
- Every tensor starts at its smallest option; the bytes the budget leaves over after that, the
  spare budget, are what is being shared out. If the spare budget is negative, `ConfigError`
  (field `budget_bytes`) says the smallest achievable size and the budget.
- A dynamic programme over the spare budget, counted in units of `resolution_bytes` r: each
  option's extra size over its tensor's smallest option is rounded UP to whole units and the spare
  budget is rounded DOWN, so any choice that fits in units also fits in true bytes. The result is
  optimal for that rounded problem; with r == 1 that is the exact optimum. It is also never worse
  than the exact optimum for a budget of `budget_bytes - m * (r - 1)`, m being the number of
  tensors that have more than one frontier option. By default r is the smallest unit that keeps
  the programme within `DEFAULT_BUDGET_CELLS` cells (so r == 1 whenever the budget, or the most
  that could be spent, is that small).
- Polish: the true bytes that rounding left unspent go, one upgrade at a time, to the upgrade with
  the largest error reduction per byte that still fits.
- The result is also never worse than the plain greedy (the same upgrade rule, starting from every
  tensor's smallest option): both are computed and the better one is returned.
- `total_bytes <= budget_bytes` always, computed exactly from the true integer sizes.
- `lower_bound` is the Lagrangian bound (equal to the LP relaxation): no choice within the budget
  has a smaller total error, so `total_error - lower_bound` bounds how far from optimal a result is.
Ties: at equal error the smaller size wins (counted in units of r), and of identical options the
earlier one; results are deterministic.
Errors are compared as float64 sums, so "optimal" holds up to floating-point rounding.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from milcompress.errors import ConfigError, InputError

DEFAULT_BUDGET_CELLS = 32_768
"""The most budget cells the dynamic programme uses when `resolution_bytes` is not given."""

MAX_SIZE_BYTES = 2**53
"""The largest option size accepted (exact in float64, and far beyond any model)."""

_NUMPY_INT_CAP = 2**62  # byte counts handed to numpy are clamped here, well inside int64


@dataclass(frozen=True)
class Allocation:
    """The chosen option of every tensor and what the choice costs.

    `choices[i]` indexes `options[i]` as given. `total_bytes` is the exact sum of the chosen sizes;
    `total_error` the (correctly rounded) sum of the chosen errors. `lower_bound`: no choice within
    the budget has a smaller total error. `resolution_bytes`: the unit the dynamic programme
    counted sizes in (1: the result is the exact optimum).
    """

    choices: Tuple[int, ...]
    total_bytes: int
    total_error: float
    lower_bound: float
    resolution_bytes: int

    @property
    def gap(self) -> float:
        """How much larger the total error is, at most, than the optimum's."""
        return max(0.0, self.total_error - self.lower_bound)


@dataclass(frozen=True, eq=False)
class _Frontier:
    """A tensor's non-dominated options: sizes strictly growing, errors strictly falling."""

    option_indices: np.ndarray  # int64, the indices into the tensor's options as given
    sizes: np.ndarray  # int64
    errors: np.ndarray  # float64

    @property
    def extra_sizes(self) -> np.ndarray:
        """Each option's size over the smallest option's."""
        return self.sizes - self.sizes[0]


def allocate(
    options: Sequence[Sequence[Tuple[int, float]]],
    budget_bytes: int,
    *,
    resolution_bytes: Optional[int] = None,
) -> Allocation:
    """Choose one option per tensor, total size at most `budget_bytes`, total error as small as can be.

    `options[i]` lists tensor i's options as `(size_bytes, error)` pairs: size an int >= 0, error a
    finite float >= 0. `resolution_bytes` is the size unit of the dynamic programme (1: exact);
    by default the smallest that keeps it within `DEFAULT_BUDGET_CELLS` cells. See the module
    docstring for what is guaranteed.
    """
    budget_bytes = _check_count(budget_bytes, "budget_bytes", minimum=0)
    if resolution_bytes is not None:
        resolution_bytes = _check_count(resolution_bytes, "resolution_bytes", minimum=1)
    frontiers = [_frontier(tensor, tensor_options) for tensor, tensor_options in enumerate(_as_list(options))]
    worst_total = sum(float(frontier.errors[0]) for frontier in frontiers)  # inf on overflow
    if not worst_total < np.finfo(np.float64).max / 4:
        raise InputError(f"the errors are too large to add up: their worst-case total is {worst_total:g}")

    smallest_total = sum(int(frontier.sizes[0]) for frontier in frontiers)
    spare = budget_bytes - smallest_total
    if spare < 0:
        raise ConfigError(
            f"budget_bytes is {budget_bytes:,} but the smallest achievable size is {smallest_total:,} bytes "
            f"(every tensor at its smallest option)",
            field="budget_bytes",
        )
    most_spendable = sum(int(frontier.extra_sizes[-1]) for frontier in frontiers)
    spare = min(spare, most_spendable)  # bytes beyond what every largest option needs change nothing
    if resolution_bytes is None:
        resolution_bytes = max(1, -(-spare // DEFAULT_BUDGET_CELLS))

    sizes, errors = _padded(frontiers)
    programmed = _dynamic_programme(frontiers, spare, resolution_bytes)
    polished = _greedy(sizes, errors, programmed, spare - _spent(sizes, programmed))
    greedy_only = _greedy(sizes, errors, np.zeros(len(frontiers), dtype=np.int64), spare)
    best = min((polished, greedy_only), key=lambda positions: _cost(sizes, errors, positions))

    rows = np.arange(len(frontiers))
    return Allocation(
        choices=tuple(int(frontier.option_indices[p]) for frontier, p in zip(frontiers, best)),
        total_bytes=sum(int(s) for s in sizes[rows, best]),
        total_error=math.fsum(float(e) for e in errors[rows, best]),
        lower_bound=_lagrangian_bound(frontiers, spare),
        resolution_bytes=resolution_bytes,
    )


def _as_list(options) -> list:
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise InputError(f"options must be a sequence (one entry per tensor), got {type(options).__name__}")
    return list(options)


def _check_count(value, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{field} must be an int, got {value!r}", field=field)
    if value < minimum:
        raise ConfigError(f"{field} must be >= {minimum}, got {value}", field=field)
    return int(value)


def _frontier(tensor: int, tensor_options) -> _Frontier:
    """Check tensor `tensor`'s options and keep the non-dominated ones."""
    if isinstance(tensor_options, (str, bytes)) or not isinstance(tensor_options, Sequence):
        raise InputError(f"options[{tensor}] must be a sequence of (size_bytes, error) pairs")
    entries = []
    for index, option in enumerate(tensor_options):
        where = f"options[{tensor}][{index}]"
        if isinstance(option, (str, bytes)) or not isinstance(option, Sequence) or len(option) != 2:
            raise InputError(f"{where} must be a (size_bytes, error) pair, got {option!r}")
        size, error = option
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size <= MAX_SIZE_BYTES:
            raise InputError(f"{where}: size_bytes must be an int in [0, 2**53], got {size!r}")
        if isinstance(error, bool) or not isinstance(error, (int, float, np.integer, np.floating)):
            raise InputError(f"{where}: error must be a number, got {error!r}")
        if not (math.isfinite(error) and error >= 0):
            raise InputError(f"{where}: error must be finite and >= 0, got {error!r}")
        entries.append((int(size), float(error), index))
    if not entries:
        raise InputError(f"options[{tensor}] is empty: every tensor needs at least one option")
    kept: List[Tuple[int, float, int]] = []
    for size, error, index in sorted(entries):  # smaller size first, then smaller error, then index
        if not kept or error < kept[-1][1]:
            kept.append((size, error, index))
    return _Frontier(
        option_indices=np.array([index for _, _, index in kept], dtype=np.int64),
        sizes=np.array([size for size, _, _ in kept], dtype=np.int64),
        errors=np.array([error for _, error, _ in kept], dtype=np.float64),
    )


def _padded(frontiers: Sequence[_Frontier]) -> Tuple[np.ndarray, np.ndarray]:
    """Frontier sizes and errors as (tensors, options) arrays; padding never fits and never helps."""
    width = max((len(frontier.sizes) for frontier in frontiers), default=1)
    sizes = np.full((len(frontiers), width), _NUMPY_INT_CAP, dtype=np.int64)
    errors = np.full((len(frontiers), width), np.inf)
    for row, frontier in enumerate(frontiers):
        sizes[row, : len(frontier.sizes)] = frontier.sizes
        errors[row, : len(frontier.errors)] = frontier.errors
    return sizes, errors


def _spent(sizes: np.ndarray, positions: np.ndarray) -> int:
    """Bytes the chosen positions use beyond every tensor's smallest option."""
    rows = np.arange(len(positions))
    return sum(int(s) for s in sizes[rows, positions] - sizes[:, 0])


def _cost(sizes: np.ndarray, errors: np.ndarray, positions: np.ndarray) -> Tuple[float, int]:
    rows = np.arange(len(positions))
    return math.fsum(float(e) for e in errors[rows, positions]), _spent(sizes, positions)


def _dynamic_programme(frontiers: Sequence[_Frontier], spare: int, resolution: int) -> np.ndarray:
    """Frontier positions optimal for the problem with sizes in whole units of `resolution`.

    Extra sizes (over each tensor's smallest option) are rounded up, the spare budget down. The
    table holds, per number of units used exactly, the least total error; each tensor's row of
    argmin choices is kept for backtracking. At equal error fewer units win.
    """
    capacity = spare // resolution
    positions = np.zeros(len(frontiers), dtype=np.int64)
    best = np.zeros(1)  # best[u]: least error of the tensors so far using exactly u units
    rows = []
    for tensor, frontier in enumerate(frontiers):
        units = -(-frontier.extra_sizes // resolution)
        fits = np.flatnonzero(units <= capacity)
        units = units[fits]
        # Of options with the same units keep the last: the lowest error.
        last_of_units = np.append(units[1:] != units[:-1], True)
        units, candidates = units[last_of_units], fits[last_of_units]
        errors = frontier.errors[candidates]
        if len(candidates) == 1:
            positions[tensor] = candidates[0]
            best = best + errors[0]
            continue
        reach = min(capacity, len(best) - 1 + int(units[-1])) + 1
        table = np.full(reach, np.inf)
        table[: len(best)] = best + errors[0]  # units[0] is 0: the smallest option costs nothing
        choice = np.zeros(reach, dtype=np.uint8 if len(candidates) <= 256 else np.int64)
        for option in range(1, len(candidates)):
            shift = int(units[option])
            span = min(len(best), reach - shift)
            offered = best[:span] + errors[option]
            current = table[shift : shift + span]
            better = offered < current
            np.copyto(current, offered, where=better)
            np.copyto(choice[shift : shift + span], option, where=better)
        rows.append((tensor, units, candidates, choice))
        best = table
    used = int(np.argmin(best))  # the first of equal errors: the fewest units
    for tensor, units, candidates, choice in reversed(rows):
        option = int(choice[used])
        positions[tensor] = candidates[option]
        used -= int(units[option])
    assert used == 0, "the dynamic programme's backtrack must end at zero units"
    return positions


def _greedy(sizes: np.ndarray, errors: np.ndarray, positions: np.ndarray, spare_bytes: int) -> np.ndarray:
    """Spend `spare_bytes` on upgrades, best error reduction per byte first, while any fits.

    `sizes` and `errors` are (tensors, options) arrays of frontiers (sizes growing, errors falling
    along a row); `positions` the current option of every tensor. An upgrade moves one tensor to
    any option with a smaller error whose extra size fits in the bytes left. Ties: the larger error
    reduction, then the earlier tensor, then the smaller option. Returns the new positions.
    """
    positions = np.array(positions, dtype=np.int64)
    tensors = np.arange(len(positions))
    left = min(int(spare_bytes), _NUMPY_INT_CAP)
    if len(positions) == 0:
        return positions
    # Rates and reductions of every upgrade; only the moved tensor's row changes after a move.
    reduction = errors[tensors, positions][:, None] - errors
    extra = sizes - sizes[tensors, positions][:, None]
    rate = np.full(errors.shape, -np.inf)
    np.divide(reduction, extra, out=rate, where=reduction > 0)  # a reduction implies extra > 0
    while True:
        usable = np.where(extra <= left, rate, -np.inf)
        top = usable.max()
        if top == -np.inf:
            return positions
        flat = int(np.argmax(np.where(usable == top, reduction, -np.inf)))
        tensor, option = divmod(flat, errors.shape[1])
        left -= int(extra[tensor, option])
        positions[tensor] = option
        reduction[tensor] = errors[tensor, option] - errors[tensor]
        extra[tensor] = sizes[tensor] - sizes[tensor, option]
        rate[tensor] = -np.inf
        np.divide(reduction[tensor], extra[tensor], out=rate[tensor], where=reduction[tensor] > 0)


def _lagrangian_bound(frontiers: Sequence[_Frontier], spare_bytes: int) -> float:
    """A lower bound on the total error of any choice using at most `spare_bytes` extra bytes.

    The Lagrangian dual of the budget constraint, equal to the LP relaxation: take the segments of
    every tensor's lower convex hull of (size, error), steepest first, the last one fractionally.
    """
    total = math.fsum(float(frontier.errors[0]) for frontier in frontiers)
    segments = []
    for tensor, frontier in enumerate(frontiers):
        sizes = [int(s) for s in frontier.sizes]
        errors = [float(e) for e in frontier.errors]
        hull = [0]
        for point in range(1, len(sizes)):
            while len(hull) >= 2 and _rate(sizes, errors, hull[-2], hull[-1]) <= _rate(sizes, errors, hull[-1], point):
                hull.pop()
            hull.append(point)
        for order, (a, b) in enumerate(zip(hull, hull[1:])):
            segments.append((-_rate(sizes, errors, a, b), tensor, order, errors[a] - errors[b], sizes[b] - sizes[a]))
    segments.sort()
    left = spare_bytes
    reductions = []
    for _, _, _, reduction, extra in segments:
        if extra <= left:
            reductions.append(reduction)
            left -= extra
        else:
            reductions.append(reduction * (left / extra))
            break
    return max(0.0, total - math.fsum(reductions))


def _rate(sizes: List[int], errors: List[float], a: int, b: int) -> float:
    """Error reduction per byte from frontier option a to a larger option b."""
    return (errors[a] - errors[b]) / (sizes[b] - sizes[a])
