"""The executor's core: control flow, functions, precisions, errors, observers, verify."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS18, Function, Program, mb, types
from milcompress.errors import InputError
from milcompress.reference import ChannelStatistics, ExecutionError, Interpreter, UnsupportedOpError, run_program, verify
from milcompress.reference.kernels import KERNELS
from milcompress.reference.verify import compare_output, random_samples, samples_of
from tests.reference.helpers import op_program, run_op


def _program(functions, opset=IOS15) -> Program:
    program = Program()
    for name, (specs, body) in functions.items():
        with Function(specs, opset) as function:
            function.set_outputs(list(body(**function.inputs)))
        program.add_function(name, function)
    return program


def test_cond_runs_the_branch_the_predicate_picks():
    def build(x, flag):
        return mb.cond(pred=flag, _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: mb.sub(x=x, y=1.0))

    x = np.arange(3, dtype=np.float32)
    (doubled,) = run_op(build, {"x": x, "flag": np.array(True)})
    (decremented,) = run_op(build, {"x": x, "flag": np.array(False)})
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(decremented, x - 1)


def test_while_loop_runs_until_its_condition_fails():
    def build(x, limit):
        return mb.while_loop(
            _cond=lambda total, steps: mb.less(x=mb.reduce_sum(x=total), y=limit),
            _body=lambda total, steps: (mb.add(x=total, y=total), mb.add(x=steps, y=np.int32(1))),
            loop_vars=(x, np.int32(0)),
        )

    total, steps = run_op(build, {"x": np.array([1.0, 2.0], np.float32), "limit": np.array(100.0, np.float32)})
    # 3 -> 6 -> 12 -> 24 -> 48 -> 96 -> 192: six doublings.
    np.testing.assert_array_equal(total, [64.0, 128.0])
    assert int(steps) == 6


def test_each_function_of_a_multifunction_program_runs_by_name():
    spec = {"x": mb.placeholder(shape=(2,))}
    program = _program({"main": (spec, lambda x: [mb.add(x=x, y=1.0)]), "other": (dict(spec), lambda x: [mb.mul(x=x, y=3.0)])})
    x = np.array([1.0, 2.0], np.float32)
    (plus,) = Interpreter(program).run({"x": x}).values()
    (times,) = Interpreter(program, function_name="other").run({"x": x}).values()
    np.testing.assert_array_equal(plus, x + 1)
    np.testing.assert_array_equal(times, x * 3)
    with pytest.raises(InputError, match="no function named 'missing'; the program has main, other"):
        Interpreter(program, function_name="missing")


def test_float16_emulation_rounds_every_op_output():
    def build(x):
        return mb.add(x=mb.mul(x=x, y=1.0 + 2.0**-12), y=0.0)

    x = np.array([1.0, 3.0, 1000.1], np.float32)
    (exact,) = run_op(build, {"x": x}, precision="float32")
    (emulated,) = run_op(build, {"x": x}, precision="float16")
    np.testing.assert_allclose(exact, x * (1 + 2.0**-12), rtol=1e-7)
    # fp16 has 10 mantissa bits: 1 + 2^-12 rounds away, so the input (rounded) comes back.
    np.testing.assert_array_equal(emulated, x.astype(np.float16).astype(np.float32))


def test_unsupported_op_error_names_the_type_the_op_and_the_supported_list(monkeypatch):
    monkeypatch.delitem(KERNELS, "relu")
    program = op_program(lambda x: mb.relu(x=mb.add(x=x, y=1.0), name="the_relu"), {"x": np.zeros(2, np.float32)})
    with pytest.raises(UnsupportedOpError) as caught:
        Interpreter(program)
    message = str(caught.value)
    assert "'relu' (first at op 'the_relu' in function 'main')" in message
    assert "Supported: " in message and "conv" in message
    assert caught.value.op_types == ("relu",)


def test_a_kernel_that_gets_a_shape_wrong_fails_at_its_op(monkeypatch):
    monkeypatch.setitem(KERNELS, "relu", lambda args: args["x"][:1])
    with pytest.raises(ExecutionError, match=r"op 'bad' in function 'main' \(relu\): output 'bad' has shape \[1\]; the program declares \[3\]"):
        run_op(lambda x: mb.relu(x=x, name="bad"), {"x": np.zeros(3, np.float32)})


def test_a_failing_kernel_is_reported_with_its_op(monkeypatch):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(KERNELS, "relu", broken)
    with pytest.raises(ExecutionError, match=r"op 'r' in function 'main' \(relu\) failed: RuntimeError: boom"):
        run_op(lambda x: mb.relu(x=x, name="r"), {"x": np.zeros(3, np.float32)})


def test_inputs_are_checked_by_name_and_shape():
    interpreter = Interpreter(op_program(lambda x: mb.relu(x=x), {"x": np.zeros((2, 3), np.float32)}))
    with pytest.raises(InputError, match=r"missing input\(s\) x; the function 'main' takes x \(2, 3\)"):
        interpreter.run({})
    with pytest.raises(InputError, match=r"unknown input\(s\) y"):
        interpreter.run({"x": np.zeros((2, 3), np.float32), "y": np.zeros(1)})
    with pytest.raises(InputError, match=r"input 'x' has shape \[3, 2\]; the model takes \(2, 3\)"):
        interpreter.run({"x": np.zeros((3, 2), np.float32)})


def test_precision_must_be_known():
    with pytest.raises(InputError, match="precision must be one of float32, float16"):
        Interpreter(op_program(lambda x: mb.relu(x=x), {"x": np.zeros(2, np.float32)}), precision="bfloat16")


def _small_network(opset=IOS18, linear_scale: float = 1.0):
    generator = np.random.default_rng(0)
    conv_weight = generator.standard_normal((4, 3, 3, 3)).astype(np.float32)
    linear_weight = (generator.standard_normal((5, 4)) * linear_scale).astype(np.float32)

    def body(image):
        features = mb.conv(x=image, weight=conv_weight, pad_type="same", name="conv")
        pooled = mb.reduce_mean(x=mb.relu(x=features), axes=[2, 3], keep_dims=False)
        return [mb.linear(x=pooled, weight=linear_weight, name="classifier")]

    program = _program({"main": ({"image": mb.placeholder(shape=(2, 3, 6, 6))}, body)}, opset)
    return program, conv_weight, linear_weight


def test_channel_statistics_match_a_direct_torch_computation():
    program, conv_weight, _ = _small_network()
    statistics = ChannelStatistics()
    interpreter = Interpreter(program, observers=[statistics])
    images = [np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32) for seed in (1, 2)]
    for image in images:
        interpreter.run({"image": image})

    stacked = torch.from_numpy(np.concatenate(images))
    features = torch.nn.functional.conv2d(stacked, torch.from_numpy(conv_weight), padding=1)
    pooled = features.relu().mean(dim=(2, 3))
    conv_inputs = stacked.permute(0, 2, 3, 1).reshape(-1, 3).double()

    conv_record = statistics.records[program.functions["main"].find_ops(op_type="conv")[0].inputs["weight"].name]
    assert (conv_record.op_type, conv_record.op_name, conv_record.count) == ("conv", "conv", 4 * 36)
    np.testing.assert_allclose(conv_record.mean_square, conv_inputs.square().mean(dim=0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(conv_record.mean, conv_inputs.mean(dim=0).numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(conv_record.max_abs, conv_inputs.abs().amax(dim=0).numpy(), rtol=1e-6)

    linear_record = next(r for r in statistics.records.values() if r.op_type == "linear")
    assert linear_record.count == 4
    np.testing.assert_allclose(linear_record.mean_square, pooled.double().square().mean(dim=0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(linear_record.mean, pooled.double().mean(dim=0).numpy(), rtol=1e-5)


def test_channel_statistics_follow_the_contracted_axis_of_matmul():
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    statistics = ChannelStatistics()
    program = op_program(lambda x: mb.matmul(x=x, y=weight, transpose_x=True), {"x": np.zeros((3, 2), np.float32)})
    x = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    Interpreter(program, observers=[statistics]).run({"x": x})
    (record,) = statistics.records.values()
    np.testing.assert_allclose(record.mean_square, (x.astype(np.float64) ** 2).mean(axis=1), rtol=1e-6)


def test_second_moments_are_recorded_for_matrix_like_weights_within_the_limit():
    """linear and 1x1 convolutions get E[x x^T] of their input vectors; a 3x3 convolution (its
    inputs are windows, not vectors) and weights with more inputs than the limit do not."""
    generator = np.random.default_rng(0)
    pointwise = generator.standard_normal((6, 3, 1, 1)).astype(np.float32)
    window = generator.standard_normal((4, 6, 3, 3)).astype(np.float32)
    linear_weight = generator.standard_normal((5, 4)).astype(np.float32)

    def body(image):
        expanded = mb.conv(x=image, weight=pointwise, name="pointwise")
        features = mb.conv(x=mb.relu(x=expanded), weight=window, pad_type="same", name="window")
        pooled = mb.reduce_mean(x=features, axes=[2, 3], keep_dims=False)
        return [mb.linear(x=pooled, weight=linear_weight, name="classifier")]

    program = _program({"main": ({"image": mb.placeholder(shape=(2, 3, 6, 6))}, body)}, IOS18)
    images = [np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32) for seed in (1, 2)]
    statistics = ChannelStatistics(gram_limit=4)
    interpreter = Interpreter(program, observers=[statistics])
    for image in images:
        interpreter.run({"image": image})
    by_op = {record.op_name: record for record in statistics.records.values()}

    stacked = torch.from_numpy(np.concatenate(images)).double()
    vectors = stacked.permute(0, 2, 3, 1).reshape(-1, 3)
    np.testing.assert_allclose(by_op["pointwise"].second_moment, (vectors.T @ vectors / len(vectors)).numpy(), rtol=1e-6)
    expanded = torch.nn.functional.conv2d(stacked, torch.from_numpy(pointwise).double()).relu()
    pooled = torch.nn.functional.conv2d(expanded, torch.from_numpy(window).double(), padding=1).mean(dim=(2, 3))
    np.testing.assert_allclose(by_op["classifier"].second_moment, (pooled.T @ pooled / len(pooled)).numpy(), rtol=1e-4)
    assert by_op["window"].gram is None  # 3x3 windows
    plain, small = ChannelStatistics(), ChannelStatistics(gram_limit=3)
    Interpreter(program, observers=[plain, small]).run({"image": images[0]})
    assert len(plain.records) == 3 and all(r.gram is None for r in plain.records.values())  # off by default
    assert {r.op_name for r in small.records.values() if r.gram is not None} == {"pointwise"}  # the classifier has 4 inputs


def test_verify_of_a_model_against_itself_is_perfect_and_against_a_changed_one_is_not():
    program, _, _ = _small_network()
    changed, _, _ = _small_network(linear_scale=1.01)
    same = verify(program, program, random=4)
    assert same.samples == 4
    (output,) = same.outputs
    assert output.snr_db == math.inf and output.cosine == 1.0 and output.top1_agreement == 1.0
    assert output.max_abs_error == 0.0
    different = verify(program, changed, random=4)["classifier"]
    assert 35 < different.snr_db < 45  # a 1% change of every logit: 40 dB
    assert 0.999 < different.cosine < 1.0


def test_compare_output_metrics_by_hand():
    reference = [np.array([[1.0, 3.0]]), np.array([[2.0, 0.0]])]
    other = [np.array([[1.0, 2.0]]), np.array([[0.0, 1.0]])]
    comparison = compare_output("scores", reference, other)
    # signal 1 + 9 + 4 = 14, noise 1 + 4 + 1 = 6
    assert comparison.snr_db == pytest.approx(10 * math.log10(14 / 6))
    assert comparison.psnr_db == pytest.approx(20 * math.log10(3 / math.sqrt(6 / 4)))
    assert comparison.max_abs_error == 2.0
    assert comparison.top1_agreement == 0.5  # first sample agrees (class 1), second does not
    assert comparison.min_cosine == 0.0
    assert comparison.cosine == pytest.approx((7 / (math.sqrt(10) * math.sqrt(5)) + 0.0) / 2)


def test_samples_split_a_stacked_npz_layout_and_reject_mismatches():
    interpreter = Interpreter(op_program(lambda x, y: mb.add(x=x, y=y), {"x": np.zeros(3, np.float32), "y": np.zeros(3, np.float32)}))
    samples = samples_of({"x": np.ones((5, 3), np.float32), "y": np.zeros((5, 3), np.float32)}, interpreter)
    assert len(samples) == 5 and samples[0]["x"].shape == (3,)
    assert len(samples_of({"x": np.ones(3, np.float32), "y": np.zeros(3, np.float32)}, interpreter)) == 1
    with pytest.raises(InputError, match="disagree on the number of samples"):
        samples_of({"x": np.ones((5, 3), np.float32), "y": np.zeros((4, 3), np.float32)}, interpreter)
    with pytest.raises(InputError, match=r"missing input\(s\) y"):
        samples_of({"x": np.ones(3, np.float32)}, interpreter)


def test_random_token_ids_stay_inside_the_embedding_they_index():
    table = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    program = op_program(lambda ids, mask: mb.mul(x=mb.gather(x=table, indices=ids, axis=0), y=mb.cast(x=mb.expand_dims(x=mask, axes=[-1]), dtype="fp32")),
                         {"ids": np.zeros((1, 50), np.int32), "mask": np.zeros((1, 50), np.int32)})
    samples = random_samples(Interpreter(program), 3)
    ids = np.concatenate([s["ids"] for s in samples])
    masks = np.concatenate([s["mask"] for s in samples])
    assert ids.min() >= 0 and ids.max() == 6
    assert set(np.unique(masks)) == {0, 1}


def test_run_program_takes_a_saved_package(tmp_path):
    import coremltools as ct

    program, _, _ = _small_network()
    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
    mlmodel.save(str(tmp_path / "small.mlpackage"))
    image = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    from_program = run_program(program, {"image": image})
    from_package = run_program(tmp_path / "small.mlpackage", {"image": image})
    assert list(from_package) == list(from_program) == [o.name for o in mlmodel.get_spec().description.output] == ["classifier"]
    np.testing.assert_allclose(from_package["classifier"], from_program["classifier"], rtol=1e-5, atol=1e-5)


def test_verify_needs_exactly_one_source_of_inputs():
    program, _, _ = _small_network()
    with pytest.raises(InputError, match="give either inputs or random=N"):
        verify(program, program)
    with pytest.raises(InputError, match="positive number of samples"):
        verify(program, program, random=0)


def test_input_dtype_declared_int_is_bound_as_integers():
    program = op_program(lambda ids: mb.add(x=ids, y=np.int32(1)), {"ids": np.zeros(3, np.int32)})
    (out,) = Interpreter(program).run({"ids": np.array([1, 2, 3], np.int32)}).values()
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, [2, 3, 4])
    assert types.is_int(program.functions["main"].outputs[0].dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["original", "compressed", "both"])
def test_non_finite_outputs_are_counted_not_measured_and_fail_the_comparison(bad, where):
    """argmax of NaN rows agrees, and a NaN distance compares false to any threshold: without the
    count a model whose outputs are all NaN would report top-1 agreement 1.0."""
    reference = [np.array([[0.1, 0.9, 0.0]], np.float32), np.array([[0.7, 0.2, 0.1]], np.float32)]
    other = [r.copy() for r in reference]
    for outputs in ([reference] if where == "original" else [other] if where == "compressed" else [reference, other]):
        outputs[0][0, 1] = bad
        outputs[1][:] = bad
    comparison = compare_output("scores", reference, other)
    counts = {"original": (4, 0), "compressed": (0, 4), "both": (4, 4)}[where]
    assert (comparison.nonfinite_original, comparison.nonfinite_compressed) == counts
    assert comparison.top1_agreement is None
    assert all(math.isnan(v) for v in (comparison.snr_db, comparison.psnr_db, comparison.cosine, comparison.min_cosine, comparison.max_abs_error))
    assert len(comparison.problems) == (2 if where == "both" else 1)
    assert f"of the {'original' if where != 'compressed' else 'compressed'} model has 4 NaN or infinite values" in comparison.problems[0]
    finite = compare_output("scores", reference[:0] + [np.ones((1, 3), np.float32)], [np.ones((1, 3), np.float32)])
    assert finite.problems == [] and finite.top1_agreement == 1.0


def test_kl_divergence_of_class_scores_by_hand():
    reference = [np.array([[0.0, math.log(3.0)]]), np.array([[0.0, 0.0]])]  # softmax (1/4, 3/4) and (1/2, 1/2)
    other = [np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]])]
    comparison = compare_output("scores", reference, other)
    first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert comparison.kl_divergence == pytest.approx(first / 2)  # the second sample agrees exactly
    assert compare_output("flat", [np.zeros(1)], [np.ones(1)]).kl_divergence is None  # not class scores
    from milcompress.reference.verify import _kl_divergence

    assert math.isnan(_kl_divergence(np.zeros((1, 2)), np.array([[np.inf, 0.0]])))  # NaN, not a RuntimeWarning


def test_verify_says_whether_its_inputs_were_random():
    program, _, _ = _small_network()
    assert verify(program, program, random=2).random_inputs is True
    given = verify(program, program, {"image": np.zeros((2, 3, 6, 6), np.float32)})
    assert given.random_inputs is False and given.as_dict()["random_inputs"] is False


def _two_layer_program(first: np.ndarray, second: np.ndarray) -> Program:
    def build(x):
        hidden = mb.relu(x=mb.linear(x=x, weight=first, name="hidden"))
        looped = mb.cond(pred=True, _true_fn=lambda: mb.mul(x=hidden, y=2.0), _false_fn=lambda: hidden)
        return (mb.linear(x=looped, weight=second, name="out"),)

    return _program({"main": ({"x": mb.placeholder(shape=(2, 4))}, build)})


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=10, deadline=None)
def test_resuming_a_snapshot_equals_a_whole_run_with_the_same_replacement(seed):
    generator = np.random.default_rng(seed)
    first, second = generator.standard_normal((3, 4)).astype(np.float32), generator.standard_normal((5, 3)).astype(np.float32)
    interpreter = Interpreter(_two_layer_program(first, second))
    inputs = {"x": generator.standard_normal((2, 4)).astype(np.float32)}
    snapshot = interpreter.snapshot(inputs)
    consts = [op.outputs[0].name for op in interpreter.function.operations if op.op_type == "const" and op.outputs[0].shape in ((3, 4), (5, 3))]
    assert len(consts) == 2
    for name in consts:
        changed = generator.standard_normal(interpreter._static[name].shape).astype(np.float32)
        np.testing.assert_array_equal(interpreter.resume(snapshot, {name: changed})["out"], interpreter.run(inputs, replace={name: changed})["out"])
    np.testing.assert_array_equal(interpreter.resume(snapshot, {})["out"], interpreter.run(inputs)["out"])
    assert snapshot.nbytes >= 4 * (2 * 3 + 2 * 5)  # at least the two linears' outputs


def _stateful_two_layer_program(first: np.ndarray, second: np.ndarray) -> Program:
    """A state written between the two weights' readers and read after the second: what-if runs
    resumed after the write must start from the state as the write left it."""

    @mb.program(input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.TensorSpec((2, 4), dtype=types.fp16)], opset_version=IOS18)
    def program(cache, x):
        hidden = mb.linear(x=x, weight=first.astype(np.float16), name="hidden")
        mb.coreml_update_state(state=cache, value=mb.add(x=mb.read_state(input=cache), y=hidden))
        mixed = mb.linear(x=mb.relu(x=hidden), weight=second.astype(np.float16), name="mixed")
        mb.coreml_update_state(state=cache, value=mb.mul(x=mb.read_state(input=cache), y=np.float16(2.0)))
        return mb.add(x=mixed, y=mb.reduce_sum(x=mb.read_state(input=cache), axes=[1], keep_dims=True), name="out")

    return program


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=10, deadline=None)
def test_resuming_a_stateful_snapshot_equals_a_new_sessions_first_call_with_the_same_replacement(seed):
    generator = np.random.default_rng(seed)
    first, second = generator.standard_normal((3, 4)), generator.standard_normal((3, 3))
    interpreter = Interpreter(_stateful_two_layer_program(first, second))
    inputs = {"x": generator.standard_normal((2, 4)).astype(np.float16)}
    snapshot = interpreter.snapshot(inputs)
    assert [name for _, name, _ in snapshot.states] == ["cache", "cache"]
    consts = [op.outputs[0].name for op in interpreter.function.operations if op.op_type == "const" and op.outputs[0].shape in ((3, 4), (3, 3))]
    assert len(consts) == 2
    for name in consts:
        changed = generator.standard_normal(interpreter._static[name].shape).astype(np.float16)
        expected = interpreter.new_session(replace={name: changed}).run(inputs)["out"]
        np.testing.assert_array_equal(interpreter.resume(snapshot, {name: changed})["out"], expected)
    np.testing.assert_array_equal(interpreter.resume(snapshot, {})["out"], interpreter.run(inputs)["out"])
    np.testing.assert_array_equal(snapshot.outputs["out"], interpreter.run(inputs)["out"])


def test_holding_keeps_the_weights_read_from_a_package_for_the_runs_that_follow(tmp_path, monkeypatch):
    import coremltools as ct

    from milcompress import storage
    from milcompress.packages import program_of

    generator = np.random.default_rng(0)
    # Two weights of 128 KiB in float32 (64 KiB in float16), more than the executor keeps anyway.
    first, second = generator.standard_normal((256, 128)).astype(np.float32), generator.standard_normal((128, 256)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((2, 128))], opset_version=IOS18)
    def program(x):
        return mb.linear(x=mb.relu(x=mb.linear(x=x, weight=first)), weight=second, name="out")

    path = tmp_path / "two.mlpackage"
    ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(str(path))
    interpreter = Interpreter(program_of(ct.models.MLModel(str(path), skip_model_load=True)))
    loads = []
    original_load = storage.BlobRef.load
    monkeypatch.setattr(storage.BlobRef, "load", lambda self, *a, **k: loads.append(self.offset) or original_load(self, *a, **k))
    interpreter.run({"x": np.zeros((2, 128), np.float32)})  # the small consts (biases) are kept from the first run on
    loads.clear()
    inputs = {"x": generator.standard_normal((2, 128)).astype(np.float32)}
    expected = interpreter.run(inputs)["out"]
    assert len(loads) == 2  # read on demand, each weight once a run
    with interpreter.holding(1 << 20):
        for _ in range(3):
            np.testing.assert_array_equal(interpreter.run(inputs)["out"], expected)
    assert len(loads) == 4  # read once for the three runs
    interpreter.run(inputs)
    assert len(loads) == 6  # released after the block
    with interpreter.holding(100_000):  # no room for a float32 weight (131,072 bytes): none is kept
        interpreter.run(inputs)
        interpreter.run(inputs)
    assert len(loads) == 10
    with interpreter.holding(140_000):  # room for one of them
        interpreter.run(inputs)
        interpreter.run(inputs)
    assert len(loads) == 13
    # A weight replaced in a what-if run is not read (its shape is the program's), and a held copy
    # of it is let go, its room given back: the first weight fills the room, the replacement frees
    # it for the second.
    name = next(op.outputs[0].name for op in interpreter.function.operations if op.op_type == "const" and op.outputs[0].shape == (256, 128))
    with interpreter.holding(140_000):
        interpreter.run(inputs)
        assert len(loads) == 15
        replaced = interpreter.run(inputs, replace={name: np.zeros((256, 128), np.float32)})["out"]
        assert len(loads) == 16 and not replaced.any()  # the second read once more, now held
        interpreter.run(inputs, replace={name: np.zeros((256, 128), np.float32)})
        assert len(loads) == 16


def test_perturbing_changes_a_computed_value_for_every_reader_and_only_within_the_context():
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10

    @mb.program(input_specs=[mb.TensorSpec((2, 4))])
    def program(x):
        hidden = mb.relu(x=x, name="hidden")
        return mb.add(x=mb.linear(x=hidden, weight=weight), y=mb.reduce_sum(x=hidden, axes=[1], keep_dims=True), name="out")

    interpreter = Interpreter(program)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    hidden = np.maximum(x, 0)
    shifted = np.round(hidden * 4) / 4  # a quantization of the hidden tensor, step 1/4

    def expected(h):
        return h @ weight.T + h.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(interpreter.run({"x": x})["out"], expected(hidden), rtol=1e-6)
    with interpreter.perturbing({"hidden": lambda value: torch.round(value * 4) / 4}):
        np.testing.assert_allclose(interpreter.run({"x": x})["out"], expected(shifted), rtol=1e-6)
    with interpreter.perturbing({"x": lambda value: value + 1}):  # an input
        np.testing.assert_allclose(interpreter.run({"x": x})["out"], expected(np.maximum(x + 1, 0)), rtol=1e-6)
    np.testing.assert_allclose(interpreter.run({"x": x})["out"], expected(hidden), rtol=1e-6)  # gone after the context
    const = next(op.outputs[0].name for op in interpreter.function.operations if op.op_type == "const")
    with pytest.raises(InputError, match="not an input or the output of an op"):
        with interpreter.perturbing({const: lambda value: value}):
            pass
