import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from milcompress.config import JointConfig, LinearQuantizeConfig, MagnitudePruneConfig, PalettizeConfig
from milcompress.errors import ConfigError
from milcompress.ops import compress
from milcompress.ops.joint import SparseAffineParams, SparseLutParams
from milcompress.ops.palettize import palettize
from milcompress.ops._arrays import unique_values
from tests.strategies import weights


@given(w=weights(min_rank=2), target=st.floats(0.0, 1.0), nbits=st.sampled_from([1, 2, 4, 8]))
def test_prune_then_palettize_keeps_zeros_and_fits_the_table_to_survivors(w, target, nbits):
    config = JointConfig(MagnitudePruneConfig(target_sparsity=target), PalettizeConfig(nbits=nbits))
    params = compress(w, config)
    assert isinstance(params, SparseLutParams)
    dense = params.decompress()
    assert dense.dtype == w.dtype and (dense[~params.mask] == 0).all()
    plain = compress(w, config.prune)
    np.testing.assert_array_equal(params.mask, plain.mask)
    survivors = unique_values(w[params.mask])
    if len(survivors) <= 1 << nbits:
        np.testing.assert_array_equal(dense[params.mask], w[params.mask])


def test_the_table_ignores_pruned_zeros():
    w = np.array([[0.01, -0.02, 0.015, 1.0, 1.1, -1.0, -1.1, 0.9]], np.float32).T
    config = JointConfig(MagnitudePruneConfig(target_sparsity=0.375), PalettizeConfig(nbits=2))
    params = compress(w, config)
    assert 0.0 not in params.lut.lut.reshape(-1).tolist()
    dense_table_without_mask = compress(w, PalettizeConfig(nbits=2))
    survivors_error = lambda dense: float(np.sum((dense - w)[params.mask] ** 2))  # noqa: E731
    assert survivors_error(params.decompress()) < survivors_error(dense_table_without_mask.decompress())


@given(w=weights(min_rank=2), target=st.floats(0.0, 1.0), dtype=st.sampled_from(["int8", "int4", "uint4"]))
def test_prune_then_quantize(w, target, dtype):
    config = JointConfig(MagnitudePruneConfig(target_sparsity=target), LinearQuantizeConfig(dtype=dtype))
    params = compress(w, config)
    assert isinstance(params, SparseAffineParams)
    dense = params.decompress()
    assert (dense[~params.mask] == 0).all()
    scale = np.repeat(params.affine.scale.astype(np.float64), w.shape[0] // params.affine.scale.shape[0], 0)
    error = np.abs(dense.astype(np.float64) - w)[params.mask]
    bound = np.broadcast_to(scale / 2, w.shape)[params.mask] + np.spacing(np.abs(dense[params.mask])).astype(np.float64) / 2
    assert (error <= bound * (1 + 1e-9)).all()


def test_joint_nbytes_store_only_survivors():
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float16)
    params = compress(w, JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4)))
    assert params.nbytes == 64 * 64 // 8 + 1024 // 2 + 16 * 2


def test_vector_and_custom_joint_configs_are_rejected():
    with pytest.raises(ConfigError, match="then.cluster_dim"):
        JointConfig(MagnitudePruneConfig(target_sparsity=0.5), PalettizeConfig(nbits=2, cluster_dim=2))
    with pytest.raises(ConfigError, match="then.mode"):
        JointConfig(MagnitudePruneConfig(target_sparsity=0.5), PalettizeConfig(mode="custom", lut_function=lambda w: w))


@given(w=weights(), target=st.sampled_from([0.5, 0.75]), nbits=st.sampled_from([1, 2, 4]), mode=st.sampled_from(["kmeans", "uniform"]))
def test_a_per_tensor_table_after_pruning_is_the_survivors_own_table(w, target, nbits, mode):
    config = JointConfig(MagnitudePruneConfig(target_sparsity=target), PalettizeConfig(nbits=nbits, mode=mode))
    params = compress(w, config)
    assume(params.mask.any())
    own = palettize(w[params.mask], PalettizeConfig(nbits=nbits, mode=mode))
    np.testing.assert_array_equal(params.lut.lut.reshape(-1), own.lut.reshape(-1))
    np.testing.assert_array_equal(params.decompress()[params.mask], own.decompress())
    # As good on the survivors as the whole tensor clustered with the pruned zeros weighted 0.
    pruned = np.where(params.mask, w, np.zeros((), w.dtype))
    weighted = palettize(pruned, PalettizeConfig(nbits=nbits, mode=mode), importance=params.mask.astype(np.float64))
    error = lambda dense: float(np.sum(np.square(dense.astype(np.float64) - w.astype(np.float64))[params.mask]))  # noqa: E731
    assert error(params.decompress()) <= error(weighted.decompress()) * (1 + 1e-6) + 1e-12
