"""compress_to_size: the budget holds, the choice is the allocation's optimum, the forms lower and
read back, errors are clear, calibration weights the errors, and every way in works."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

import milcompress  # noqa: F401  (registers the passes)
from milcompress._coremltools import IOS18, PASS_REGISTRY, Function, Program, mb
from milcompress import ops
from milcompress.config import PalettizeConfig
from milcompress.errors import ConfigError
from milcompress.lowering import read_back
from milcompress.passes import compress_program_to_size
from milcompress.passes.size import DEFAULT_CANDIDATES, DENSE, MIN_SENSITIVITY_SAMPLES, sensitivity_samples
from milcompress.reference import Interpreter, verify


def network(scales=(1.0, 0.02, 1.0), seed=0) -> Program:
    """Three linear layers of different sizes; `scales` their weight magnitudes."""
    rng = np.random.default_rng(seed)
    shapes = [(128, 64), (256, 128), (32, 256)]
    weights = [(rng.standard_normal(shape) * scale).astype(np.float16) for shape, scale in zip(shapes, scales)]
    with Function({"x": mb.placeholder(shape=(4, 64))}, IOS18) as function:
        y = mb.cast(x=function.inputs["x"], dtype="fp16")
        for index, weight in enumerate(weights):
            y = mb.linear(x=y, weight=mb.const(val=weight, name=f"w{index}"), name=f"fc{index}")
            if index < 2:
                y = mb.relu(x=y)
        function.set_outputs([mb.cast(x=y, dtype="fp32", name="out")])
    program = Program()
    program.add_function("main", function)
    return program


def weight_values(program: Program):
    return {op.name: np.asarray(op.outputs[0].val) for op in program.functions["main"].find_ops(op_type="const") if op.name.startswith("w")}


def nsr(value: np.ndarray, approximation: np.ndarray, column_weights=None) -> float:
    """The test's own outlier-aware noise-to-signal ratio, in float64: sum(c f (W - W')^2) /
    sum(c f W^2), f = 1 + max(0, W^2 / m - 16), m the c-weighted mean square of W (passes/size.py)."""
    value, approximation = value.astype(np.float64), approximation.astype(np.float64)
    c = np.broadcast_to(1.0 if column_weights is None else column_weights, value.shape)
    m = np.sum(c * value**2) / np.sum(c)
    c = c * (1 + np.maximum(0.0, value**2 / m - 16))
    return float(np.sum(c * (value - approximation) ** 2) / np.sum(c * value**2))


def brute_force(menus, budget):
    """The least total error over every combination of one (bytes, error) per menu within budget."""
    best = math.inf
    for combination in itertools.product(*menus):
        if sum(size for size, _ in combination) <= budget:
            best = min(best, sum(error for _, error in combination))
    return best


def exact_menus(dense):
    """Each weight's menu built by the test: dense, and every default candidate form computed whole
    (thorough k-means), with its stored bytes and its exact error (linear weights: outputs on axis 0)."""
    menus = {}
    for name, value in dense.items():
        menu = [(value.nbytes, 0.0)]
        for _, config in DEFAULT_CANDIDATES:
            form = ops.compress(value, config, output_axis=0, input_axis=1)
            if form.nbytes < value.nbytes:
                menu.append((int(form.nbytes), nsr(value, form.decompress())))
        menus[name] = menu
    return menus


@pytest.mark.parametrize("bits", [2.5, 3.0, 4.0, 4.5, 6.0, 8.0])
def test_the_budget_holds_and_the_choice_is_the_optimum(bits):
    program = network()
    dense = weight_values(program)
    result = compress_program_to_size(program, target_bits_per_weight=bits)
    elements = sum(v.size for v in dense.values())
    assert result.total_elements == elements
    assert result.total_bytes <= result.budget_bytes == int(bits * elements / 8)
    assert result.bits_per_weight <= bits
    # The choice is the optimum over the menus the pass weighed: every combination tried.
    assert result.total_error == pytest.approx(brute_force([[(size, error) for _, size, error in c.menu] for c in result.choices], result.budget_bytes),
                                               rel=1e-9, abs=1e-15)
    # What the program now holds reads back to the reported bytes, and to the reported error:
    # the forms written are the forms weighed (palettes too: built from the estimate's tables).
    stored, exact_total = 0, 0.0
    for choice in result.choices:
        consumer = program.functions["main"].find_ops(op_type="linear")[int(choice.name[1:])]
        back = read_back(consumer.inputs["weight"])
        stored += choice.bytes
        if choice.form == DENSE:
            assert not back.is_compressed
        else:
            assert back.is_compressed and int(back.form.nbytes) == choice.bytes
            exact = nsr(dense[choice.name], back.dense)
            exact_total += exact
            assert exact == pytest.approx(choice.error, rel=1e-5)
    assert stored == result.total_bytes
    # Against the menus the test builds itself (exact errors of every form): the pass's choice is
    # the optimum but for the palettes' estimated errors (within 2% here). The menus' palettes are
    # kmeans_1d's, within 0.1% of the optimal table, not the optimum itself, so the pass's own
    # tables (the estimate effort's) may come out a little better than the test's.
    optimum = brute_force(list(exact_menus(dense).values()), result.budget_bytes)
    assert optimum <= exact_total * (1 + 1e-3) + 1e-15
    assert exact_total <= optimum * 1.02 + 1e-15


def test_grouped_palettes_of_many_groups_are_estimated_on_a_sample_and_computed_whole(monkeypatch):
    """With more values than SAMPLE_VALUES, a grouped palette's error is estimated on some groups
    (here the fewest, MIN_SAMPLE_GROUPS); its size is exact, so the budget still holds, and the
    chosen form is computed whole."""
    import importlib

    import milcompress.passes.size as size

    monkeypatch.setattr(size, "SAMPLE_VALUES", 1)
    monkeypatch.setattr(importlib.import_module("milcompress.ops.palettize"), "MIN_SAMPLE_GROUPS", 4)  # the module, not ops.palettize()
    program = network()
    dense = weight_values(program)
    result = compress_program_to_size(program, target_bits_per_weight=3.0, candidates=[
        (f"palette {n}-bit groups of 16", PalettizeConfig(nbits=n, granularity="per_grouped_channel", group_size=16, weight_threshold=0))
        for n in (2, 3, 4)
    ])
    assert result.total_bytes <= result.budget_bytes
    records = {r.name: r for r in result.report.records}
    for choice in result.choices:
        assert choice.form != DENSE
        back = read_back(program.functions["main"].find_ops(op_type="linear")[int(choice.name[1:])].inputs["weight"])
        assert int(back.form.nbytes) == choice.bytes
        exact = nsr(dense[choice.name], back.dense)
        sampled = choice.name in ("w0", "w1")  # 8 and 16 groups of 16 rows; w2 has 2
        assert ("estimated on 4 evenly spaced groups of" in records[choice.name].notes[0]) == sampled
        assert choice.error == pytest.approx(exact, rel=0.15 if sampled else 0.03)


def test_the_rewrite_clusters_nothing_again(monkeypatch):
    """Data-free, every k-means table written is one the evaluation computed: the thorough
    k-means never runs (it did, for every chosen palette, before the forms weighed were kept)."""
    import importlib

    palettize = importlib.import_module("milcompress.ops.palettize")  # the module, not ops.palettize()

    def no_second_clustering(*args, **kwargs):
        raise AssertionError("k-means ran again in the rewrite")

    monkeypatch.setattr(palettize, "kmeans_1d", no_second_clustering)
    result = compress_program_to_size(network(), target_bits_per_weight=3.0)
    assert any(choice.form.startswith("palette") for choice in result.choices)


def test_weights_stored_as_scale_and_minimum_blocks_get_the_float_offset_form_back():
    """Weights shipped as llama.cpp's Q4_1 (per 32 inputs: 4-bit integers, a scale d and a
    minimum m) fit the float-offset form at 5 bits per weight to within float16 rounding; every
    other 5-bit choice would put them on another grid."""
    rng = np.random.default_rng(3)
    shapes = [(128, 64), (256, 128), (32, 256)]
    weights = []
    for rows, columns in shapes:
        d = rng.uniform(0.01, 0.03, (rows, columns // 32, 1)).astype(np.float16).astype(np.float64)
        m = (-rng.uniform(5, 10, d.shape) * d).astype(np.float16).astype(np.float64)
        q = rng.integers(0, 16, (rows, columns // 32, 32))
        q[..., 0], q[..., 1] = 0, 15
        weights.append((d * q + m).reshape(rows, columns).astype(np.float16))
    with Function({"x": mb.placeholder(shape=(4, 64))}, IOS18) as function:
        y = mb.cast(x=function.inputs["x"], dtype="fp16")
        for index, weight in enumerate(weights):
            y = mb.linear(x=y, weight=mb.const(val=weight, name=f"w{index}"), name=f"fc{index}")
        function.set_outputs([mb.cast(x=y, dtype="fp32", name="out")])
    program = Program()
    program.add_function("main", function)
    result = compress_program_to_size(program, target_bits_per_weight=5.0)
    assert [c.form for c in result.choices] == ["int4 per block 32, float offset"] * 3
    assert max(c.error for c in result.choices) < 1e-5  # int4 per block 32 (symmetric): about 1e-2


def test_more_bits_never_cost_more_error():
    errors = [compress_program_to_size(network(), target_bits_per_weight=bits).total_error for bits in (2.5, 3, 4, 5, 6, 8, 16)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] == 0.0  # 16 bits per weight: everything fits dense


def test_errors_are_relative_so_a_weights_scale_does_not_change_its_share():
    """Scaling a layer's weights by a power of two (exact in float16) changes nothing: errors are
    relative, as the model's output noise is. With absolute errors a small-magnitude layer would
    be starved of bits."""
    same = compress_program_to_size(network(scales=(1.0, 1.0, 1.0)), target_bits_per_weight=4.0)
    scaled = compress_program_to_size(network(scales=(1.0, 0.25, 1.0)), target_bits_per_weight=4.0)
    assert [c.form for c in scaled.choices] == [c.form for c in same.choices]
    assert scaled.total_error == pytest.approx(same.total_error, rel=1e-6)


def test_every_weight_has_a_record_and_dense_choices_have_a_reason():
    program = network()
    result = compress_program_to_size(program, target_bits_per_weight=12.0)
    records = {r.name: r for r in result.report.records}
    for choice in result.choices:
        record = records[choice.name]
        if choice.form == DENSE:
            assert record.action == "skipped" and "kept dense by the size allocation" in record.reason
        else:
            assert record.action == "compressed" and record.notes[0].startswith(f"chosen by the size allocation: {choice.form}")
    assert result.report.summary["bits_per_weight"] == round(result.bits_per_weight, 4)


def test_target_bytes_and_small_weights_counted_dense():
    program = network()
    result = compress_program_to_size(program, target_bytes=45_000, weight_threshold=10_000)
    # w0 (8,192 values) and w2 (8,192) are under the threshold: dense, counted in the budget.
    assert {c.name for c in result.choices} == {"w1"}
    assert result.total_bytes <= 45_000
    assert result.total_bytes == 2 * (8192 + 8192) + result.choices[0].bytes


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "give exactly one of target_bits_per_weight and target_bytes"),
        ({"target_bits_per_weight": 4, "target_bytes": 10}, "give exactly one of"),
        ({"target_bits_per_weight": 0}, "target_bits_per_weight must be in \\(0, 32\\]"),
        ({"target_bytes": -1}, "target_bytes must be a non-negative integer"),
        ({"target_bits_per_weight": 1.0}, "below the smallest size the candidate forms reach"),
        ({"target_bits_per_weight": 4, "sensitivity_seconds": 1}, "sensitivity_seconds needs calibration inputs"),
        ({"target_bits_per_weight": 4, "error_feedback": True}, "error_feedback needs calibration inputs"),
    ],
)
def test_bad_targets_name_the_field_and_leave_the_program_alone(options, message):
    program = network()
    before = weight_values(program)
    with pytest.raises(ConfigError, match=message):
        compress_program_to_size(program, **options)
    after = weight_values(program)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_calibration_weights_errors_by_the_activations_each_weight_multiplies():
    """Input channels that never carry signal do not count: with calibration inputs that are zero
    on half of w0's input channels, w0's error is measured on the other half only."""
    program = network()
    w0 = weight_values(program)["w0"]
    inputs = np.random.default_rng(1).standard_normal((6, 4, 64)).astype(np.float32)
    inputs[..., 32:] = 0
    result = compress_program_to_size(program, target_bits_per_weight=4.0, calibration={"x": inputs})
    assert result.calibrated
    choice = next(c for c in result.choices if c.name == "w0")
    back = read_back(program.functions["main"].find_ops(op_type="linear")[0].inputs["weight"])
    live = np.zeros((1, 64))
    live[0, :32] = np.square(inputs[..., :32].astype(np.float64)).mean(axis=(0, 1))
    expected = nsr(w0, back.dense, live) if choice.form != DENSE else 0.0
    assert choice.error == pytest.approx(expected, rel=0.03 if choice.form.startswith("palette") else 1e-6)


def test_sensitivity_is_the_measured_output_damage_over_the_weights_own():
    """Each weight's sensitivity, checked against the test's own forward pass in float64: the
    output noise-to-signal ratio with that weight alone replaced by its 4-bit probe palette, over
    the weight's activation-weighted noise-to-signal ratio."""
    program = network()
    dense = weight_values(program)
    inputs = np.random.default_rng(2).standard_normal((2, 4, 64)).astype(np.float32)
    result = compress_program_to_size(network(), target_bits_per_weight=4.0, calibration={"x": inputs}, sensitivity_seconds=60,
                                      bias_correction=False)
    assert result.sensitivity_measured == 3 and result.sensitivity_samples == 2  # both samples: the network is quick to run
    assert result.summary()["sensitivity_samples"] == 2

    def forward(weights):
        """Every layer's input, and the output, for each sample."""
        layer_inputs, outputs = [[] for _ in weights], []
        for x in inputs:
            y = x.astype(np.float16).astype(np.float64)
            for index, weight in enumerate(weights):
                layer_inputs[index].append(y)
                y = y @ weight.astype(np.float64).T
                if index < 2:
                    y = np.maximum(y, 0)
            outputs.append(y)
        return layer_inputs, np.stack(outputs)

    names = ["w0", "w1", "w2"]
    activations, reference = forward([dense[n] for n in names])
    sensitivities = {c.name: c.sensitivity for c in result.choices}
    for index, name in enumerate(names):
        mean_square = np.mean(np.square(np.stack(activations[index])), axis=(0, 1))[None, :]  # per input channel
        probe = ops.compress(dense[name], PalettizeConfig(nbits=4, weight_threshold=0), output_axis=0, input_axis=1,
                             importance=np.broadcast_to(mean_square, dense[name].shape)).decompress()
        _, damaged = forward([probe if n == name else dense[n] for n in names])
        output_nsr = float(np.sum((damaged - reference) ** 2) / np.sum(reference**2))
        expected = output_nsr / nsr(dense[name], probe, mean_square)
        assert sensitivities[name] == pytest.approx(expected, rel=1e-3), name
    assert len({round(s, 3) for s in sensitivities.values()}) == 3  # measured per weight, not one value for all


