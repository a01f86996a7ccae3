import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress.config import MagnitudePruneConfig, ThresholdPruneConfig
from milcompress.errors import NotCompressible
from milcompress.ops.prune import SparseParams, prune, prune_mask
from tests.strategies import weights


def _check_sparse_form(w, params: SparseParams, pruned_mask):
    """Stored values are the original ones; every zero (given or pruned) is left out."""
    expected = np.where(pruned_mask, 0, w).astype(w.dtype)
    np.testing.assert_array_equal(params.decompress(), expected)
    np.testing.assert_array_equal(params.mask, expected != 0)
    assert params.nonzero_data.dtype == w.dtype
    assert params.decompress().dtype == w.dtype


@given(w=weights(), target=st.floats(0.0, 1.0))
def test_unstructured_sparsity_is_exact_and_prunes_the_smallest(w, target):
    params = prune(w, MagnitudePruneConfig(target_sparsity=target))
    mask = prune_mask(w, MagnitudePruneConfig(target_sparsity=target))
    k = math.floor(target * w.size + 1e-9)
    assert mask.sum() == k
    _check_sparse_form(w, params, mask)
    assert w.size - params.nonzero_data.size == max(k, int(np.sum(w == 0)))
    magnitude = np.abs(w.astype(np.float32))
    if 0 < k < w.size:
        assert magnitude[mask].max() <= magnitude[~mask].min()


def test_ties_go_to_the_lowest_index_and_results_repeat():
    w = np.ones((4, 4), dtype=np.float16)
    config = MagnitudePruneConfig(target_sparsity=0.25)
    mask = prune_mask(w, config)
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(prune(w, config).mask, prune(w, config).mask)


def test_large_float16_tensor_is_really_pruned():
    # coremltools' np.percentile on float16 returns NaN above 65,504 elements and prunes nothing.
    w = np.random.default_rng(0).normal(size=(300, 300)).astype(np.float16)
    params = prune(w, MagnitudePruneConfig(target_sparsity=0.5))
    assert params.sparsity == pytest.approx(0.5, abs=1e-5)


@given(w=weights(min_rank=2), n=st.integers(0, 4), extra=st.integers(0, 4), dim=st.sampled_from([0, 1]))
def test_n_m_structure_is_exact(w, n, extra, dim):
    m = max(n + extra, 1)
    config = MagnitudePruneConfig(n_m_ratio=(n, m), dim=dim)
    mask = prune_mask(w, config)
    _check_sparse_form(w, prune(w, config), mask)
    moved_mask = np.moveaxis(mask, dim, -1)
    magnitude = np.moveaxis(np.abs(w.astype(np.float32)), dim, -1)
    length = moved_mask.shape[-1]
    for start in range(0, length, m):
        run = slice(start, min(start + m, length))
        size = run.stop - run.start
        expected = n if size == m else (n * size) // m
        assert (moved_mask[..., run].sum(-1) == expected).all()
        pruned = np.where(moved_mask[..., run], magnitude[..., run], -np.inf).max(-1)
        kept = np.where(moved_mask[..., run], np.inf, magnitude[..., run]).min(-1)
        assert (pruned <= kept).all()


@given(w=weights(min_rank=2), target=st.floats(0.0, 1.0), block=st.integers(2, 5), dim=st.sampled_from([0, 1]))
def test_block_structure_is_exact(w, target, block, dim):
    config = MagnitudePruneConfig(target_sparsity=target, block_size=block, dim=dim)
    mask = prune_mask(w, config)
    _check_sparse_form(w, prune(w, config), mask)
    moved = np.moveaxis(mask, dim, 0)
    length = moved.shape[0]
    starts = range(0, length, block)
    block_masks = [moved[s : s + block] for s in starts]
    for b in block_masks:  # each block is pruned whole or not at all
        assert (b == b[:1]).all()
    pruned_blocks = sum(int(b[0].sum()) for b in block_masks)
    total_blocks = len(block_masks) * int(np.prod(moved.shape[1:]))
    assert pruned_blocks == math.floor(target * total_blocks + 1e-9)
    norms = [np.sqrt((np.moveaxis(w.astype(np.float64), dim, 0)[s : s + block] ** 2).sum(0)) for s in starts]
    pruned = [n[b[0]] for n, b in zip(norms, block_masks)]
    kept = [n[~b[0]] for n, b in zip(norms, block_masks)]
    pruned, kept = np.concatenate([p.ravel() for p in pruned]), np.concatenate([k.ravel() for k in kept])
    if pruned.size and kept.size:
        assert pruned.max() <= kept.min() * (1 + 1e-12)


def test_structured_pruning_needs_the_dimension():
    with pytest.raises(NotCompressible, match="rank > 1"):
        prune(np.ones(16, np.float32), MagnitudePruneConfig(n_m_ratio=(2, 4)))


@given(w=weights(), threshold=st.floats(0.0, 1.0))
def test_threshold_pruning(w, threshold):
    config = ThresholdPruneConfig(threshold=threshold, minimum_sparsity_percentile=0.0)
    params = prune(w, config)
    _check_sparse_form(w, params, np.abs(w.astype(np.float32)) <= threshold)


def test_threshold_pruning_below_the_minimum_sparsity_is_not_compressible():
    w = np.array([[0.5, 0.01], [0.7, 0.9]], dtype=np.float32)
    with pytest.raises(NotCompressible, match=r"only 25\.0% .* minimum_sparsity_percentile is 50\.0%"):
        prune(w, ThresholdPruneConfig(threshold=0.1))


def test_non_finite_and_non_float_weights_are_not_compressible():
    with pytest.raises(NotCompressible, match="1 non-finite"):
        prune(np.array([1.0, np.inf], np.float32), MagnitudePruneConfig(target_sparsity=0.5))
    with pytest.raises(NotCompressible, match="int8 is not float16 or float32"):
        prune(np.ones(4, np.int8), MagnitudePruneConfig(target_sparsity=0.5))


def test_nbytes_counts_a_bit_per_position_and_the_stored_values():
    w = np.arange(1, 17, dtype=np.float16).reshape(4, 4)
    params = prune(w, MagnitudePruneConfig(target_sparsity=0.75))
    assert params.nbytes == 2 + 4 * 2
