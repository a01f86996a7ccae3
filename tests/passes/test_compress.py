import json

import numpy as np
import pytest

import milcompress  # noqa: F401  (registers the passes)
from milcompress._coremltools import IOS17, IOS18, PASS_REGISTRY, mb, types
from milcompress.config import (
    CompressionConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
)
from milcompress.errors import ConfigError, PreconditionError
from milcompress.passes import compress_program, reports_of
from milcompress.lowering import read_back
from milcompress.passes.graph import walk_ops

RNG = np.random.default_rng(0)


def _w(*shape, dtype=np.float16, scale=0.1):
    return (RNG.normal(0, scale, shape)).astype(dtype)


def net(opset=IOS18):
    """conv -> reshape -> linear (+bias) -> matmul; a small embedding gather; a masked add."""
    conv_w, fc_w, fc_b, proj_w = _w(16, 8, 3, 3), _w(64, 64), _w(64), _w(64, 48)
    table, mask = _w(100, 64), np.where(np.triu(np.ones((64, 64)), 1) > 0, -np.inf, 0).astype(np.float16)
    small = _w(8, 64)

    @mb.program(
        input_specs=[mb.TensorSpec((1, 8, 4, 4), dtype=types.fp16), mb.TensorSpec((1, 1), dtype=types.int32)],
        opset_version=opset,
    )
    def prog(x, token):
        y = mb.conv(x=x, weight=mb.const(val=conv_w, name="conv_w"), pad_type="same", name="conv")
        y = mb.reshape(x=y, shape=mb.const(val=np.array([1, 256], np.int32), name="flat_shape"), name="flat")
        y = mb.slice_by_size(x=y, begin=[0, 0], size=[1, 64], name="first64")
        y = mb.linear(x=y, weight=mb.const(val=fc_w, name="fc_w"), bias=mb.const(val=fc_b, name="fc_b"), name="fc")
        y = mb.matmul(x=y, y=mb.const(val=proj_w, name="proj_w"), name="proj")
        e = mb.gather(x=mb.const(val=table, name="table"), indices=token, axis=0, name="embed")
        e = mb.reshape(x=e, shape=[1, 64], name="embed_flat")
        s = mb.linear(x=e, weight=mb.const(val=small, name="small_w"), name="small")
        m = mb.add(x=mb.matmul(x=e, y=e, transpose_x=True, name="outer"), y=mb.const(val=mask, name="mask"), name="masked")
        return y, s, m

    return prog


def records(report):
    return {r.name: r for r in report.records}


def signature(prog):
    f = prog.functions["main"]
    return [(n, v.dtype, v.shape) for n, v in f.inputs.items()], [(v.name, v.dtype, v.shape) for v in f.outputs]


def test_golden_palettization_with_a_reason_for_every_const():
    prog = net()
    before = signature(prog)
    report = compress_program(prog, PalettizeConfig(nbits=4))
    got = records(report)
    assert {n for n, r in got.items() if r.action == "compressed"} == {"fc_w", "proj_w", "table"}
    assert got["conv_w"].reason == "1,152 elements <= weight_threshold 2,048"
    assert got["fc_b"].reason.startswith("rank 1 < 2")
    assert got["flat_shape"].reason == "not a weight input: flat(reshape).shape"
    assert got["small_w"].reason == "512 elements <= weight_threshold 2,048"
    assert got["mask"].reason == "2,016 non-finite values (inf or nan)"
    assert all(r.reason for r in report.skipped)
    totals = report.totals()
    assert totals["candidates"] == totals["compressed"] + totals["skipped"] == len(report.records)
    assert got["fc_w"].form == "LUT 4-bit" and got["fc_w"].bytes_after < got["fc_w"].bytes_before
    assert got["fc_w"].consumers == ["fc(linear).weight"] and got["table"].consumers == ["embed(gather).x"]
    assert got["fc_w"].snr_db > 15
    types_after = [op.op_type for op, _ in walk_ops(prog)]
    assert types_after.count("constexpr_lut_to_dense") == 3
    assert signature(prog) == before
    assert reports_of(prog) == [report]
    json.loads(report.to_json())  # serialisable


