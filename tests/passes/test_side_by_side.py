"""Our passes next to coremltools' on the same programs and the same config objects: the same op
forms for the program's opset, and error no worse than coremltools'."""

import dataclasses
import warnings
from collections import Counter

import numpy as np
import pytest
from coremltools.optimize.coreml import (
    OpLinearQuantizerConfig,
    OpMagnitudePrunerConfig,
    OpPalettizerConfig,
    OpThresholdPrunerConfig,
    OptimizationConfig,
)
from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as CtQuantize
from coremltools.optimize.coreml._quantization_passes import palettize_weights as CtPalettize
from coremltools.optimize.coreml._quantization_passes import prune_weights as CtPrune

import milcompress  # noqa: F401
from milcompress._coremltools import IOS16, IOS18, mb, types
from milcompress.config import CompressionConfig, from_coremltools
from milcompress.errors import ConfigError
from milcompress.lowering import read_back
from milcompress.ops import snr_db
from milcompress.ops.kmeans import outlier_scale
from milcompress.ops.metrics import noise_to_signal
from milcompress.passes import compress_program
from milcompress.passes.graph import walk_ops

WEIGHTS = {
    "conv_w": np.random.default_rng(1).normal(0, 0.05, (32, 16, 3, 3)).astype(np.float16),
    "fc_w": (np.random.default_rng(2).standard_t(2.5, (64, 128)) * 0.02).astype(np.float16),
}


def program(opset):
    @mb.program(input_specs=[mb.TensorSpec((1, 16, 8, 8), dtype=types.fp16)], opset_version=opset)
    def prog(x):
        # Copies: coremltools' per-channel-scale palettization divides a const's array in place.
        y = mb.conv(x=x, weight=mb.const(val=WEIGHTS["conv_w"].copy(), name="conv_w"), pad_type="same", name="conv")
        y = mb.reshape(x=mb.reduce_mean(x=y, axes=[2, 3]), shape=[1, 32], name="pool")
        y = mb.concat(values=[y, y, y, y], axis=1, name="widen")
        return mb.linear(x=y, weight=mb.const(val=WEIGHTS["fc_w"].copy(), name="fc_w"), name="fc")

    return prog


def _weights(prog):
    """name of each weight (the const the chain replaced) -> (dense value, op types of its chain)."""
    found = {}
    for op, _ in walk_ops(prog):
        for var in op.outputs:
            readers = [c for c in var.child_ops if c.op_type in ("conv", "linear") and c.weight is var]
            if readers and (op.op_type == "const" or op.op_type.startswith("constexpr_")):
                name = "conv_w" if readers[0].op_type == "conv" else "fc_w"
                back = read_back(var)
                found[name] = (back.dense, back.chain)
    return found


CT_CONFIGS = [
    ("kmeans 2-bit", CtPalettize, OpPalettizerConfig(nbits=2, mode="kmeans", weight_threshold=1000)),
    ("kmeans 4-bit", CtPalettize, OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=1000)),
    ("kmeans 8-bit", CtPalettize, OpPalettizerConfig(nbits=8, mode="kmeans", weight_threshold=1000)),
    ("kmeans 4-bit grouped", CtPalettize, OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=8, weight_threshold=1000)),
    ("kmeans 3-bit grouped", CtPalettize, OpPalettizerConfig(nbits=3, granularity="per_grouped_channel", group_size=16, weight_threshold=1000)),
    ("kmeans 2-bit vectors", CtPalettize, OpPalettizerConfig(nbits=2, cluster_dim=2, weight_threshold=1000)),
    ("kmeans 4-bit channel scale", CtPalettize, OpPalettizerConfig(nbits=4, enable_per_channel_scale=True, weight_threshold=1000)),
    ("uniform 4-bit", CtPalettize, OpPalettizerConfig(nbits=4, mode="uniform", weight_threshold=1000)),
    ("int8 per channel", CtQuantize, OpLinearQuantizerConfig(weight_threshold=1000)),
    ("uint8 linear per tensor", CtQuantize, OpLinearQuantizerConfig(mode="linear", dtype="uint8", granularity="per_tensor", weight_threshold=1000)),
    ("int4 per block 16", CtQuantize, OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=1000)),
    ("magnitude 50%", CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1000)),
    ("magnitude 2:4", CtPrune, OpMagnitudePrunerConfig(n_m_ratio=(2, 4), weight_threshold=1000)),
    ("magnitude blocks of 2", CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, block_size=2, weight_threshold=1000)),
    ("threshold", CtPrune, OpThresholdPrunerConfig(threshold=0.02, minimum_sparsity_percentile=0.2, weight_threshold=1000)),
]


