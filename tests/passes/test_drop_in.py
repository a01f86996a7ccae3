"""Drop-in fidelity (issue 21): each thing a coremltools user or their code can tell apart, run with
both libraries on the same programs and the same coremltools config objects, at both levels: the
model-level functions and the pass classes constructed as coremltools constructs its own."""

import logging
import warnings

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
from coremltools.optimize.coreml import (
    OpLinearQuantizerConfig,
    OpMagnitudePrunerConfig,
    OpPalettizerConfig,
    OptimizationConfig,
)
from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as CtQuantize
from coremltools.optimize.coreml._quantization_passes import palettize_weights as CtPalettize
from coremltools.optimize.coreml._quantization_passes import prune_weights as CtPrune

import milcompress
from milcompress._coremltools import IOS15, IOS16, IOS17, IOS18, mb, types
from milcompress.config import CompressionConfig, LinearQuantizeConfig, PalettizeConfig
from milcompress.errors import ConfigError, PreconditionError, UnsupportedError
from milcompress.lowering import opset_error, read_back
from milcompress.passes import LinearQuantizeWeights, PalettizeWeights, PruneWeights, compress_program, reports_of
from milcompress.passes.graph import walk_ops
from milcompress.reference import run_program

CONV_W = np.random.default_rng(1).normal(0, 0.05, (24, 8, 3, 3)).astype(np.float16)  # 24 channels: 16 does not divide
FC_W = np.random.default_rng(2).normal(0, 0.05, (32, 96)).astype(np.float16)
OURS = {CtPalettize: PalettizeWeights, CtPrune: PruneWeights, CtQuantize: LinearQuantizeWeights}


def program(opset=IOS18, dtype=types.fp16):
    """conv (24 out channels) -> mean -> tile -> linear; copies of the weights each time."""
    cast = np.float16 if dtype == types.fp16 else np.float32

    @mb.program(input_specs=[mb.TensorSpec((1, 8, 4, 4), dtype=dtype)], opset_version=opset)
    def prog(x):
        y = mb.conv(x=x, weight=mb.const(val=CONV_W.astype(cast), name="conv_w"), pad_type="same", name="conv")
        y = mb.reshape(x=mb.reduce_mean(x=y, axes=[2, 3]), shape=[1, 24], name="pool")
        y = mb.concat(values=[y, y, y, y], axis=1, name="widen")
        return mb.linear(x=y, weight=mb.const(val=FC_W.astype(cast), name="fc_w"), name="fc")

    return prog


def weights(prog):
    """consumer op name -> ReadBack of the weight it reads."""
    return {op.name: read_back(op.weight) for op, _ in walk_ops(prog) if op.op_type in ("conv", "linear")}


def constexpr_types(prog):
    return sorted(op.op_type for op, _ in walk_ops(prog) if op.op_type.startswith("constexpr_"))


def quietly(call, *args, **kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def both(ct_pass, config, opset=IOS18, joint=False, fake=False, build=program):
    """Apply coremltools' pass and ours, each constructed as coremltools constructs its own, to
    fresh copies of one program; return (theirs, ours), or raise what coremltools raised after
    checking ours raises the same class."""
    theirs, ours = build(opset), build(opset)
    passes = [ct_pass(config=config, fake_compression=fake), OURS[ct_pass](config=config, fake_compression=fake)]
    for graph_pass in passes:
        graph_pass.joint_compression = joint
    try:
        quietly(passes[0].apply, theirs)
    except Exception as error:
        with pytest.raises(type(error)):
            quietly(passes[1], ours)  # __call__, as a pipeline runs a pass
        raise
    quietly(passes[1], ours)
    return theirs, ours


def mlmodel(opset=None):
    """An ML program converted from `program`, by default without a deployment target (iOS15)."""
    kwargs = {} if opset is None else {"minimum_deployment_target": opset}
    return quietly(ct.convert, program(IOS15 if opset is None else opset, dtype=types.fp32), convert_to="mlprogram", **kwargs)


def model_constexprs(model):
    return constexpr_types(milcompress.api.program_of(model))


# 1. Default-target (iOS15) programs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def default_target_model():
    model = mlmodel()
    assert model.get_spec().specificationVersion == 6  # iOS15
    return model


@pytest.mark.parametrize(
    "function, op_config",
    [
        ("palettize_weights", OpPalettizerConfig(nbits=4, weight_threshold=500)),
        ("prune_weights", OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500)),
        ("linear_quantize_weights", OpLinearQuantizerConfig(weight_threshold=500)),
    ],
)
def test_default_target_models_are_compressed_and_saved_as_ios16_as_coremltools_does(default_target_model, function, op_config):
    config = OptimizationConfig(global_config=op_config)
    theirs = quietly(getattr(cto, function), default_target_model, config)
    ours = quietly(getattr(milcompress, function), default_target_model, config)
    assert ours.get_spec().specificationVersion == theirs.get_spec().specificationVersion == 7  # iOS16
    assert model_constexprs(ours) == model_constexprs(theirs) and len(model_constexprs(ours)) == 2
    assert default_target_model.get_spec().specificationVersion == 6  # the input is untouched


