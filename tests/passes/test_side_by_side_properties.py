"""Property-based side by side with coremltools 9.0 (issue 21): the same small programs, the same
coremltools config objects drawn from its whole config space (modes, nbits, granularities, group
and block sizes including 0 and non-divisors, sparsities, n:m, thresholds, joint directions), on
opsets iOS15 to iOS18, through coremltools' pass classes and ours, constructed the same way.

What must hold:
- when coremltools raises one of its contract exceptions (ValueError, NotImplementedError), we
  raise the same class (coremltools' crashes, an AssertionError or a TypeError deep inside it, are
  its bugs: there we may succeed);
- when both succeed, each weight has the same constexpr op chain, or the difference is one the
  README's "Differences from coremltools" lists, visible in our report: a size shrunk to fit, a form
  not smaller than dense left dense, a block output left dense, a mask that is our exact sparsity,
  coremltools skip rules we do not share (structured pruning's "block_size > channel / 2");
- our dense values keep the config's promise (quantization error within half a step, palettes
  no worse than coremltools' k-means, pruned weights exact where kept, unique palettes lossless).
The default profile runs a few dozen examples; `-m slow` runs the larger profile.
"""

import warnings

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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS16, IOS17, IOS18, mb, types
from milcompress.lowering import read_back
from milcompress.ops import AffineParams, LutParams, QuantizedLutParams, SparseAffineParams, SparseLutParams, snr_db
from milcompress.passes import LinearQuantizeWeights, PalettizeWeights, PruneWeights, reports_of
from milcompress.ops.kmeans import OUTLIER_RMS
from milcompress.passes.graph import walk_ops

OURS = {CtPalettize: PalettizeWeights, CtPrune: PruneWeights, CtQuantize: LinearQuantizeWeights}
OPSETS = (IOS15, IOS16, IOS17, IOS18)
THRESHOLD = 100  # every weight of the programs below has more elements


# Programs -------------------------------------------------------------------------------------------


def _values(seed, shape, dtype):
    return (np.random.default_rng(seed).standard_t(4, shape) * 0.05).astype(dtype)


