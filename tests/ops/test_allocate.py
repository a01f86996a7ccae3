import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress.errors import ConfigError, InputError
from milcompress.ops.allocate import DEFAULT_BUDGET_CELLS, Allocation, allocate

ERRORS = st.one_of(st.integers(0, 6).map(float), st.floats(0.0, 1000.0, allow_nan=False, allow_infinity=False))


@st.composite
def instances(draw, max_tensors, max_options, max_size, errors=ERRORS):
    """Options for 2..max_tensors tensors and a budget that some choice meets."""
    options = [
        [(draw(st.integers(0, max_size)), draw(errors)) for _ in range(draw(st.integers(1, max_options)))]
        for _ in range(draw(st.integers(2, max_tensors)))
    ]
    smallest = sum(min(size for size, _ in tensor) for tensor in options)
    largest = sum(max(size for size, _ in tensor) for tensor in options)
    return options, draw(st.integers(smallest, largest + 3))


def _all_choices(options, sizes_of=lambda tensor: [size for size, _ in tensor]):
    """Total size and error of every choice, as flat arrays (by broadcasting, tensor by tensor)."""
    sizes, errors = np.zeros(1, dtype=np.int64), np.zeros(1)
    for tensor in options:
        sizes = (sizes[:, None] + np.array(sizes_of(tensor), dtype=np.int64)[None, :]).ravel()
        errors = (errors[:, None] + np.array([error for _, error in tensor])[None, :]).ravel()
    return sizes, errors


def _optimum(options, budget):
    """The least total error of any choice within `budget` (None if there is none): brute force."""
    sizes, errors = _all_choices(options)
    fits = sizes <= budget
    return float(errors[fits].min()) if fits.any() else None