def test_idempotent():
    prog = net()
    compress_program(prog, PalettizeConfig(nbits=4))
    second = compress_program(prog, PalettizeConfig(nbits=4))
    assert second.compressed == []
    assert all(r.reason for r in second.skipped)
    assert any(r.reason.startswith("already compressed: part of constexpr_lut_to_dense") for r in second.skipped)


def test_precedence_name_over_type_over_global_and_none_skips():
    config = CompressionConfig(
        global_config=LinearQuantizeConfig(),
        op_type_configs={"linear": PalettizeConfig(nbits=2), "gather": None},
        op_name_configs={"proj": PalettizeConfig(nbits=6), "fc_w": MagnitudePruneConfig(target_sparsity=0.5)},
    )
    got = records(compress_program(net(), config))
    assert got["fc_w"].form.startswith("sparse")  # the const's own name wins
    assert got["proj_w"].form == "LUT 6-bit"  # the consuming op's name
    assert got["table"].reason == "config is None (op_type_configs['gather'])"


def test_shared_const_with_conflicting_configs_names_it_and_its_consumers():
    w = _w(64, 64)

    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        tied = mb.const(val=w, name="tied")
        return mb.linear(x=mb.linear(x=x, weight=tied, name="a"), weight=tied, name="b")

    config = CompressionConfig(global_config=PalettizeConfig(nbits=4), op_name_configs={"b": PalettizeConfig(nbits=2)})
    before = [op.op_type for op in prog.functions["main"].operations]
    with pytest.raises(ConfigError, match=r"const 'tied' is shared by ops with conflicting configs \(a gets global_config; b gets op_name_configs\['b'\]\)"):
        compress_program(prog, config)
    assert [op.op_type for op in prog.functions["main"].operations] == before  # untouched
    report = compress_program(prog, CompressionConfig(global_config=PalettizeConfig(nbits=4)))
    assert records(report)["tied"].consumers == ["a(linear).weight", "b(linear).weight"]


def test_a_form_the_opset_cannot_hold_is_an_error_that_leaves_the_program_alone_or_a_recorded_skip():
    prog = net(IOS17)
    before = [op.op_type for op, _ in walk_ops(prog)]
    grouped = PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16)
    with pytest.raises(PreconditionError, match=r"const '\w+': per_grouped_channel palettization needs minimum_deployment_target=ct\.target\.iOS18; the program targets iOS17"):
        compress_program(prog, grouped)
    assert [op.op_type for op, _ in walk_ops(prog)] == before
    report = compress_program(prog, grouped, on_unsupported="skip")
    assert records(report)["fc_w"].reason == "opset too old: per_grouped_channel palettization needs iOS18, the program targets iOS17"


def test_float_offsets_need_ios18_and_come_back_from_the_program_as_built():
    float_offset = LinearQuantizeConfig(mode="linear_float_offset", dtype="uint4", granularity="per_block", block_size=16)
    with pytest.raises(PreconditionError, match=r"linear_float_offset quantization \(a float16 offset\) needs minimum_deployment_target=ct\.target\.iOS18"):
        compress_program(net(IOS17), float_offset)
    prog = net(IOS18)
    report = compress_program(prog, float_offset)
    record = records(report)["fc_w"]
    assert record.action == "compressed" and record.bytes_after == 64 * 64 // 2 + 2 * 2 * 64 * 4
    assert record.form.endswith(", float offset")
    back = read_back(next(op.outputs[0] for op, _ in walk_ops(prog) if op.op_type == "constexpr_blockwise_shift_scale" and op.name.startswith("fc_w")))
    assert back.form.float_offset and back.form.zero_point.dtype == np.float16


def test_group_and_block_sizes_shrink_to_fit_and_say_so():
    w = _w(1000, 96)

    @mb.program(input_specs=[mb.TensorSpec((1, 96), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=w, name="classifier"), name="fc")

    report = compress_program(prog, PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16))
    record = records(report)["classifier"]
    assert record.action == "compressed" and record.form == "LUT 4-bit, 100 tables"
    assert record.notes == ["group_size 16 -> 10: 1000 channels on axis 0 are not divisible by 16"]