def test_passes_leave_an_ios15_program_alone_as_coremltools_does_but_record_why(caplog):
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=500))
    theirs, ours = both(CtPalettize, config, opset=IOS15)
    assert constexpr_types(theirs) == constexpr_types(ours) == []
    (report,) = reports_of(ours)
    reasons = {r.name: r.reason for r in report.records}
    for name in ("conv_w", "fc_w"):
        assert reasons[name].startswith("opset too old: the program targets iOS15 and compressed weights need iOS16")
    with caplog.at_level(logging.WARNING, logger="milcompress"):
        compress_program(program(IOS15), config)
    assert "older than iOS16" in caplog.text


def test_an_opset_error_never_prints_a_form_as_none():
    message = str(opset_error("w", None, IOS16, IOS15))
    assert "None" not in message and "compressed weights needs minimum_deployment_target=ct.target.iOS16" in message


# 2. Opset errors are ValueErrors with coremltools' wording -----------------------------------------

NEEDS_IOS18 = [
    (CtPalettize, OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=8, weight_threshold=500)),
    (CtPalettize, OpPalettizerConfig(nbits=2, cluster_dim=2, weight_threshold=500)),
    (CtQuantize, OpLinearQuantizerConfig(dtype="int4", weight_threshold=500)),
    (CtQuantize, OpLinearQuantizerConfig(granularity="per_block", block_size=8, weight_threshold=500)),
]


@pytest.mark.parametrize("ct_pass, op_config", NEEDS_IOS18, ids=["grouped", "vector", "int4", "per_block"])
@pytest.mark.parametrize("opset", [IOS16, IOS17], ids=["iOS16", "iOS17"])
def test_forms_needing_ios18_raise_a_value_error_with_coremltools_phrase(ct_pass, op_config, opset):
    phrase = "minimum_deployment_target set to at least ct.target.iOS18"
    with pytest.raises(ValueError, match=phrase):
        both(ct_pass, OptimizationConfig(global_config=op_config), opset=opset)
    with pytest.raises(PreconditionError, match=phrase) as error:  # our type, and our detail too
        compress_program(program(opset), OptimizationConfig(global_config=op_config))
    assert f"the program targets {opset.name}" in str(error.value) and error.value.minimum_deployment_target == "iOS18"


def test_model_level_opset_error_is_a_value_error_too():
    model = mlmodel(ct.target.iOS16)
    config = OptimizationConfig(global_config=NEEDS_IOS18[0][1])
    for library in (cto, milcompress):
        with pytest.raises(ValueError, match="at least ct.target.iOS18"):
            quietly(library.palettize_weights, model, config)


# 3. Config values coremltools accepts --------------------------------------------------------------


def test_group_size_zero_is_one_table_for_the_whole_tensor():
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=0, weight_threshold=500))
    theirs, ours = both(CtPalettize, config)
    for name, back in weights(ours).items():
        assert back.form.tables == 1, name
        assert weights(theirs)[name].form.tables == 1
    assert PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=0).group_size == 0


def test_block_size_zero_is_the_whole_input_axis():
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(granularity="per_block", block_size=0, weight_threshold=500))
    theirs, ours = both(CtQuantize, config)
    for name, back in weights(ours).items():
        assert back.form.block_sizes == weights(theirs)[name].form.block_sizes
        assert back.form.block_sizes[1] == back.form.shape[1]  # one scale per output channel
    assert LinearQuantizeConfig(granularity="per_block", block_size=0).block_size == 0


