"""A tiny Llama-shaped decoder, converted stateful (KV-cache states) and stateless, in the executor:
step by step with its cache it equals the whole sequence and torch; verify and calibrated
compress_to_size work on it, and both conversions verify alike."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import milcompress
from benchmarks.models.llama import LlamaConfig, convert, random_llama
from benchmarks.models.llama import causal_mask as torch_causal_mask
from milcompress.config import LinearQuantizeConfig, PalettizeConfig
from milcompress.errors import InputError
from milcompress.reference import Interpreter, load_program
from milcompress.reference.decoder import Decoder, DecoderRun, causal_mask
from milcompress.reference.verify import DecoderReport, run_sequence, sequences_of, verify, verify_decoder

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_context=16)
IDS = np.array([5, 17, 3, 42, 8, 60, 1, 33, 12, 9], dtype=np.int64)


@pytest.fixture(scope="module")
def decoders():
    """name -> (torch model, converted MLModel), stateful and stateless, same weights."""
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for stateful in (True, False):
            model = random_llama(CONFIG, stateful=stateful, seed=3)
            found["stateful" if stateful else "stateless"] = (model, convert(model))
    return found


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    """The stateless torch model with its weights rounded to float16, as the program stores them."""
    rounded = random_llama(CONFIG, stateful=False, seed=3)
    rounded.load_state_dict({k: v for k, v in model.state_dict().items() if "cache" not in k})
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
        rounded.rotary_cos.copy_(rounded.rotary_cos.half().float())
        rounded.rotary_sin.copy_(rounded.rotary_sin.half().float())
        logits = rounded(torch.from_numpy(ids[None].astype(np.int32)), torch.from_numpy(torch_causal_mask(len(ids))))
    return logits[0].numpy()


def test_the_cache_step_by_step_equals_the_whole_sequence_and_torch(decoders):
    torch_model, stateful = decoders["stateful"]
    _, stateless = decoders["stateless"]
    expected = _torch_logits(torch_model, IDS)
    whole = Interpreter(load_program(stateless)).run({"input_ids": IDS[None].astype(np.int32), "causal_mask": causal_mask(10, 10)})["logits"][0]
    np.testing.assert_allclose(whole, expected, atol=1e-4)

    interpreter = Interpreter(load_program(stateful))
    assert interpreter.state_spec() == {name: ((2, 1, 2, 16, 8), np.dtype(np.float16)) for name in ("key_cache", "value_cache")}
    session = interpreter.new_session()
    prefill = session.run({"input_ids": IDS[None, :6].astype(np.int32), "causal_mask": causal_mask(6, 6)})["logits"][0]
    steps = [session.run({"input_ids": IDS[None, end - 1 : end].astype(np.int32), "causal_mask": causal_mask(1, end)})["logits"][0]
             for end in range(7, 11)]
    np.testing.assert_allclose(np.concatenate([prefill, *steps]), expected, atol=1e-4)
    cache = session.states["key_cache"]
    assert np.all(cache[:, :, :, 10:] == 0) and np.all(np.abs(cache[:, :, :, :10]).sum(axis=-1) > 0)  # ten positions written

    # A session that starts from another's states continues where that one stopped.
    resumed = interpreter.new_session(session.states)
    more = resumed.run({"input_ids": np.array([[7]], np.int32), "causal_mask": causal_mask(1, 11)})["logits"][0]
    extended = np.append(IDS, 7)
    np.testing.assert_allclose(more[0], _torch_logits(torch_model, extended)[-1], atol=1e-4)


@pytest.fixture(scope="module")
def interpreters(decoders):
    """(stateful or stateless, precision) -> Interpreter."""
    return {
        (name, precision): Interpreter(load_program(model), precision=precision)
        for name, (_, model) in decoders.items()
        for precision in ("float32", "float16")
    }


@settings(max_examples=8)
@given(st.integers(1, 10), st.sampled_from(["float32", "float16"]))
def test_any_prefill_then_one_token_a_call_equals_the_whole_sequence(interpreters, prefill, precision):
    whole = interpreters["stateless", precision].run({"input_ids": IDS[None].astype(np.int32), "causal_mask": causal_mask(10, 10)})["logits"][0]
    session = interpreters["stateful", precision].new_session()
    logits = [session.run({"input_ids": IDS[None, :prefill].astype(np.int32), "causal_mask": causal_mask(prefill, prefill)})["logits"][0]]
    for end in range(prefill + 1, 11):
        logits.append(session.run({"input_ids": IDS[None, end - 1 : end].astype(np.int32), "causal_mask": causal_mask(1, end)})["logits"][0])
    # Equal to float rounding (float16 emulation: within about two float16 steps at |logit| ~ 0.7).
    np.testing.assert_allclose(np.concatenate(logits), whole, atol=1e-6 if precision == "float32" else 1e-3)


def test_flexible_lengths_and_wrong_states_are_checked_by_name(decoders):
    interpreter = Interpreter(load_program(decoders["stateful"][1]))
    assert interpreter.inputs["input_ids"].describe() == "(1, 1..16)" and interpreter.inputs["input_ids"].default == (1, 8)
    with pytest.raises(InputError, match=r"input 'input_ids' has shape \[1, 17\]; the model takes \(1, 1\.\.16\)"):
        interpreter.run({"input_ids": np.zeros((1, 17), np.int32), "causal_mask": causal_mask(16, 16)})
    with pytest.raises(InputError, match=r"state 'key_cache' holds float16 \[2, 1, 2, 16, 8\]; the value given has shape \[2, 1, 2, 8, 8\]"):
        interpreter.new_session({"key_cache": np.zeros((2, 1, 2, 8, 8), np.float16)})
    with pytest.raises(InputError, match=r"state 'value_cache' holds float16 \[2, 1, 2, 16, 8\]; the value given is int32"):
        interpreter.new_session({"value_cache": np.zeros((2, 1, 2, 16, 8), np.int32)})


def test_a_decoder_is_recognised_and_runs_either_way_alike(decoders):
    runs = {}
    for name, (_, model) in decoders.items():
        decoder = Decoder.of(Interpreter(load_program(model)))
        assert (decoder.ids, decoder.mask, decoder.logits, decoder.vocabulary, decoder.max_positions) == ("input_ids", "causal_mask", "logits", 64, 16)
        assert decoder.stateful == (name == "stateful")
        run = DecoderRun(decoder)
        runs[name] = [run.prefill(IDS[:4])] + [run.step(token)[None] for token in IDS[4:8]]
    np.testing.assert_allclose(np.concatenate(runs["stateful"]), np.concatenate(runs["stateless"]), atol=1e-5)
    plain = Interpreter(load_program(_plain_model()))
    assert Decoder.of(plain) is None


def _plain_model():
    import coremltools as ct

    traced = torch.jit.trace(torch.nn.Linear(4, 3).eval(), torch.zeros(1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 4))], convert_to="mlprogram", skip_model_load=True)


@pytest.fixture(scope="module")
def compressed(decoders):
    config = LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=8, weight_threshold=0)
    return {name: milcompress.linear_quantize_weights(model, config) for name, (_, model) in decoders.items()}


def test_stateful_and_stateless_conversions_verify_alike(decoders, compressed):
    reports = {name: verify(model, compressed[name], random=2, steps=3) for name, (_, model) in decoders.items()}
    assert all(isinstance(r, DecoderReport) for r in reports.values())
    assert reports["stateful"].stateful == (True, True) and reports["stateless"].stateful == (False, False)
    for ours, theirs in zip(reports["stateful"].steps, reports["stateless"].steps):
        assert (ours.step, ours.positions, ours.top1_agreement) == (theirs.step, theirs.positions, theirs.top1_agreement)
        assert ours.cosine == pytest.approx(theirs.cosine, abs=1e-6) and ours.kl == pytest.approx(theirs.kl, rel=1e-3, abs=1e-9)
    report = reports["stateful"]
    assert [s.positions for s in report.steps] == [16, 2, 2, 2] and report.perplexity is None
    assert all(0.9 < s.cosine < 1 and s.kl > 0 for s in report.steps)  # int4 changed the logits, a little

    given = {name: verify_decoder(model, compressed[name], IDS[None, :8], steps=2) for name, (_, model) in decoders.items()}
    assert given["stateful"].perplexity == pytest.approx(given["stateless"].perplexity, rel=1e-5)
    original, ours = given["stateful"].perplexity
    assert 1 < original < 1000 and ours != original
    # The same model against itself: perfect agreement, no divergence.
    same = verify(decoders["stateful"][1], decoders["stateless"][1], {"input_ids": IDS[:8]}, steps=2)
    assert same.stateful == (True, False)
    assert all(s.top1_agreement == 1 and s.kl < 1e-6 and s.cosine > 0.999999 for s in same.steps)


def test_non_finite_logits_fail_the_verification():
    from milcompress.reference.verify import _compare_logits

    step = _compare_logits(1, np.zeros((1, 4)), np.array([[0.0, np.inf, 1.0, np.nan]]))
    assert (step.nonfinite_original, step.nonfinite_compressed) == (0, 2) and np.isnan([step.cosine, step.kl, step.top1_agreement]).all()
    report = DecoderReport("float32", 1, 4, 1, (False, False), (step,), (10.0, float("nan")))
    assert not report.ok and report.problems == ["logits of the compressed model at decode step 1 have 2 NaN or infinite values"]
    found = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert found["perplexity"] == [10.0, "nan"] and found["steps"][0]["cosine"] == "nan" and found["problems"] == report.problems


def test_ids_outside_the_vocabulary_or_too_long_are_refused(decoders, compressed):
    model = decoders["stateful"][1]
    with pytest.raises(InputError, match=r"token id 64 at position 2 of 'input_ids' is outside the vocabulary \(0\.\.63\)"):
        verify(model, compressed["stateful"], {"input_ids": np.array([1, 2, 64])})
    with pytest.raises(InputError, match=r"10 tokens and 8 decode steps make 18 positions; the model takes at most 16"):
        verify(model, compressed["stateful"], {"input_ids": IDS}, steps=8)
    # Unless told how many, the decode steps are as many as fit after the prompt (up to 8).
    assert verify(model, compressed["stateful"], {"input_ids": IDS}).decode_steps == 6
    assert verify(model, compressed["stateful"], random=1, shapes={"input_ids": (1, 16)}).decode_steps == 0
    with pytest.raises(InputError, match=r"give the shape of 'input_ids' only"):
        verify(model, compressed["stateful"], random=1, shapes={"causal_mask": (1, 1, 4, 4)})
    assert verify(model, compressed["stateful"], random=1, shapes={"input_ids": (1, 3)}, steps=1).prompt_length == 3


def test_random_inputs_of_a_decoder_are_token_ids_with_their_causal_mask(interpreters):
    from milcompress.reference.verify import random_samples

    interpreter = interpreters["stateful", "float32"]
    (sample,) = random_samples(interpreter, 1, shapes={"input_ids": (1, 5)})
    assert sample["input_ids"].shape == (1, 5) and sample["input_ids"].dtype == np.int32 and sample["input_ids"].max() < 64
    np.testing.assert_array_equal(sample["causal_mask"], causal_mask(5, 5, np.float16))
    assert random_samples(interpreter, 2)[1]["causal_mask"].shape == (1, 1, 8, 8)  # the default length
    assert np.all(np.isfinite(interpreter.run(sample)["logits"]))
    with pytest.raises(InputError, match=r"the causal mask 'causal_mask' follows the length of 'input_ids'"):
        random_samples(interpreter, 1, shapes={"causal_mask": (1, 1, 5, 5)})


def test_calibration_sequences_of_a_stateful_decoder(decoders):
    interpreter = Interpreter(load_program(decoders["stateful"][1]))
    ids = np.stack([IDS, IDS[::-1]])
    sequences = sequences_of({"input_ids": ids}, interpreter, steps=3)
    assert [[call["input_ids"].shape[1] for call in sequence] for sequence in sequences] == [[7, 1, 1, 1]] * 2
    assert [call["causal_mask"].shape for call in sequences[0]] == [(1, 1, 7, 7), (1, 1, 1, 8), (1, 1, 1, 9), (1, 1, 1, 10)]
    outputs = run_sequence(interpreter, sequences[0])
    whole = Interpreter(load_program(decoders["stateless"][1]))
    assert len(sequences_of({"input_ids": ids}, whole)[0]) == 1  # a stateless decoder sees a row at once
    expected = whole.run({"input_ids": IDS[None].astype(np.int32), "causal_mask": causal_mask(10, 10)})["logits"][0]
    np.testing.assert_allclose(np.concatenate([o["logits"][0] for o in outputs]), expected, atol=1e-4)
    # Sequences written out are taken as they are.
    written = [[sequences[0][0], sequences[0][1]]]
    assert sequences_of(written, interpreter) == written


def test_compress_verify_and_calibrated_compress_to_size_on_a_stateful_decoder(decoders, tmp_path):
    from milcompress.tools.cli import main

    _, model = decoders["stateful"]
    calibration = {"input_ids": np.random.default_rng(0).integers(0, 64, size=(4, 10))}
    candidates = [  # a short menu keeps the test fast; the allocation's own candidates are tested in tests/passes
        ("int8", LinearQuantizeConfig(dtype="int8", granularity="per_channel", weight_threshold=0)),
        ("int4 per block 32", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32, weight_threshold=0)),
        ("palette 4-bit", PalettizeConfig(nbits=4, weight_threshold=0)),
    ]
    small = milcompress.compress_to_size(model, 5.0, calibration=calibration, candidates=candidates, sensitivity_seconds=1, weight_threshold=0)
    summary = milcompress.report_of(small).summary
    # A calibrated decoder gets error feedback by default: each matrix-like weight says what it did.
    notes = [note for record in milcompress.report_of(small).records for note in record.notes]
    assert sum("error feedback" in note for note in notes) >= 4, notes
    assert summary["calibrated"] and summary["sensitivity_measured"] > 0 and summary["biases_corrected"] > 0  # from the statistics of every call
    assert 4.5 < summary["bits_per_weight"] <= 5.0
    report = milcompress.verify(model, small, {"input_ids": calibration["input_ids"][:2]}, steps=4)
    assert report.decode_top1_agreement > 0.5 and all(s.cosine > 0.9 for s in report.steps)

    original, packed = tmp_path / "decoder.mlpackage", tmp_path / "decoder_small.mlpackage"
    model.save(str(original))
    small.save(str(packed))
    np.savez(tmp_path / "ids.npz", input_ids=calibration["input_ids"][:2, :6])
    assert main(["verify", str(original), str(packed), "--random", "1", "--shape", "input_ids=1x5", "--steps", "2", "--json"]) == 0
    assert main(["verify", str(original), str(packed), "--inputs", str(tmp_path / "ids.npz"), "--steps", "2"]) == 0
    assert main(["verify", str(original), str(packed), "--random", "1", "--shape", "input_ids=1x40"]) == 2
    assert main(["verify", str(original), str(packed), "--random", "1", "--shape", "input_ids"]) == 2
    # The runner calibrates on the same token ids.
    again = tmp_path / "decoder_cli.mlpackage"
    spec = f"compress_to_size{{target_bits_per_weight=8,weight_threshold=1024,calibration={tmp_path / 'ids.npz'},error_feedback=false}}"
    assert main(["run", str(original), "-o", str(again), "--passes", spec, "--report", str(tmp_path / "r.json")]) == 0
    records = json.loads((tmp_path / "r.json").read_text())[0]["consts"]
    assert records and not any("error feedback" in note for record in records for note in record.get("notes") or [])
    assert main(["verify", str(original), str(again), "--random", "1", "--steps", "1"]) == 0


def test_the_command_line_prints_the_steps(decoders, compressed, tmp_path, capsys):
    from milcompress.tools.cli import main

    original, packed = tmp_path / "a.mlpackage", tmp_path / "b.mlpackage"
    decoders["stateless"][1].save(str(original))
    compressed["stateless"].save(str(packed))
    np.savez(tmp_path / "ids.npz", input_ids=IDS[None, :6])
    capsys.readouterr()
    assert main(["verify", str(original), str(packed), "--inputs", str(tmp_path / "ids.npz"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "decoder (stateless / stateless): 1 prompts of 6 tokens" in out and "perplexity of the given ids: original" in out
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["prompt"], ["1"], ["2"])] == ["prompt", "1", "2"]
    assert main(["verify", str(original), str(packed), "--random", "1", "--steps", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["perplexity"] is None and [s["step"] for s in found["steps"]] == [0, 1]


def test_inspect_shows_flexible_inputs_and_states(decoders, tmp_path, capsys):
    from milcompress.tools.cli import main

    path = tmp_path / "decoder.mlpackage"
    decoders["stateful"][1].save(str(path))
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inputs: input_ids int32 (1, 1..16), default (1, 8); causal_mask float16 (1, 1, 1..16, 1..16), default (1, 1, 8, 8)" in out
    assert "states: key_cache float16 (2, 1, 2, 16, 8); value_cache float16 (2, 1, 2, 16, 8)" in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["functions"]["main"]["states"]["value_cache"] == "float16 (2, 1, 2, 16, 8)"


@pytest.mark.slow
def test_a_larger_decoder_verifies_alike_stateful_and_stateless_through_compress_to_size():
    """A 26M-parameter random decoder (8 layers, vocabulary 8000): compress_to_size data-free and
    calibrated on both conversions, then verify; both conversions give the same choices and the
    same per-step comparisons."""
    from benchmarks.models.llama import llama_of_size

    config = llama_of_size(25e6, vocab_size=8000, max_context=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {stateful: convert(random_llama(config, stateful=stateful, seed=5)) for stateful in (True, False)}
    ids = np.random.default_rng(2).integers(0, config.vocab_size, size=(4, 24))
    for calibration in (None, {"input_ids": ids}):
        reports, choices = {}, {}
        for stateful, model in models.items():
            small = milcompress.compress_to_size(model, 4.0, calibration=calibration)
            choices[stateful] = [(c["name"], c["form"]) for c in milcompress.report_of(small).summary["choices"]]
            reports[stateful] = verify(model, small, {"input_ids": ids[:2, :16]}, steps=8)
        assert choices[True] == choices[False]
        for ours, theirs in zip(reports[True].steps, reports[False].steps):
            assert ours.top1_agreement == theirs.top1_agreement
            assert ours.cosine == pytest.approx(theirs.cosine, abs=1e-5) and ours.kl == pytest.approx(theirs.kl, rel=1e-3)
        assert reports[True].perplexity == pytest.approx(reports[False].perplexity, rel=1e-4)


def test_token_ids_wrapped_for_negative_indices_are_still_recognised():
    """torch.export-style conversions wrap the ids as `select(ids >= 0, ids, ids + vocabulary)`
    before the embedding's gather: the decoder is recognised through the wrap."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    vocabulary = 11
    table = np.random.default_rng(0).standard_normal((vocabulary, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((1, 3), dtype=ct.converters.mil.mil.types.int32), mb.TensorSpec((1, 1, 3, 3))],
                opset_version=ct.target.iOS18)
    def prog(input_ids, causal_mask):
        wrapped = mb.select(cond=mb.greater_equal(x=input_ids, y=0), a=input_ids, b=mb.add(x=input_ids, y=vocabulary))
        hidden = mb.expand_dims(x=mb.gather(x=table, indices=wrapped, axis=0), axes=[1])
        attended = mb.scaled_dot_product_attention(query=hidden, key=hidden, value=hidden, attn_mask=causal_mask)
        return mb.matmul(x=mb.squeeze(x=attended, axes=[1]), y=table.T, name="logits")

    decoder = Decoder.of(Interpreter(prog))
    assert decoder is not None and (decoder.ids, decoder.mask, decoder.logits, decoder.vocabulary) == ("input_ids", "causal_mask", "logits", vocabulary)