@pytest.mark.parametrize(
    "samples, weights, seconds, per_run, expected",
    [
        (32, 38, 30.0, 0.01, 32),  # every weight on every sample fits
        (32, 38, 30.0, 0.1, 7),  # 38 weights x 7 samples x 0.1 s = 26.6 s
        (32, 38, 30.0, 1.0, MIN_SENSITIVITY_SAMPLES),  # not even that fits: the largest weights on a few samples
        (2, 38, 30.0, 1.0, 2),  # fewer samples than the minimum: all of them
        (32, 38, 30.0, 0.0, 32),
        (0, 38, 30.0, 0.1, 0),
    ],
)
def test_sensitivity_samples_are_thinned_so_every_weight_can_be_measured(samples, weights, seconds, per_run, expected):
    assert sensitivity_samples(samples, weights, seconds, per_run) == expected


def correlated(samples: int, seed: int, mixing_seed: int = 7) -> np.ndarray:
    """Network inputs [samples, 4, 64] whose 64 channels are strongly correlated."""
    mixing = np.random.default_rng(mixing_seed).standard_normal((8, 64))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((samples, 4, 8)) @ mixing + 0.3 * rng.standard_normal((samples, 4, 64))).astype(np.float32)


def test_error_feedback_keeps_the_choice_and_lowers_the_output_error_on_unseen_inputs():
    calibration, unseen = correlated(24, seed=1), correlated(8, seed=2)
    plain, fed = network(), network()
    without = compress_program_to_size(plain, target_bits_per_weight=3.0, calibration={"x": calibration})
    with_feedback = compress_program_to_size(fed, target_bits_per_weight=3.0, calibration={"x": calibration}, error_feedback=True)
    assert [(c.form, c.bytes) for c in with_feedback.choices] == [(c.form, c.bytes) for c in without.choices]
    assert with_feedback.total_bytes == without.total_bytes
    applied = {r.name: note for r in with_feedback.report.records for note in r.notes or [] if note.startswith("error feedback (GPTQ)")}
    assert "w0" in applied  # the layer that sees the correlated inputs themselves
    for note in applied.values():
        before, after = (float(v) for v in re.search(r"samples (\S+) -> (\S+)$", note).groups())
        assert after < before
    assert not any("feedback" in note for r in without.report.records for note in r.notes or [])
    # Output noise on unseen inputs at most 0.8 times as large: an SNR at least 10 log10(1 / 0.8) dB higher.
    unseen_inputs = [{"x": x} for x in unseen]
    gain = verify(network(), fed, unseen_inputs)["out"].snr_db - verify(network(), plain, unseen_inputs)["out"].snr_db
    assert gain > 10 * np.log10(1 / 0.8)