def test_the_deprecated_op_selector_form_means_what_it_means_to_coremltools():
    op_config = OpPalettizerConfig(nbits=4, weight_threshold=None)
    config = OptimizationConfig(global_config=op_config, is_deprecated=True, op_selector=lambda const: const.name == "fc_w")
    theirs, ours = both(CtPalettize, config)
    assert sorted(n for n, b in weights(ours).items() if b.form is not None) == ["fc"]
    assert constexpr_types(ours) == constexpr_types(theirs) == ["constexpr_lut_to_dense"]
    (report,) = reports_of(ours)
    assert "op_selector returned False" in {r.name: r.reason for r in report.records}["conv_w"]
    # Without a selector, every const of at least 10 elements (the deprecated API has no threshold),
    # but vectors: coremltools' deprecated path also palettizes the linear's 32-element zero bias,
    # which we keep dense as every rank-1 const (a documented difference).
    everything = OptimizationConfig(global_config=op_config, is_deprecated=True)
    theirs, ours = both(CtPalettize, everything)
    compressed = lambda prog: {op.name: op.outputs[0].rank for op, _ in walk_ops(prog) if op.op_type.startswith("constexpr_")}  # noqa: E731
    assert sorted(compressed(ours)) == ["conv_w_palettized", "fc_w_palettized"]
    assert {n: r for n, r in compressed(theirs).items() if r > 1} == compressed(ours)


def test_the_deprecated_form_refuses_a_weight_threshold_as_coremltools_does():
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=500), is_deprecated=True, op_selector=lambda c: True)
    message = "weight_threshold cannot be set through the deprecated ct.compression_util API"
    with pytest.raises(ValueError, match=message):
        quietly(CtPalettize(config=config).apply, program())
    with pytest.raises(ValueError, match=message):  # ours says so when the config is set, before any work
        PalettizeWeights(config=config)


@pytest.mark.parametrize(
    "ct_pass, op_config, suffix",
    [
        (CtPalettize, OpPalettizerConfig(nbits=2, weight_threshold=500), "_fake_palettized"),
        (CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500), "_fake_sparsified"),
        (CtQuantize, OpLinearQuantizerConfig(dtype="int4", weight_threshold=500), "_fake_quantized"),
    ],
    ids=["palettize", "prune", "quantize"],
)
def test_fake_compression_stores_the_decompressed_values_dense(ct_pass, op_config, suffix):
    config = OptimizationConfig(global_config=op_config)
    theirs, ours = both(ct_pass, config, fake=True)
    assert constexpr_types(theirs) == constexpr_types(ours) == []
    for prog in (theirs, ours):
        names = {op.name for op, _ in walk_ops(prog) if op.op_type == "const"}
        assert {"conv_w" + suffix, "fc_w" + suffix} <= names
    for name, back in weights(ours).items():
        original = CONV_W if name == "conv" else FC_W
        assert back.dense.dtype == original.dtype and back.dense.shape == original.shape
        if ct_pass is CtPalettize:
            assert len(np.unique(back.dense)) <= 4  # really compressed, then stored dense
        elif ct_pass is CtPrune:
            assert np.mean(back.dense == 0) == pytest.approx(0.5, abs=0.01)
    (report,) = reports_of(ours)
    assert all("fake_compression" in " ".join(r.notes) and r.bytes_after == r.bytes_before for r in report.compressed)


def test_const_in_op_type_configs_is_refused_as_coremltools_refuses_it():
    config = OptimizationConfig(op_type_configs={"const": OpPalettizerConfig(nbits=4, weight_threshold=500)})
    with pytest.raises(ValueError, match="const ops cannot be set by the `set_op_type` function"):
        both(CtPalettize, config)
    with pytest.raises(ConfigError, match="op_type_configs\\['const'\\]"):
        compress_program(program(), CompressionConfig(op_type_configs={"const": PalettizeConfig(nbits=4)}))