@pytest.mark.parametrize("label, ct_pass, op_config", CT_CONFIGS, ids=[c[0] for c in CT_CONFIGS])
@pytest.mark.parametrize("opset", [IOS16, IOS18], ids=["iOS16", "iOS18"])
def test_same_forms_and_no_worse_error_than_coremltools(label, ct_pass, op_config, opset):
    config = OptimizationConfig(global_config=op_config)
    theirs = program(opset)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            ct_pass(config=config).apply(theirs)
            ct_error = None
        except ValueError as error:  # coremltools: this form needs iOS18
            ct_error = error
    ours = program(opset)
    if ct_error is not None:
        with pytest.raises(milcompress.PreconditionError, match="iOS18"):
            compress_program(ours, config)
        return
    compress_program(ours, config)
    ours_w, theirs_w = _weights(ours), _weights(theirs)
    constexprs = lambda w: Counter(t for _, chain in w.values() for t in chain if t.startswith("constexpr_"))  # noqa: E731
    assert constexprs(ours_w) == constexprs(theirs_w)
    # Our k-means tables are outlier-aware by default, a different objective from coremltools'
    # least squares (a documented difference): on it, ours must be no worse; and our
    # least-squares table (outlier_aware=False) no worse on theirs, the SNR.
    outlier_aware = isinstance(op_config, OpPalettizerConfig) and op_config.mode.lower() == "kmeans"
    if outlier_aware:
        for name, original in WEIGHTS.items():
            measure = lambda back: noise_to_signal(original, back, outlier_scale=outlier_scale(original))  # noqa: E731
            assert measure(ours_w[name][0]) <= measure(theirs_w[name][0]) * 1.01, name
        plain = from_coremltools(config)
        plain = CompressionConfig(dataclasses.replace(plain.global_config, outlier_aware=False))
        ours = program(opset)
        compress_program(ours, plain)
        ours_w = _weights(ours)
    for name, original in WEIGHTS.items():
        ours_snr, theirs_snr = snr_db(original, ours_w[name][0]), snr_db(original, theirs_w[name][0])
        if "magnitude" in label:  # exact sparsity for us; coremltools' percentile may prune a few more
            ours_sparsity = np.mean(ours_w[name][0] == 0)
            assert ours_sparsity <= np.mean(theirs_w[name][0] == 0) + 1 / original.size
        assert ours_snr >= theirs_snr - 0.05, f"{name}: ours {ours_snr:.3f} dB, coremltools {theirs_snr:.3f} dB"


JOINT_CONFIGS = [
    ("then kmeans 4-bit", CtPalettize, OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=1000)),
    ("then kmeans 2-bit", CtPalettize, OpPalettizerConfig(nbits=2, mode="kmeans", weight_threshold=1000)),
    ("then int8 per channel", CtQuantize, OpLinearQuantizerConfig(weight_threshold=1000)),
    ("then int4 per block 16", CtQuantize, OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=1000)),
]