def test_min_snr_db_skips_or_falls_back():
    config = PalettizeConfig(nbits=2, min_snr_db=25.0)
    got = records(compress_program(net(), config))
    assert got["fc_w"].reason.startswith("SNR ") and got["fc_w"].reason.endswith("< min_snr_db 25")
    got = records(compress_program(net(), config, snr_fallback=True))
    assert got["fc_w"].action == "compressed" and got["fc_w"].snr_db >= 25
    assert got["fc_w"].notes[-1].startswith("fell back to LUT ") and got["fc_w"].form in ("LUT 6-bit", "LUT 8-bit")


def test_consumers_that_disagree_on_the_channel_axis():
    w = _w(64, 64)

    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        shared = mb.const(val=w, name="shared")
        return mb.matmul(x=mb.linear(x=x, weight=shared, name="lin"), y=shared, name="mm")

    got = records(compress_program(prog, LinearQuantizeConfig()))
    assert got["shared"].reason.startswith("consumers disagree on the output-channel axis")
    assert records(compress_program(prog, LinearQuantizeConfig(granularity="per_tensor")))["shared"].action == "compressed"


def test_weights_in_nested_blocks_are_compressed():
    w_then, w_else = _w(64, 64), _w(64, 64)

    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16), mb.TensorSpec((1,), dtype=types.bool)], opset_version=IOS18)
    def prog(x, flag):
        def then_branch():
            return mb.linear(x=x, weight=mb.const(val=w_then, name="w_then"), name="then_fc")

        def else_branch():
            return mb.linear(x=x, weight=mb.const(val=w_else, name="w_else"), name="else_fc")

        return mb.cond(pred=mb.squeeze(x=flag), _true_fn=then_branch, _false_fn=else_branch, name="branch")

    report = compress_program(prog, PalettizeConfig(nbits=4))
    assert {r.name for r in report.compressed} == {"w_then", "w_else"}
    assert sum(op.op_type == "constexpr_lut_to_dense" for op, _ in walk_ops(prog)) == 2


def test_joint_compression_through_the_pass():
    prog = net()
    got = records(compress_program(prog, JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4))))
    assert got["fc_w"].form == "sparse 75% + LUT 4-bit"
    ops_after = {op.name: op for op, _ in walk_ops(prog)}
    assert "fc_w" not in ops_after  # the dense const is gone
    # fc reads its weight through the iOS18 joint form: a palettized sparse tensor made dense.
    weight = ops_after["fc"].inputs["weight"]
    assert weight.op.op_type == "constexpr_sparse_to_dense"
    assert {v.op.op_type for v in weight.op.inputs.values()} == {"constexpr_lut_to_sparse"}
    back = read_back(weight)
    assert back.is_compressed and np.mean(back.dense == 0) == pytest.approx(0.75, abs=1 / 64)


def test_options_can_be_set_as_strings_through_a_pass_pipeline(tmp_path):
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline, PassPipelineManager

    config_file = tmp_path / "cfg.yaml"
    config_file.write_text("config_type: PalettizeConfig\nglobal_config:\n  nbits: 4\n  granularity: per_grouped_channel\n  group_size: 16\n")
    report_file = tmp_path / "report.json"
    pipeline = PassPipeline(["milcompress::palettize_weights"], pipeline_name="test")
    pipeline.set_options(
        "milcompress::palettize_weights",
        {"config": str(config_file), "on_unsupported": "skip", "report_path": str(report_file)},
    )
    prog = net(IOS17)
    PassPipelineManager.apply_pipeline(prog, pipeline)
    saved = json.loads(report_file.read_text())
    assert saved["totals"]["compressed"] == 0
    assert all(c["reason"] for c in saved["consts"])


def test_pass_options_are_validated_when_set():
    graph_pass = PASS_REGISTRY["milcompress::palettize_weights"]
    with pytest.raises(ConfigError, match="on_unsupported: expected one of error, skip"):
        graph_pass.on_unsupported = "ignore"
    with pytest.raises(ConfigError, match="accepts PalettizeConfig; got LinearQuantizeConfig"):
        graph_pass.config = LinearQuantizeConfig()
    with pytest.raises(ConfigError, match="no config set"):
        graph_pass.apply(net())


