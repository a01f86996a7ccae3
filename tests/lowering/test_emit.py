import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS16, IOS17, IOS18
from milcompress.config import JointConfig, LinearQuantizeConfig, MagnitudePruneConfig, PalettizeConfig
from milcompress.errors import PreconditionError
from milcompress.lowering import read_back
from milcompress.ops import compress
from tests.mil_helpers import conv_program, linear_program, op_types, replace_const

RNG = np.random.default_rng(0)
W16 = RNG.normal(0, 0.1, (32, 48)).astype(np.float16)
W32 = RNG.normal(0, 0.1, (32, 48)).astype(np.float32)

# (label, config, expected op chain on iOS16/17, expected op chain on iOS18)
CASES = [
    ("prune 50%", MagnitudePruneConfig(target_sparsity=0.5), ["constexpr_sparse_to_dense"], ["constexpr_sparse_to_dense"]),
    ("prune 2:4", MagnitudePruneConfig(n_m_ratio=(2, 4)), ["constexpr_sparse_to_dense"], ["constexpr_sparse_to_dense"]),
    ("palette 4-bit", PalettizeConfig(nbits=4), ["constexpr_lut_to_dense"], ["constexpr_lut_to_dense"]),
    ("palette 8-bit", PalettizeConfig(nbits=8), ["constexpr_lut_to_dense"], ["constexpr_lut_to_dense"]),
    ("palette 1-bit", PalettizeConfig(nbits=1), ["constexpr_lut_to_dense"], ["constexpr_lut_to_dense"]),
    ("palette 6-bit", PalettizeConfig(nbits=6), ["constexpr_lut_to_dense"], ["constexpr_lut_to_dense"]),
    ("palette 3-bit", PalettizeConfig(nbits=3), None, ["constexpr_lut_to_dense"]),
    ("palette 4-bit groups of 8", PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=8), None, ["constexpr_lut_to_dense"]),
    ("palette 2-bit vectors of 2", PalettizeConfig(nbits=2, cluster_dim=2), None, ["constexpr_lut_to_dense"]),
    ("palette 4-bit + channel scale", PalettizeConfig(nbits=4, enable_per_channel_scale=True), None, ["constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"]),
    ("int8 per channel", LinearQuantizeConfig(), ["constexpr_affine_dequantize"], ["constexpr_blockwise_shift_scale"]),
    ("uint8 linear per tensor", LinearQuantizeConfig(mode="linear", dtype="uint8", granularity="per_tensor"), ["constexpr_affine_dequantize"], ["constexpr_blockwise_shift_scale"]),
    ("int8 per block 16", LinearQuantizeConfig(granularity="per_block", block_size=16), None, ["constexpr_blockwise_shift_scale"]),
    ("int4 per block 16", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=16), None, ["constexpr_blockwise_shift_scale"]),
    ("uint4 linear per channel", LinearQuantizeConfig(mode="linear", dtype="uint4"), None, ["constexpr_blockwise_shift_scale"]),
    ("uint4 float offset per block 16", LinearQuantizeConfig(mode="linear_float_offset", dtype="uint4", granularity="per_block", block_size=16), None, ["constexpr_blockwise_shift_scale"]),
    ("int8 float offset per block 8", LinearQuantizeConfig(mode="linear_float_offset", dtype="int8", granularity="per_block", block_size=8), None, ["constexpr_blockwise_shift_scale"]),
    (
        "prune 75% + palette 4-bit",
        JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4)),
        None,
        ["constexpr_lut_to_sparse", "constexpr_sparse_to_dense"],
    ),
    (
        "prune 50% + palette 4-bit + scale",
        JointConfig(MagnitudePruneConfig(target_sparsity=0.5), PalettizeConfig(nbits=4, enable_per_channel_scale=True)),
        None,
        ["constexpr_lut_to_sparse", "constexpr_sparse_to_dense", "constexpr_blockwise_shift_scale"],
    ),
    (
        "prune 50% + int4 per block",
        JointConfig(MagnitudePruneConfig(target_sparsity=0.5), LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=16)),
        None,
        ["constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"],
    ),
]