def test_pass_classes_are_constructed_and_called_as_coremltools_constructs_its_own():
    graph_pass = PalettizeWeights()
    assert graph_pass.config is None and graph_pass.fake_compression is False
    graph_pass = PalettizeWeights(OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=500)), fake_compression=True)
    assert graph_pass.fake_compression is True
    with pytest.raises(ValueError, match="only accept"):
        PalettizeWeights(config=OptimizationConfig(global_config=OpLinearQuantizerConfig()))


# 4. get_weights_metadata ---------------------------------------------------------------------------


def test_weights_metadata_is_keyed_and_filled_as_coremltools_does_and_keys_work_in_op_name_configs():
    model = mlmodel(ct.target.iOS16)
    theirs = quietly(cto.get_weights_metadata, model, weight_threshold=768)  # the conv weight has exactly 1728
    ours = milcompress.get_weights_metadata(model, weight_threshold=768)
    assert list(ours) == list(theirs) and len(ours) == 2
    for name, expected in theirs.items():
        got = ours[name]
        np.testing.assert_array_equal(got.val, expected.val)
        assert got.sparsity == pytest.approx(expected.sparsity) and got.unique_values == expected.unique_values
        assert [(c.op_type, c.name, dict(c.params_name_mapping)) for c in got.child_ops] == [
            (c.op_type, c.name, dict(c.params_name_mapping)) for c in expected.child_ops
        ]
    # coremltools' documented workflow: metadata keys into op_name_configs.
    first = next(iter(ours))
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=500), op_name_configs={first: None})
    small = quietly(milcompress.palettize_weights, model, config)
    forms = {name: m.form for name, m in milcompress.get_weights_metadata(small, weight_threshold=768).items()}
    assert forms[first] is None and sum(f is not None for f in forms.values()) == 1
    # At exactly weight_threshold elements a weight is listed, as coremltools lists it.
    assert len(milcompress.get_weights_metadata(model, weight_threshold=CONV_W.size)) == 2


# 5. lstm initial states ----------------------------------------------------------------------------


def lstm_program(opset):
    rng = np.random.default_rng(5)
    hidden = 48

    @mb.program(input_specs=[mb.TensorSpec((3, 1, 8))], opset_version=opset)
    def prog(x):
        h0 = mb.squeeze(x=mb.const(val=rng.normal(size=(1, 1, hidden)).astype(np.float32), name="h0"), axes=[0], name="h0_squeeze")
        c0 = mb.squeeze(x=mb.const(val=rng.normal(size=(1, 1, hidden)).astype(np.float32), name="c0"), axes=[0], name="c0_squeeze")
        weight_ih = mb.const(val=rng.normal(0, 0.1, (4 * hidden, 8)).astype(np.float32), name="weight_ih")
        weight_hh = mb.const(val=rng.normal(0, 0.1, (4 * hidden, hidden)).astype(np.float32), name="weight_hh")
        y, _, _ = mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=weight_ih, weight_hh=weight_hh, name="lstm")
        return y

    return prog


@pytest.mark.parametrize(
    "ct_pass, op_config",
    [
        (CtPalettize, OpPalettizerConfig(nbits=2, weight_threshold=40)),
        (CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=40)),
        (CtQuantize, OpLinearQuantizerConfig(weight_threshold=40)),
    ],
    ids=["palettize", "prune", "quantize"],
)
def test_lstm_initial_states_are_compressed_as_coremltools_does(ct_pass, op_config):
    theirs, ours = both(ct_pass, OptimizationConfig(global_config=op_config), build=lstm_program)

    def compressed(prog):
        return sorted(op.name.split("_")[0] for op, _ in walk_ops(prog) if op.op_type.startswith("constexpr_"))

    assert compressed(ours) == compressed(theirs)
    assert {"h0", "c0"} <= set(compressed(ours))


# 6. Joint compression in every direction coremltools 9.0 has ---------------------------------------

JOINT = [
    ("quantize -> prune", CtQuantize, OpLinearQuantizerConfig(weight_threshold=500), CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500)),
    ("palettize -> prune", CtPalettize, OpPalettizerConfig(nbits=4, weight_threshold=500), CtPrune, OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500)),
    ("palettize -> quantize the table", CtPalettize, OpPalettizerConfig(nbits=4, weight_threshold=500), CtQuantize, OpLinearQuantizerConfig(granularity="per_tensor", weight_threshold=500)),
    ("quantize -> palettize the integers", CtQuantize, OpLinearQuantizerConfig(weight_threshold=500), CtPalettize, OpPalettizerConfig(nbits=4, weight_threshold=500)),
]