def test_sensitivity_seconds_bounds_a_decoders_synthetic_check(decoders):
    """Every weight of a decoder is measured by default, which takes hours at 8B parameters:
    `sensitivity_seconds` bounds the synthetic check as it bounds a calibrated one (the largest
    weights first, the rest at the median: here none measured, so none weighed apart)."""
    _, model = decoders["stateless"]
    bounded = milcompress.report_of(milcompress.compress_to_size(model, 6.0, weight_threshold=0, sensitivity_seconds=1e-9)).summary
    assert bounded["synthetic"] and bounded["sensitivity_measured"] == 0 and {c["sensitivity"] for c in bounded["choices"]} == {1.0}
    ample = milcompress.report_of(milcompress.compress_to_size(model, 6.0, weight_threshold=0, sensitivity_seconds=600)).summary
    assert ample["synthetic"] and ample["sensitivity_measured"] == len(ample["choices"]) and ample["sensitivity_samples"] == 1
    from milcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="sensitivity_seconds needs calibration inputs, or a decoder"):
        milcompress.compress_to_size(_plain_model(), 8.0, weight_threshold=0, sensitivity_seconds=5)


def test_data_free_compress_to_size_runs_a_decoder_on_synthetic_token_ids(decoders, monkeypatch):
    """Without calibration, a decoder's weights are weighed by a run on random token ids (every
    weight's sensitivity measured; with calibration, on its first sequence);
    `synthetic_check=False` gives the plain data-free errors, and
    asking for the check on a model that is not a decoder is an error naming the option."""
    from milcompress.errors import ConfigError
    from milcompress.passes.size import SYNTHETIC_TOKENS

    candidates = [
        ("int8", LinearQuantizeConfig(dtype="int8", granularity="per_channel", weight_threshold=0)),
        ("palette 4-bit", PalettizeConfig(nbits=4, weight_threshold=0)),
    ]
    sensitivities, resumed = {}, []
    resume = Interpreter.resume
    monkeypatch.setattr(Interpreter, "resume", lambda self, *args: resumed.append(self.stateful) or resume(self, *args))
    for name, (_, model) in decoders.items():
        resumed.clear()
        checked = milcompress.report_of(milcompress.compress_to_size(model, 6.0, candidates=candidates, weight_threshold=0)).summary
        assert checked["synthetic"] and not checked["calibrated"], name
        # Every what-if run resumed from the snapshot of the dense run, the stateful one's too.
        assert resumed == [name == "stateful"] * len(checked["choices"]), name
        sensitivities[name] = {c["name"]: c["sensitivity"] for c in checked["choices"]}
        assert checked["sensitivity_measured"] == len(checked["choices"]) and checked["sensitivity_samples"] == 1
        assert len({c["sensitivity"] for c in checked["choices"]}) > 1  # measured, not the default 1 for all
        plain = milcompress.report_of(milcompress.compress_to_size(model, 6.0, candidates=candidates, weight_threshold=0, synthetic_check=False)).summary
        assert not plain["synthetic"] and plain["sensitivity_measured"] == 0 and {c["sensitivity"] for c in plain["choices"]} == {1.0}
        given = {"input_ids": np.random.default_rng(1).integers(0, 64, size=(3, 10))}
        calibrated = milcompress.report_of(milcompress.compress_to_size(model, 6.0, calibration=given, candidates=candidates, weight_threshold=0)).summary
        assert calibrated["calibrated"] and not calibrated["synthetic"]  # and sensitivity measured all the same, on one sequence:
        assert calibrated["sensitivity_measured"] == len(calibrated["choices"]) and calibrated["sensitivity_samples"] == 1
    # The stateful conversion's what-if runs take the sequence in one prefill call, as the stateless
    # one does: the same sensitivities, up to float rounding.
    stateful, stateless = sensitivities["stateful"], sensitivities["stateless"]
    assert sorted(stateful) == sorted(stateless)
    for const, value in stateless.items():
        assert stateful[const] == pytest.approx(value, rel=1e-3), const
    assert SYNTHETIC_TOKENS > CONFIG.max_context  # the check used the model's 16 positions, not more (else it would have failed)
    with pytest.raises(ConfigError, match="synthetic_check"):
        milcompress.compress_to_size(_plain_model(), 8.0, weight_threshold=0, synthetic_check=True)
    plain_model = milcompress.report_of(milcompress.compress_to_size(_plain_model(), 8.0, weight_threshold=0)).summary
    assert not plain_model["synthetic"]