def _rounded_optimum(options, budget, resolution):
    """Brute-force optimum of the rounded problem allocate promises to solve exactly.

    Extra sizes over each tensor's smallest option rounded up to whole units, the budget left after
    every smallest option rounded down.
    """

    def units(tensor):
        smallest = min(size for size, _ in tensor)
        return [-(-(size - smallest) // resolution) for size, _ in tensor]

    units_total, errors = _all_choices(options, units)
    spare = budget - sum(min(size for size, _ in tensor) for tensor in options)
    return float(errors[units_total <= spare // resolution].min())


def _greedy_baseline(options, budget):
    """From every smallest option, take the upgrade with the best error reduction per byte that fits."""
    choice = [min(range(len(tensor)), key=lambda j: (tensor[j][0], tensor[j][1], j)) for tensor in options]
    left = budget - sum(tensor[c][0] for tensor, c in zip(options, choice))
    while True:
        best_key, best_move = None, None
        for t, tensor in enumerate(options):
            size_now, error_now = tensor[choice[t]]
            for j, (size, error) in enumerate(tensor):
                reduction, extra = error_now - error, size - size_now
                if reduction > 0 and extra <= left:
                    key = (reduction / extra if extra > 0 else math.inf, reduction, -t, -size, -j)
                    if best_key is None or key > best_key:
                        best_key, best_move = key, (t, j, extra)
        if best_move is None:
            return math.fsum(tensor[c][1] for tensor, c in zip(options, choice))
        t, j, extra = best_move
        choice[t] = j
        left -= extra


def _has_a_choice(tensor):
    """Whether some option is better than the best of the smallest ones (more than one on the frontier)."""
    smallest = min(size for size, _ in tensor)
    return min(error for _, error in tensor) < min(error for size, error in tensor if size == smallest)


def _check_allocation(result: Allocation, options, budget):
    """The result is well formed, its totals are exact, and it meets the budget."""
    assert len(result.choices) == len(options)
    assert all(0 <= c < len(tensor) for c, tensor in zip(result.choices, options))
    chosen = [tensor[c] for c, tensor in zip(result.choices, options)]
    assert result.total_bytes == sum(size for size, _ in chosen)
    assert result.total_error == math.fsum(error for _, error in chosen)
    assert result.total_bytes <= budget
    assert result.lower_bound <= result.total_error * (1 + 1e-9) + 1e-9
    assert allocate(options, budget, resolution_bytes=result.resolution_bytes) == result  # deterministic


def _at_most(value, limit):
    return value <= limit + 1e-9 * max(1.0, abs(limit))


@given(instances(max_tensors=6, max_options=5, max_size=40))
def test_exact_resolution_finds_the_brute_force_optimum(instance):
    options, budget = instance
    result = allocate(options, budget, resolution_bytes=1)
    _check_allocation(result, options, budget)
    optimum = _optimum(options, budget)
    assert result.total_error == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert _at_most(result.lower_bound, optimum)
    assert allocate(options, budget) == result  # small budgets need no rounding by default


@given(instances(max_tensors=5, max_options=5, max_size=12, errors=st.integers(0, 4).map(float)))
def test_equal_errors_go_to_the_smaller_size(instance):
    # Small integer errors add up exactly, so ties between whole choices are real ties.
    options, budget = instance
    result = allocate(options, budget, resolution_bytes=1)
    sizes, errors = _all_choices(options)
    fits = sizes <= budget
    assert result.total_error == errors[fits].min()
    assert result.total_bytes == sizes[fits & (errors == errors[fits].min())].min()


@given(instances(max_tensors=7, max_options=4, max_size=2000), st.integers(1, 500))
def test_coarse_resolution_keeps_its_promises(instance, resolution):
    options, budget = instance
    result = allocate(options, budget, resolution_bytes=resolution)
    _check_allocation(result, options, budget)
    assert result.resolution_bytes == resolution
    optimum = _optimum(options, budget)
    assert result.total_error >= optimum * (1 - 1e-9) - 1e-9
    assert _at_most(result.lower_bound, optimum)
    assert _at_most(result.total_error, _greedy_baseline(options, budget))
    assert _at_most(result.total_error, _rounded_optimum(options, budget, resolution))
    # As good as the exact optimum of a budget short by (r - 1) bytes per tensor with a choice.
    with_a_choice = sum(_has_a_choice(tensor) for tensor in options)
    shorter = _optimum(options, budget - with_a_choice * (resolution - 1))
    if shorter is not None:
        assert _at_most(result.total_error, shorter)


def test_default_resolution_bounds_the_table_and_still_meets_the_budget():
    rng = np.random.default_rng(0)
    options = []
    for _ in range(40):
        sizes = np.sort(rng.integers(10_000, 3_000_000, size=8))
        errors = np.sort(rng.uniform(0.0, 100.0, size=8))[::-1]
        options.append([(int(s), float(e)) for s, e in zip(sizes, errors)])
    smallest = sum(tensor[0][0] for tensor in options)
    budget = smallest + 20_000_001
    result = allocate(options, budget)
    _check_allocation(result, options, budget)
    assert result.resolution_bytes > 1
    assert 20_000_001 // result.resolution_bytes <= DEFAULT_BUDGET_CELLS
    assert _at_most(result.total_error, _greedy_baseline(options, budget))
    assert result.gap <= 0.01 * result.total_error


def test_an_impossible_budget_says_the_smallest_size_and_the_budget():
    options = [[(1000, 1.0), (2000, 0.0)], [(500, 0.0)], [(300, 2.0), (10, 9.0)]]
    with pytest.raises(ConfigError, match=r"budget_bytes is 1,509 but the smallest achievable size is 1,510") as caught:
        allocate(options, 1509)
    assert caught.value.field == "budget_bytes"
    assert allocate(options, 1510).choices == (0, 0, 1)


def test_no_tensors():
    assert allocate([], 0) == Allocation(choices=(), total_bytes=0, total_error=0.0, lower_bound=0.0, resolution_bytes=1)


def test_a_single_option_per_tensor_is_taken_whatever_the_budget_leaves():
    options = [[(7, 0.5)], [(0, 2.0)], [(3, 0.0)]]
    result = allocate(options, 1000)
    assert result.choices == (0, 0, 0)
    assert (result.total_bytes, result.total_error, result.lower_bound) == (10, 2.5, 2.5)


def test_zero_size_options():
    # The better of two free options wins even with no budget at all.
    assert allocate([[(0, 5.0), (0, 3.0), (10, 0.0)]], 0).choices == (1,)
    assert allocate([[(0, 5.0), (0, 3.0), (10, 0.0)]], 10).choices == (2,)
    result = allocate([[(0, 1.0), (0, 1.0)], [(0, 0.0)]], 0)
    assert result.choices == (0, 0)
    assert (result.total_bytes, result.total_error) == (0, 1.0)


def test_ties_prefer_the_smaller_size_then_the_earlier_option():
    assert allocate([[(20, 1.0), (10, 1.0)]], 100).choices == (1,)
    assert allocate([[(10, 1.0), (10, 1.0)]], 100).choices == (0,)
    assert allocate([[(10, 1.0), (30, 0.0)], [(10, 1.0), (30, 0.0)]], 40).choices == (1, 0)


def test_rounding_loss_is_won_back_by_spending_the_leftover_bytes():
    # In units of 10 the upgrade (15 extra bytes) needs 2 units and the budget holds 1; it still fits.
    result = allocate([[(0, 10.0), (15, 0.0)]], 15, resolution_bytes=10)
    assert result.choices == (1,)


def test_the_lower_bound_is_the_lp_relaxation():
    # Half of the only upgrade fits: the relaxation takes half its error reduction.
    result = allocate([[(0, 10.0), (10, 0.0)]], 5)
    assert (result.choices, result.lower_bound, result.gap) == ((0,), 5.0, 5.0)


def test_numpy_scalars_are_accepted():
    result = allocate([[(np.int64(4), np.float32(0.5)), (np.uint16(8), np.float64(0.0))]], np.int32(8))
    assert result.choices == (1,) and type(result.total_bytes) is int and type(result.total_error) is float


@pytest.mark.parametrize(
    "options, message",
    [
        ([[(-1, 0.0)]], r"options\[0\]\[0\]: size_bytes must be an int"),
        ([[(1, 0.0)], [(1.5, 0.0)]], r"options\[1\]\[0\]: size_bytes must be an int"),
        ([[(True, 0.0)]], r"size_bytes must be an int"),
        ([[(1, 0.0), (2, float("nan"))]], r"options\[0\]\[1\]: error must be finite and >= 0"),
        ([[(1, float("inf"))]], r"error must be finite"),
        ([[(1, -0.5)]], r"error must be finite and >= 0"),
        ([[(1, "0.5")]], r"error must be a number"),
        ([[(1, 0.0, 3)]], r"options\[0\]\[0\] must be a \(size_bytes, error\) pair"),
        ([[(1, 0.0)], []], r"options\[1\] is empty"),
        ([[(1, 1e308)], [(1, 1e308)]], r"errors are too large to add up"),
        ("abc", r"options must be a sequence"),
    ],
)
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        allocate(options, 100)


@pytest.mark.parametrize(
    "budget, resolution, field",
    [(-1, None, "budget_bytes"), (10.0, None, "budget_bytes"), (10, 0, "resolution_bytes"), (10, 2.5, "resolution_bytes")],
)
def test_bad_budget_or_resolution_is_a_config_error(budget, resolution, field):
    with pytest.raises(ConfigError, match=field) as caught:
        allocate([[(1, 0.0)]], budget, resolution_bytes=resolution)
    assert caught.value.field == field