@pytest.mark.parametrize("label, first, first_config, second, second_config", JOINT, ids=[j[0] for j in JOINT])
def test_the_joint_directions_give_coremltools_chains_and_decompress_correctly(label, first, first_config, second, second_config):
    theirs, ours = program(), program()
    for prog in (theirs, ours):
        quietly(first(config=OptimizationConfig(global_config=first_config)).apply, prog)
    before = {name: back.dense for name, back in weights(ours).items()}
    ct_pass = second(config=OptimizationConfig(global_config=second_config))
    ct_pass.joint_compression = True
    quietly(ct_pass.apply, theirs)
    our_pass = OURS[second](config=OptimizationConfig(global_config=second_config))
    our_pass.joint_compression = True
    quietly(our_pass.apply, ours)
    x = np.random.default_rng(7).normal(size=(1, 8, 4, 4)).astype(np.float16)
    for name, back in weights(ours).items():
        assert back.chain == weights(theirs)[name].chain, name
        if second is CtPrune:  # the mask is chosen on the decompressed values; the survivors keep theirs
            kept = back.dense != 0
            assert np.mean(~kept) == pytest.approx(0.5, abs=0.01)
            np.testing.assert_array_equal(back.dense[kept], before[name][kept])
        elif first is CtQuantize:  # the integers palettized: a table of int8, the same scales
            assert back.form.lut.lut.dtype == np.int8 and len(np.unique(back.form.affine.data)) <= 16
            np.testing.assert_array_equal(back.form.affine.scale, weights(ours)[name].form.affine.scale)
        else:  # int8 table entries: error within half a step of the table's range
            assert back.form.table.data.dtype == np.int8
            step = float(np.abs(back.form.table.scale).max())
            assert np.abs(back.dense.astype(np.float32) - before[name].astype(np.float32)).max() <= 0.5 * step * 1.01 + 1e-3
    assert all(r.action == "compressed" for r in reports_of(ours)[-1].records if r.name.endswith(("_quantized", "_palettized")))
    # The reference executor (written apart from our reader) runs the joint ops to the same result.
    (out,) = run_program(ours, {"x": x}).values()
    (expected,) = run_program(_dense_copy(ours), {"x": x}).values()
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


def _dense_copy(prog):
    """The same program with each weight as a dense const of the value our reader gives."""
    dense = {name: back.dense for name, back in weights(prog).items()}

    @mb.program(input_specs=[mb.TensorSpec((1, 8, 4, 4), dtype=types.fp16)], opset_version=IOS18)
    def copy(x):
        y = mb.conv(x=x, weight=dense["conv"], pad_type="same", name="conv")
        y = mb.reshape(x=mb.reduce_mean(x=y, axes=[2, 3]), shape=[1, 24], name="pool")
        y = mb.concat(values=[y, y, y, y], axis=1, name="widen")
        return mb.linear(x=y, weight=dense["fc"], name="fc")

    return copy


def test_joint_palettize_then_quantize_at_model_level_gives_int8_tables():
    model = mlmodel(ct.target.iOS18)
    palettized = quietly(milcompress.palettize_weights, model, OptimizationConfig(global_config=OpPalettizerConfig(nbits=4, weight_threshold=500)))
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(granularity="per_tensor", weight_threshold=500))
    ours = quietly(milcompress.linear_quantize_weights, palettized, config, joint_compression=True)
    theirs = quietly(cto.linear_quantize_weights, palettized, config, joint_compression=True)
    assert model_constexprs(ours) == model_constexprs(theirs) == ["constexpr_blockwise_shift_scale"] * 2 + ["constexpr_lut_to_dense"] * 2
    forms = [m.form for m in milcompress.get_weights_metadata(ours, weight_threshold=500).values()]
    assert forms == ["LUT 4-bit, int8 table"] * 2
    pruned = quietly(milcompress.prune_weights, palettized, OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500)), joint_compression=True)
    assert model_constexprs(pruned) == ["constexpr_lut_to_sparse"] * 2 + ["constexpr_sparse_to_dense"] * 2