def _materialised(var):
    """What coremltools itself says the final op of the chain produces."""
    value = var.op.materialized_val_inference()
    return value[list(var.op.outputs).index(var)] if isinstance(value, tuple) else value


@pytest.mark.parametrize("label, config, chain16, chain18", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("opset_name", ["iOS16", "iOS17", "iOS18"])
@pytest.mark.parametrize("weight", [W16, W32], ids=["fp16", "fp32"])
def test_every_form_lowers_to_the_expected_ops_and_materialises_exactly(label, config, chain16, chain18, opset_name, weight):
    opset = {"iOS16": IOS16, "iOS17": IOS17, "iOS18": IOS18}[opset_name]
    expected = chain18 if opset == IOS18 else chain16
    params = compress(weight, config)
    prog = linear_program(weight, opset)
    before = op_types(prog)
    if expected is None:
        with pytest.raises(PreconditionError, match=r"const 'w': .* needs minimum_deployment_target=ct\.target\.iOS18") as error:
            replace_const(prog, "w", params)
        assert error.value.minimum_deployment_target == "iOS18"
        assert op_types(prog) == before  # nothing was left half-done
        return
    var = replace_const(prog, "w", params)
    assert [t for t in op_types(prog) if t.startswith("constexpr_")] == expected
    dense = _materialised(var)
    assert dense.dtype == weight.dtype and dense.shape == weight.shape
    np.testing.assert_array_equal(dense, params.decompress())
    back = read_back(var)
    assert type(back.form) is type(params)
    np.testing.assert_array_equal(back.dense, params.decompress())
    assert var.name.startswith("w_")


def test_programs_before_ios16_have_no_constexpr_ops():
    prog = linear_program(W16, IOS15)
    with pytest.raises(PreconditionError, match=r"need minimum_deployment_target=ct\.target\.iOS16 or later; the program targets iOS15"):
        replace_const(prog, "w", compress(W16, PalettizeConfig(nbits=4)))


@settings(max_examples=25)
@given(
    nbits=st.sampled_from([1, 2, 3, 4, 6, 8]),
    group=st.sampled_from([1, 2, 4]),
    dim=st.sampled_from([1, 2]),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 1000),
)
def test_conv_palettization_round_trips_through_coremltools(nbits, group, dim, dtype, seed):
    w = np.random.default_rng(seed).standard_t(3, (8, 4, 3, 3)).astype(dtype)
    config = PalettizeConfig(nbits=nbits, granularity="per_grouped_channel", group_size=group * dim, cluster_dim=dim)
    params = compress(w, config)
    var = replace_const(conv_program(w, IOS18), "w", params)
    np.testing.assert_array_equal(_materialised(var), params.decompress())


@settings(max_examples=25)
@given(
    dtype_name=st.sampled_from(["int8", "uint8", "int4", "uint4"]),
    mode=st.sampled_from(["linear", "linear_symmetric", "linear_float_offset"]),
    blocks=st.sampled_from([(1, 0, 0, 0), (0, 0, 0, 0), (1, 2, 0, 0), (2, 4, 3, 1)]),
    seed=st.integers(0, 1000),
)
def test_conv_quantization_round_trips_through_coremltools(dtype_name, mode, blocks, seed):
    w = np.random.default_rng(seed).normal(size=(8, 4, 3, 3)).astype(np.float16)
    config = LinearQuantizeConfig(mode=mode, dtype=dtype_name, granularity="per_block", block_size=blocks)
    params = compress(w, config)
    var = replace_const(conv_program(w, IOS18), "w", params)
    np.testing.assert_array_equal(_materialised(var), params.decompress())


def test_an_all_pruned_tensor_still_lowers():
    w = np.zeros((32, 48), np.float16)
    for config in [MagnitudePruneConfig(target_sparsity=1.0), JointConfig(MagnitudePruneConfig(target_sparsity=1.0), PalettizeConfig(nbits=2))]:
        for opset in (IOS16, IOS18) if isinstance(config, MagnitudePruneConfig) else (IOS18,):
            var = replace_const(linear_program(w, opset), "w", compress(w, config))
            np.testing.assert_array_equal(_materialised(var), w)