def test_unused_block_output_and_integer_consts_get_their_reasons():
    w, table = _w(64, 64), RNG.integers(0, 9, (64, 64)).astype(np.int32)

    @mb.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16), mb.TensorSpec((1,), dtype=types.int32)], opset_version=IOS18)
    def prog(x, index):
        mb.const(val=_w(64, 64), name="dead")
        picked = mb.gather(x=mb.const(val=table, name="int_table"), indices=index, axis=0, name="pick")
        return mb.linear(x=x, weight=mb.const(val=w, name="w"), name="fc"), mb.const(val=_w(4, 4), name="constant_out"), picked

    got = records(compress_program(prog, PalettizeConfig(nbits=4)))
    assert got["w"].action == "compressed"
    assert got["int_table"].reason == "dtype int32 is not float16 or float32"
    assert got["dead"].reason == "not used by any op"
    assert got["constant_out"].reason == "a block output (Core ML cannot output a constexpr op directly)"
    assert got["pick_axis_0"].reason == "not a weight input: pick(gather).axis"


def test_every_function_of_a_multifunction_program():
    from milcompress._coremltools import mb as builder

    first, second = _w(64, 64), _w(128, 64)

    @builder.program(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=first, name="w_main"), name="fc")

    @builder.function(input_specs=[mb.TensorSpec((1, 64), dtype=types.fp16)], opset_version=IOS18)
    def other(x):
        return mb.linear(x=x, weight=mb.const(val=second, name="w_other"), name="fc2")

    prog.add_function("other", other)
    report = compress_program(prog, LinearQuantizeConfig(dtype="int4"))
    got = records(report)
    assert (got["w_main"].function, got["w_other"].function) == ("main", "other")
    assert got["w_main"].action == got["w_other"].action == "compressed"
    for name in ("main", "other"):
        assert [op.op_type for op in prog.functions[name].operations].count("constexpr_blockwise_shift_scale") == 1


def test_config_entries_that_match_nothing_are_warned_with_the_closest_names_and_fail_when_strict(caplog):
    config = CompressionConfig(
        global_config=PalettizeConfig(nbits=4),
        op_name_configs={"fc_W": None, "proj": None, "nothing_like_it": None},
        op_type_configs={"convolution": PalettizeConfig(nbits=2), "matmul": PalettizeConfig(nbits=6)},
    )
    prog = net()
    before = sorted(op.name for op, _ in walk_ops(prog))
    with pytest.raises(ConfigError, match=r"op_name_configs\['fc_W'\] matches no weight .*closest: fc_w.*; and 2 more"):
        compress_program(prog, config, strict=True)
    assert sorted(op.name for op, _ in walk_ops(prog)) == before  # refused before any change

    with caplog.at_level("WARNING", logger="milcompress"):
        report = compress_program(prog, config)
    assert report.warnings == [
        "op_name_configs['fc_W'] matches no weight or op reading a weight, so it applies to nothing (closest: fc_w, fc)",
        "op_name_configs['nothing_like_it'] matches no weight or op reading a weight, so it applies to nothing "
        "(the model has 12: conv, conv_w, embed, fc, fc_w, mask, masked, proj, ...)",
        "op_type_configs['convolution'] matches no op type reading a weight, so it applies to nothing (closest: conv)",
    ]
    assert [r.getMessage() for r in caplog.records] == [f"milcompress::compress_weights: {w}" for w in report.warnings]
    assert report.to_dict()["warnings"] == report.warnings
    got = records(report)
    assert got["fc_w"].action == "compressed" and got["proj_w"].reason == "config is None (op_name_configs['proj'])"
    assert "warnings" not in records_of_a_clean_run()


def records_of_a_clean_run():
    return compress_program(net(), CompressionConfig(global_config=PalettizeConfig(nbits=4), op_name_configs={"fc": None})).to_dict()


def test_a_pass_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    import milcompress.packages as packages
    from milcompress.errors import OutputError

    report = compress_program(net(), PalettizeConfig(nbits=4))
    path = tmp_path / "report.json"
    report.write(path)
    assert json.loads(path.read_text())["totals"] == report.totals()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"{blocker}/report.json: cannot write: Not a directory"):
        report.write(blocker / "report.json")
    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(28, os.strerror(28))

    monkeypatch.setattr(packages, "open", FullDisk, raising=False)
    with pytest.raises(OutputError, match="No space left on device"):
        report.write(path)
    assert json.loads(path.read_text())["totals"] == report.totals()  # the previous report, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "report.json"]  # no temporary left