def conv(opset, dtype, seed):
    @mb.program(input_specs=[mb.TensorSpec((1, 6, 5, 5), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=_values(seed, (20, 6, 3, 3), dtype), name="w"), pad_type="same", name="consumer")

    return prog


def linear(opset, dtype, seed):
    @mb.program(input_specs=[mb.TensorSpec((1, 40), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=_values(seed, (24, 40), dtype), name="w"), name="consumer")

    return prog


def matmul(opset, dtype, seed):
    @mb.program(input_specs=[mb.TensorSpec((2, 36), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        return mb.matmul(x=x, y=mb.const(val=_values(seed, (36, 20), dtype), name="w"), name="consumer")

    return prog


def grouped_conv_transpose(opset, dtype, seed):
    @mb.program(input_specs=[mb.TensorSpec((1, 16, 4, 4), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        weight = mb.const(val=_values(seed, (16, 6, 2, 2), dtype), name="w")  # [C_in, C_out / groups, kh, kw]
        return mb.conv_transpose(x=x, weight=weight, groups=2, strides=[2, 2], name="consumer")

    return prog


def lstm(opset, dtype, seed):
    hidden = 32

    dtype = np.float32  # lstm takes float16 inputs from iOS17 only

    @mb.program(input_specs=[mb.TensorSpec((3, 1, 8), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        h0 = mb.squeeze(x=mb.const(val=_values(seed, (1, 1, hidden * 4), dtype)[..., :hidden], name="h0"), axes=[0])
        c0 = mb.squeeze(x=mb.const(val=_values(seed + 1, (1, 1, hidden * 4), dtype)[..., :hidden], name="c0"), axes=[0])
        weight_ih = mb.const(val=_values(seed + 2, (4 * hidden, 8), dtype), name="w")
        weight_hh = mb.const(val=_values(seed + 3, (4 * hidden, hidden), dtype), name="weight_hh")
        y, _, _ = mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=weight_ih, weight_hh=weight_hh, name="consumer")
        return y

    return prog


def classifier(opset, dtype, seed):
    @mb.program(input_specs=[mb.TensorSpec((1, 48), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        logits = mb.linear(x=x, weight=mb.const(val=_values(seed, (10, 48), dtype), name="w"), name="consumer")
        return mb.softmax(x=logits, axis=-1, name="probabilities")

    return prog


def tied(opset, dtype, seed):
    """One const read by two linears (a shared, tied weight)."""

    @mb.program(input_specs=[mb.TensorSpec((1, 32), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        weight = mb.const(val=_values(seed, (32, 32), dtype), name="w")
        return mb.linear(x=mb.linear(x=x, weight=weight, name="consumer"), weight=weight, name="again")

    return prog


def block_output(opset, dtype, seed):
    """A weight that is also returned as a block output."""

    @mb.program(input_specs=[mb.TensorSpec((1, 30), dtype=_builtin(dtype))], opset_version=opset)
    def prog(x):
        weight = mb.const(val=_values(seed, (16, 30), dtype), name="w")
        return mb.linear(x=x, weight=weight, name="consumer"), weight

    return prog


PROGRAMS = [conv, linear, matmul, grouped_conv_transpose, lstm, classifier, tied, block_output]


def _builtin(dtype):
    return types.fp16 if dtype == np.float16 else types.fp32


def _dtype(opset):
    return np.float32 if opset == IOS15 else np.float16  # float16 program inputs need iOS16


# Configs: coremltools' config space -----------------------------------------------------------------

palettizer_configs = st.builds(
    lambda mode, nbits, granularity, group_size, cluster_dim, scale: OpPalettizerConfig(
        mode=mode,
        nbits=None if mode == "unique" else nbits,
        granularity=granularity,
        group_size=group_size,
        cluster_dim=cluster_dim if mode != "uniform" else 1,
        enable_per_channel_scale=scale and mode != "unique",
        weight_threshold=THRESHOLD,
    ),
    st.sampled_from(["kmeans", "uniform", "unique"]),
    st.sampled_from([1, 2, 3, 4, 6, 8]),
    st.sampled_from(["per_tensor", "per_grouped_channel"]),
    st.sampled_from([0, 1, 4, 8, 5, 12, 32]),
    st.sampled_from([1, 1, 1, 2, 4]),
    st.booleans(),
)
quantizer_configs = st.builds(
    lambda mode, dtype, granularity, block_size: OpLinearQuantizerConfig(
        mode=mode, dtype=dtype, granularity=granularity, block_size=block_size, weight_threshold=THRESHOLD
    ),
    st.sampled_from(["linear", "linear_symmetric"]),
    st.sampled_from(["int8", "uint8", "int4", "uint4"]),
    st.sampled_from(["per_tensor", "per_channel", "per_block"]),
    st.sampled_from([0, 4, 8, 5, 16, 32]),
)
magnitude_configs = st.one_of(
    st.builds(lambda s: OpMagnitudePrunerConfig(target_sparsity=s, weight_threshold=THRESHOLD), st.sampled_from([0.0, 0.3, 0.5, 0.75, 1.0])),
    st.builds(
        lambda s, b, d: OpMagnitudePrunerConfig(target_sparsity=s, block_size=b, dim=d, weight_threshold=THRESHOLD),
        st.sampled_from([0.5, 0.75]),
        st.sampled_from([2, 4, 3]),
        st.sampled_from([0, 1]),
    ),
    st.builds(
        lambda nm, d: OpMagnitudePrunerConfig(n_m_ratio=nm, dim=d, weight_threshold=THRESHOLD),
        st.sampled_from([(1, 2), (2, 4), (3, 4), (4, 8), (1, 16)]),
        st.sampled_from([0, 1]),
    ),
)
threshold_configs = st.builds(
    lambda t, p: OpThresholdPrunerConfig(threshold=t, minimum_sparsity_percentile=p, weight_threshold=THRESHOLD),
    st.sampled_from([1e-12, 0.01, 0.03, 0.1]),
    st.sampled_from([0.0, 0.3, 0.6]),
)
single = st.one_of(
    st.tuples(st.just(CtPalettize), palettizer_configs),
    st.tuples(st.just(CtQuantize), quantizer_configs),
    st.tuples(st.just(CtPrune), st.one_of(magnitude_configs, threshold_configs)),
)
# The joint directions coremltools 9.0 has: (first pass, its config) then (second pass, its config).
joint = st.one_of(
    st.tuples(st.just(CtPrune), magnitude_configs, st.just(CtPalettize), palettizer_configs),
    st.tuples(st.just(CtPrune), magnitude_configs, st.just(CtQuantize), quantizer_configs),
    st.tuples(st.just(CtQuantize), quantizer_configs, st.just(CtPrune), st.one_of(magnitude_configs, threshold_configs)),
    st.tuples(st.just(CtPalettize), palettizer_configs, st.just(CtPrune), st.one_of(magnitude_configs, threshold_configs)),
    st.tuples(st.just(CtPalettize), palettizer_configs, st.just(CtQuantize), quantizer_configs),
    st.tuples(st.just(CtQuantize), quantizer_configs, st.just(CtPalettize), palettizer_configs),
)


# Running both ------------------------------------------------------------------------------------

CONTRACT = (ValueError, NotImplementedError)  # what coremltools raises on purpose


def _quietly(call, *args):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return call(*args)


def _weight_var(prog):
    for op, _ in walk_ops(prog):
        if op.name == "consumer":
            return getattr(op, "weight_ih" if op.op_type == "lstm" else ("y" if op.op_type == "matmul" else "weight"))
    raise AssertionError("no consumer op")


def _weight(prog):
    """The ReadBack of the weight the op named 'consumer' reads."""
    return read_back(_weight_var(prog))


def _record(prog, name):
    """Our last report's record of the const (or chain) named `name`."""
    return next((r for r in reports_of(prog)[-1].records if r.name == name), None)


def _is_contract(error) -> bool:
    """An exception coremltools raises on purpose: a ValueError or NotImplementedError raised by its
    compression code, not one from deep inside MIL (an op it built wrongly: its bug)."""
    if not isinstance(error, CONTRACT):
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return "coremltools/optimize/" in frame.tb_frame.f_code.co_filename.replace("\\", "/")


def _run_both(build, opset, seed, steps, fake=False):
    """Each (coremltools pass, config, joint) step on both programs, all but the last one by
    coremltools' pass on both (the same prior form). Returns (theirs, ours, the weight's dense value
    before the last step), or None when coremltools raised a contract exception (and we raised its
    class) or crashed."""
    dtype = _dtype(opset)
    theirs, ours = build(opset, dtype, seed), build(opset, dtype, seed)
    prior = name = None
    for index, (ct_pass, op_config, joint_compression) in enumerate(steps):
        prior, name = np.asarray(_weight(ours).dense), _weight_var(ours).op.name
        config = OptimizationConfig(global_config=op_config)
        last = index == len(steps) - 1
        their_pass, our_pass = ct_pass(config=config, fake_compression=fake and last), OURS[ct_pass](config=config, fake_compression=fake and last)
        their_pass.joint_compression = our_pass.joint_compression = joint_compression
        try:
            _quietly(their_pass.apply, theirs)
        except Exception as error:
            if not _is_contract(error):
                event(f"coremltools crashed: {type(error).__name__}")
                return None  # a crash inside coremltools (its bug): nothing to compare with
            with pytest.raises(type(error)):
                _quietly(our_pass.apply, ours)
            event(f"both raised {type(error).__name__}")
            return None
        if index < len(steps) - 1:  # earlier steps: the same prior form on both sides
            _quietly(ct_pass(config=config).apply, ours)
        else:
            _quietly(our_pass.apply, ours)
    event(f"both ran ({opset.name})")
    return theirs, ours, prior, name


# A documented difference, read from our record: why ours may hold another chain than coremltools'.
DOCUMENTED = (
    "would not be smaller than",  # a form not smaller than dense (or than the prior form) stays
    "a block output",  # Core ML cannot output a constexpr op directly
    "not divisible",  # the shape does not fit the form (coremltools skips with a warning, we with a record)
)


def _assert_same_or_documented(theirs_back, ours_back, record, op_config):
    if ours_back.chain == theirs_back.chain:
        event("same chain")
        return
    assert record is not None, f"no record: ours {ours_back.chain}, coremltools {theirs_back.chain}"
    explained = (record.reason or "") + " " + " ".join(record.notes)
    documented = [text for text in DOCUMENTED if text in explained]
    if documented or "->" in " ".join(record.notes):
        event(f"documented: {documented[0] if documented else 'size shrunk to fit'}")
        return
    if (record.form or "").startswith("sparse 100%"):
        event("documented: nothing survived pruning, stored as a plain sparse const")
        return
    if isinstance(op_config, OpMagnitudePrunerConfig) and (op_config.block_size or op_config.n_m_ratio):
        event("documented: structured pruning coremltools skips")
        return  # coremltools skips structured pruning when block_size or m > channels / 2; we prune
    raise AssertionError(f"ours {ours_back.chain} ({record.form or record.reason}), coremltools {theirs_back.chain}, config {op_config}")


def _assert_promise(ours_back, theirs_back, op_config, prior, record):
    """Our dense values keep what the config promises, against the weight's value before the pass."""
    if record is None or record.action != "compressed":
        return  # left as it was (the record says why)
    ours, base = ours_back.dense.astype(np.float64), np.asarray(prior, dtype=np.float64)
    form = ours_back.form
    if isinstance(op_config, OpLinearQuantizerConfig) and isinstance(form, QuantizedLutParams):
        step = float(np.abs(form.table.scale).max())  # per tensor: one step for the whole table
        assert np.all(np.abs(ours - base) <= 0.5 * step * 1.01 + np.abs(base) * 2.0**-10 + 1e-7)
    elif isinstance(op_config, OpLinearQuantizerConfig) and isinstance(form, (AffineParams, SparseAffineParams)):
        affine = form if isinstance(form, AffineParams) else form.affine
        step = _expanded(affine).astype(np.float64)
        kept = base != 0 if isinstance(form, SparseAffineParams) else np.ones(base.shape, bool)
        slack = 0.5 * np.abs(step) * 1.01 + np.abs(base) * 2.0**-10 + 1e-7
        assert np.all(np.abs(ours - base)[kept] <= slack[kept])
        assert np.all(ours[~kept] == 0)  # joint: pruned weights stay pruned
    elif isinstance(op_config, OpPalettizerConfig) and isinstance(form, LutParams) and form.scale is None:
        if op_config.mode == "UNIQUE":
            np.testing.assert_array_equal(ours, base)
        elif op_config.mode == "KMEANS" and theirs_back.form is not None and ours_back.chain == theirs_back.chain:
            if getattr(theirs_back.form, "tables", None) == form.tables:
                if np.any(base * base > OUTLIER_RMS**2 * np.mean(base * base)):
                    event("documented: outlier-aware table (least squares not its aim)")
                else:  # no outlier: the plain least-squares table, at least as good as coremltools'
                    assert snr_db(base, ours_back.dense) >= snr_db(base, theirs_back.dense) - 0.5
    elif isinstance(op_config, (OpMagnitudePrunerConfig, OpThresholdPrunerConfig)) and form is not None:
        kept = ours != 0
        np.testing.assert_array_equal(ours[kept], base[kept])  # a kept weight keeps its value
        if isinstance(op_config, OpThresholdPrunerConfig):
            assert not np.any(kept & (np.abs(base) <= op_config.threshold))


def _expanded(affine):
    scale = affine.scale
    for axis, size in enumerate(affine.block_sizes):
        scale = np.repeat(scale, size, axis=axis)
    return scale


def check_single(data):
    build = data.draw(st.sampled_from(PROGRAMS), label="program")
    opset = data.draw(st.sampled_from(OPSETS), label="opset")
    ct_pass, op_config = data.draw(single, label="config")
    fake = data.draw(st.sampled_from([False, False, False, True]), label="fake_compression")
    ran = _run_both(build, opset, data.draw(st.integers(0, 3), label="seed"), [(ct_pass, op_config, False)], fake=fake)
    if ran is None:
        return
    theirs, ours, prior, name = ran
    theirs_back, ours_back = _weight(theirs), _weight(ours)
    record = _record(ours, name)
    _assert_same_or_documented(theirs_back, ours_back, record, op_config)
    if fake:  # the decompressed values, stored dense, in the weight's dtype
        event("fake compression compared")
        assert ours_back.form is None and ours_back.dense.dtype == prior.dtype
        assert record is None or record.action == "skipped" or not np.array_equal(ours_back.dense, prior) or op_config.__class__ is not OpLinearQuantizerConfig
        return
    _assert_promise(ours_back, theirs_back, op_config, prior, record)


def check_joint(data):
    build = data.draw(st.sampled_from([conv, linear, matmul, classifier]), label="program")
    opset = data.draw(st.sampled_from(OPSETS + (IOS18, IOS18)), label="opset")  # joint forms exist from iOS18 only
    first, first_config, second, second_config = data.draw(joint, label="configs")
    steps = [(first, first_config, False), (second, second_config, True)]
    ran = _run_both(build, opset, data.draw(st.integers(0, 3), label="seed"), steps)
    if ran is None:
        return
    theirs, ours, prior, name = ran
    theirs_back, ours_back = _weight(theirs), _weight(ours)
    record = _record(ours, name)
    _assert_same_or_documented(theirs_back, ours_back, record, second_config)
    _assert_promise(ours_back, theirs_back, second_config, prior, record)
    if isinstance(ours_back.form, (SparseLutParams, SparseAffineParams)) and first is CtPrune:
        assert np.all(ours_back.dense[prior == 0] == 0)  # the prior mask is kept


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_compression_matches_coremltools(data):
    check_single(data)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_joint_compression_matches_coremltools(data):
    check_joint(data)


@pytest.mark.slow
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_compression_matches_coremltools_many(data):
    check_single(data)


@pytest.mark.slow
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_joint_compression_matches_coremltools_many(data):
    check_joint(data)


@pytest.mark.parametrize("build", PROGRAMS, ids=[b.__name__ for b in PROGRAMS])
def test_weights_metadata_keys_and_fields_equal_coremltools(build):
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    import milcompress

    model = _quietly(lambda: ct.convert(build(IOS16, np.float16, 0), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16))
    theirs = _quietly(cto.get_weights_metadata, model, THRESHOLD)
    ours = milcompress.get_weights_metadata(model, THRESHOLD)
    assert list(ours) == list(theirs) and ours
    for name, expected in theirs.items():
        got = ours[name]
        np.testing.assert_array_equal(got.val, expected.val)
        assert (got.sparsity, got.unique_values) == (pytest.approx(expected.sparsity), expected.unique_values)
        assert [(c.op_type, c.name, dict(c.params_name_mapping)) for c in got.child_ops] == [
            (c.op_type, c.name, dict(c.params_name_mapping)) for c in expected.child_ops
        ]