@pytest.mark.parametrize("opset", [IOS16, IOS17], ids=["iOS16", "iOS17"])
def test_joint_compression_before_ios18_is_coremltools_value_error(opset):
    config = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=500))
    with pytest.raises(ValueError, match="Joint compression is only supported since iOS18"):
        both(CtPrune, config, opset=opset, joint=True)
    with pytest.raises(PreconditionError, match="at least ct.target.iOS18"):
        compress_program(program(opset), config, joint_compression=True)


def test_quantizing_a_table_other_than_per_tensor_is_coremltools_not_implemented_error():
    prog = program()
    compress_program(prog, PalettizeConfig(nbits=4, weight_threshold=500))
    with pytest.raises(NotImplementedError, match="per-tensor") as error:
        compress_program(prog, LinearQuantizeConfig(weight_threshold=500), joint_compression=True)
    assert isinstance(error.value, UnsupportedError) and isinstance(error.value, ValueError)


def test_a_joint_request_without_a_compatible_prior_form_is_recorded():
    prog = program()
    compress_program(prog, LinearQuantizeConfig(weight_threshold=500))
    report = compress_program(prog, LinearQuantizeConfig(granularity="per_tensor", weight_threshold=500), joint_compression=True)
    joint = [r for r in report.records if r.reason and r.reason.startswith("joint compression")]
    assert len(joint) == 2 and report.totals()["compressed"] == 0
    assert all("int8 per channel (axis 0) cannot take LinearQuantizeConfig on top" in r.reason for r in joint)


# 8. The switch for coremltools' exact group and block sizes -------------------------------------------


def test_shrink_to_fit_false_gives_coremltools_exact_group_size():
    op_config = OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=500)
    config = OptimizationConfig(global_config=op_config)
    theirs, ours = both(CtPalettize, config)
    assert weights(theirs)["conv"].form is None and weights(ours)["conv"].form.tables == 2  # 24 channels: groups of 12
    (report,) = reports_of(ours)
    assert "group_size 16 -> 12" in " ".join({r.name: r for r in report.records}["conv_w"].notes)
    strict = PalettizeWeights(config=config)
    strict.shrink_to_fit = "false"  # a pass option, as set_options passes it
    exact = program()
    quietly(strict.apply, exact)
    assert constexpr_types(exact) == constexpr_types(theirs) == ["constexpr_lut_to_dense"]
    reason = {r.name: r.reason for r in reports_of(exact)[0].records}["conv_w"]
    assert "not divisible by group_size 16" in reason
    # The same through our own config's field.
    field = program()
    compress_program(field, PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=500, shrink_to_fit=False))
    assert constexpr_types(field) == ["constexpr_lut_to_dense"]


def test_shrink_to_fit_false_at_model_level_for_blocks():
    model = mlmodel(ct.target.iOS18)
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=64, weight_threshold=500))
    theirs = quietly(cto.linear_quantize_weights, model, config)
    exact = quietly(milcompress.linear_quantize_weights, model, config, shrink_to_fit=False)
    shrunk = quietly(milcompress.linear_quantize_weights, model, config)
    assert model_constexprs(exact) == model_constexprs(theirs) == []  # 8 and 96 input channels: 64 divides neither
    assert len(model_constexprs(shrunk)) == 2


def test_a_classifier_model_compresses_as_coremltools_does_and_keeps_its_outputs():
    weight = np.random.default_rng(9).normal(0, 0.05, (10, 48)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((1, 48))], opset_version=IOS15)
    def prog(x):
        return mb.softmax(x=mb.linear(x=x, weight=weight), axis=-1)

    classifier = ct.ClassifierConfig([f"class_{i}" for i in range(10)])
    model = quietly(ct.convert, prog, convert_to="mlprogram", classifier_config=classifier)
    config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=2, weight_threshold=100))
    theirs, ours = (quietly(library.palettize_weights, model, config) for library in (cto, milcompress))
    for key in ("output", "predictedFeatureName", "predictedProbabilitiesName"):
        assert getattr(ours.get_spec().description, key) == getattr(theirs.get_spec().description, key)
    assert ours.get_spec().specificationVersion == theirs.get_spec().specificationVersion == 7
    assert model_constexprs(ours) == model_constexprs(theirs) == ["constexpr_lut_to_dense"]