@pytest.mark.parametrize("label, ct_pass, op_config", JOINT_CONFIGS, ids=[c[0] for c in JOINT_CONFIGS])
@pytest.mark.parametrize("opset", [IOS16, IOS18], ids=["iOS16", "iOS18"])
def test_joint_compression_of_pruned_weights_matches_coremltools(label, ct_pass, op_config, opset):
    """coremltools' two calls (prune, then palettize or quantize with joint_compression=True): the
    same chains, the same mask, and error no worse (it also clusters the pruned zeros; we do not)."""
    prune = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.75, weight_threshold=1000))
    config = OptimizationConfig(global_config=op_config)
    theirs, ours = program(opset), program(opset)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for prog in (theirs, ours):
            CtPrune(config=prune).apply(prog)
        pruned = _weights(ours)
        graph_pass = ct_pass(config=config)
        graph_pass.joint_compression = True
        try:
            graph_pass.apply(theirs)
            ct_error = None
        except ValueError as error:  # joint forms need iOS18
            ct_error = error
    if ct_error is not None:
        with pytest.raises(milcompress.PreconditionError, match="iOS18"):
            compress_program(ours, config, joint_compression=True)
        return
    if "kmeans" in label:  # the same objective as coremltools' tables: least squares
        config = CompressionConfig(dataclasses.replace(from_coremltools(config).global_config, outlier_aware=False))
    report = compress_program(ours, config, joint_compression=True)
    assert report.totals()["compressed"] == 2
    ours_w, theirs_w = _weights(ours), _weights(theirs)
    for name in WEIGHTS:
        assert ours_w[name][1] == theirs_w[name][1]  # the same op chain
        assert np.all(ours_w[name][0][pruned[name][0] == 0] == 0)  # pruned weights stay pruned
        if "kmeans" in label:  # a palette of the non-zeros has no zero entry: the mask is exactly kept
            np.testing.assert_array_equal(ours_w[name][0] == 0, pruned[name][0] == 0)
        ours_snr, theirs_snr = snr_db(pruned[name][0], ours_w[name][0]), snr_db(pruned[name][0], theirs_w[name][0])
        assert ours_snr >= theirs_snr - 0.05, f"{name}: ours {ours_snr:.3f} dB, coremltools {theirs_snr:.3f} dB"
    # The chain's old consts are gone: one mask per weight remains.
    assert sum(op.op_type == "constexpr_sparse_to_dense" for op, _ in walk_ops(ours)) == 2


def test_joint_compression_leaves_dense_weights_to_the_plain_pass_and_names_other_configs():
    prog = program(IOS18)
    prune = OptimizationConfig(op_name_configs={"conv_w": OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1000)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CtPrune(config=prune).apply(prog)
    report = compress_program(prog, OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=1000)), joint_compression=True)
    forms = {r.name: r.form for r in report.records if r.action == "compressed"}
    assert sorted(forms.values()) == ["LUT 4-bit", "sparse 50% + LUT 4-bit"], forms
    # Pruning on top: the palettized weight is pruned (coremltools' palettize -> prune); the one
    # already sparse has no further joint form, and says so.
    again = compress_program(prog, OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1000)), joint_compression=True)
    assert [r.form for r in again.compressed] == ["sparse 50% + LUT 4-bit"]
    (joint_skip,) = [r for r in again.skipped if r.reason.startswith("joint compression")]
    assert "sparse 50% + LUT 4-bit cannot take MagnitudePruneConfig" in joint_skip.reason


@pytest.mark.parametrize(
    "data, message",
    [
        ({"config_type": "OpPalettizerConfig", "global_config": {"mode": "unique", "nbits": 4}}, "nbits"),
        ({"config_type": "OpPalettizerConfig", "global_config": {"nbits": 4, "lut_function": None}}, "lut_function"),
        ({"config_type": "OpLinearQuantizerConfig", "global_config": {"dtype": "int2"}}, "dtype"),
        ({"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "block_size": 1}}, "block_size"),
        ({"config_type": "OpThresholdPrunerConfig", "global_config": {"threshold": 0.1, "bogus": 1}}, "bogus"),
    ],
)
def test_configs_coremltools_rejects_are_rejected(data, message):
    with pytest.raises(ConfigError, match=message):
        CompressionConfig.from_dict(data)


def test_coremltools_objects_and_dicts_mean_the_same():
    op_config = OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=8, num_kmeans_workers=4)
    from_object = CompressionConfig.of(OptimizationConfig(global_config=op_config, op_type_configs={"linear": None}))
    from_dict = CompressionConfig.from_dict(
        {
            "config_type": "OpPalettizerConfig",
            "global_config": {"nbits": 4, "granularity": "per_grouped_channel", "group_size": 8},
            "op_type_configs": {"linear": None},
        }
    )
    assert from_object == from_dict
