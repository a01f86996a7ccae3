import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress.config import (
    CompressionConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
    replace,
)
from milcompress.errors import ConfigError


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: MagnitudePruneConfig(), "target_sparsity"),
        (lambda: MagnitudePruneConfig(target_sparsity=0.5, n_m_ratio=(2, 4)), "target_sparsity"),
        (lambda: MagnitudePruneConfig(target_sparsity=1.5), "target_sparsity"),
        (lambda: MagnitudePruneConfig(n_m_ratio=(5, 4)), "n_m_ratio"),
        (lambda: MagnitudePruneConfig(n_m_ratio="2:4"), "n_m_ratio"),
        (lambda: MagnitudePruneConfig(target_sparsity=0.5, block_size=1), "block_size"),
        (lambda: MagnitudePruneConfig(n_m_ratio=(2, 4), block_size=2), "block_size"),
        (lambda: MagnitudePruneConfig(target_sparsity=0.5, dim=1), "dim"),
        (lambda: MagnitudePruneConfig(target_sparsity=0.5, block_size=2, dim=2), "dim"),
        (lambda: MagnitudePruneConfig(target_sparsity=0.5, weight_threshold=-1), "weight_threshold"),
        (lambda: ThresholdPruneConfig(threshold=-0.1), "threshold"),
        (lambda: ThresholdPruneConfig(minimum_sparsity_percentile=2.0), "minimum_sparsity_percentile"),
        (lambda: PalettizeConfig(), "nbits"),
        (lambda: PalettizeConfig(nbits=5), "nbits"),
        (lambda: PalettizeConfig(nbits=4, mode="median"), "mode"),
        (lambda: PalettizeConfig(mode="custom"), "lut_function"),
        (lambda: PalettizeConfig(nbits=4, lut_function=len), "lut_function"),
        (lambda: PalettizeConfig(mode="custom", nbits=4, lut_function=len), "nbits"),
        (lambda: PalettizeConfig(nbits=4, granularity="per_channel"), "granularity"),
        (lambda: PalettizeConfig(nbits=4, group_size=-1), "group_size"),
        (lambda: PalettizeConfig(nbits=4, shrink_to_fit="no"), "shrink_to_fit"),
        (lambda: PalettizeConfig(nbits=4, mode="uniform", cluster_dim=2), "cluster_dim"),
        (lambda: PalettizeConfig(nbits=4, enable_per_channel_scale="yes"), "enable_per_channel_scale"),
        (lambda: PalettizeConfig(nbits=4, min_snr_db=float("nan")), "min_snr_db"),
        (lambda: LinearQuantizeConfig(mode="log"), "mode"),
        (lambda: LinearQuantizeConfig(dtype="int2"), "dtype"),
        (lambda: LinearQuantizeConfig(dtype=np.float16), "dtype"),
        (lambda: LinearQuantizeConfig(granularity="per_grouped_channel"), "granularity"),
        (lambda: LinearQuantizeConfig(block_size=-1), "block_size"),
        (lambda: LinearQuantizeConfig(shrink_to_fit=None), "shrink_to_fit"),
        (lambda: LinearQuantizeConfig(block_size=(1, -2)), "block_size"),
        (lambda: JointConfig(PalettizeConfig(nbits=4), PalettizeConfig(nbits=4)), "prune"),
    ],
)
def test_invalid_values_name_their_field(make, field):
    with pytest.raises(ConfigError) as error:
        make()
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_spellings_are_normalised():
    assert PalettizeConfig(nbits=4, mode="KMEANS", granularity="PER_TENSOR") == PalettizeConfig(nbits=4)
    assert LinearQuantizeConfig(dtype=np.int8, mode="LINEAR_SYMMETRIC") == LinearQuantizeConfig()
    assert LinearQuantizeConfig(block_size=[1, 32]).block_size == (1, 32)
    assert MagnitudePruneConfig(n_m_ratio=[2, 4]).n_m_ratio == (2, 4)


def test_defaults_follow_coremltools():
    assert MagnitudePruneConfig(target_sparsity=0.5, block_size=2).dim == 0
    assert MagnitudePruneConfig(n_m_ratio=(2, 4)).dim == 1
    assert PalettizeConfig(nbits=4).weight_threshold == 2048
    q = LinearQuantizeConfig(dtype="uint4")
    assert (q.nbits, q.signed, q.granularity, q.block_size) == (4, False, "per_channel", 32)


def test_configs_are_frozen_and_replace_revalidates():
    config = PalettizeConfig(nbits=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nbits = 2
    assert replace(config, nbits=2).nbits == 2
    with pytest.raises(ConfigError, match="nbits"):
        replace(config, nbits=7)


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_target_sparsity_accepts_exactly_numbers_in_the_unit_interval(value):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if ok:
        assert MagnitudePruneConfig(target_sparsity=value).target_sparsity == float(value)
    else:
        with pytest.raises(ConfigError):
            MagnitudePruneConfig(target_sparsity=value)


def test_joint_limits_come_from_both_parts():
    joint = JointConfig(
        MagnitudePruneConfig(target_sparsity=0.5, weight_threshold=100, min_snr_db=10.0),
        PalettizeConfig(nbits=4, weight_threshold=4096),
    )
    assert joint.weight_threshold == 4096 and joint.min_snr_db == 10.0


_NAMES = st.text(alphabet="abcwxyz_019", min_size=1, max_size=8)


@given(names=st.sets(_NAMES, max_size=12), keys=st.lists(_NAMES, max_size=6, unique=True), types=st.sets(_NAMES, max_size=4))
def test_entries_matching_nothing_are_exactly_the_keys_the_model_lacks(names, keys, types):
    config = CompressionConfig(op_name_configs={k: None for k in keys}, op_type_configs={k: None for k in keys})
    found = config.unmatched(names, types)
    expected = [("op_name_configs", k) for k in keys if k not in names] + [("op_type_configs", k) for k in keys if k not in types]
    assert [(w.split("[")[0], w.split("'")[1]) for w in found] == expected
    for warning in found:
        field, key = warning.split("[")[0], warning.split("'")[1]
        known = names if field == "op_name_configs" else types
        if "(closest: " in warning:
            closest = warning.split("(closest: ")[1].rstrip(")").split(", ")
            assert 1 <= len(closest) <= 3 and set(closest) <= known
        elif known:
            assert f"the model has {len(known)}: " in warning
        else:
            assert warning.endswith("(the model has none)")