def test_error_feedback_that_does_not_hold_up_on_held_out_samples_is_not_applied():
    """The two halves of the calibration samples have different channel correlations: fitted on
    the first, feedback raises the second's output error, so w0 keeps its rounded form."""
    calibration = np.concatenate([correlated(6, seed=1, mixing_seed=7), correlated(6, seed=2, mixing_seed=8)])
    program = network()
    result = compress_program_to_size(program, target_bits_per_weight=3.0, calibration={"x": calibration}, error_feedback=True)
    (note,) = [n for n in next(r for r in result.report.records if r.name == "w0").notes if "feedback" in n]
    assert note.startswith("no error feedback: fitted on half the calibration samples it raised the other half's output error")


def test_error_feedback_needs_two_calibration_samples():
    result = compress_program_to_size(network(), target_bits_per_weight=3.0, calibration={"x": correlated(1, seed=1)[0]}, error_feedback=True)
    for record in result.report.records:
        if record.action == "compressed":
            assert "no error feedback: it needs two calibration samples or more (half to fit, half to check)" in record.notes


def test_interpreter_replace_runs_a_what_if_without_touching_the_program():
    program = network()
    interpreter = Interpreter(program)
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    base = interpreter.run({"x": x})["out"]
    zeroed = interpreter.run({"x": x}, replace={"w2": np.zeros((32, 256), np.float16)})["out"]
    assert np.all(zeroed == 0) and not np.all(base == 0)
    np.testing.assert_array_equal(interpreter.run({"x": x})["out"], base)


def test_registered_pass_with_string_options_and_the_api(tmp_path):
    import coremltools as ct

    graph_pass = PASS_REGISTRY["milcompress::compress_to_size"]
    graph_pass.target_bits_per_weight = "4.5"
    graph_pass.report_path = str(tmp_path / "report.json")
    program = network()
    graph_pass.apply(program)
    assert (tmp_path / "report.json").is_file()
    with pytest.raises(ConfigError, match="target_bits_per_weight: expected a number in \\(0, 32\\]"):
        graph_pass.target_bits_per_weight = "lots"

    mlmodel = ct.convert(network(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, pass_pipeline=ct.PassPipeline.EMPTY)
    small = milcompress.compress_to_size(mlmodel, 4.0)
    summary = milcompress.report_of(small).summary
    assert summary["bits_per_weight"] <= 4.0
    assert sum(m.form is not None for m in milcompress.get_weights_metadata(small, weight_threshold=0).values()) >= 2
