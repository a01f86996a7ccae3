"""The decoder benchmark: which configs each library runs, the README section generated from the
results (and replaced, never duplicated), and one small run end to end on a tiny random stateful
decoder (conversion and both libraries in their own processes)."""

import json

import pytest

from benchmarks import decoder


def test_compress_to_size_and_calibration_are_ours_alone_and_on_smollm2_only():
    plan = decoder.plan_of("smollm2", "stateless", quick=False)
    assert len(plan) == len(set(plan))
    assert sorted(label for library, label in plan if library == "coremltools") == sorted(decoder.UNIFORM)
    ours = [label for library, label in plan if library == "milcompress"]
    assert sorted(ours) == sorted(decoder.all_labels())
    assert plan[-1] == ("coremltools", "palettize 4-bit groups of 16")  # hours of scikit-learn: last
    random = decoder.plan_of("random_llama", "stateful", quick=False)
    assert not any("calibrated" in label for _, label in random)
    assert ("milcompress", "palettize 4-bit groups of 16") in random and ("coremltools", "palettize 4-bit groups of 16") not in random
    stateful = decoder.plan_of("smollm2", "stateful", quick=False)  # every config: same weights, verified alike
    assert stateful == plan
    assert decoder.plan_of("smollm2", "stateful", quick=True) == decoder.plan_of("smollm2", "stateless", quick=True)
    assert ("milcompress", "compress_to_size 4 calibrated") in decoder.plan_of("smollm2", "stateful", quick=True)
    assert decoder.plan_of("smollm2", "stateless", quick=True, only=["compress_to_size 4"]) == [("milcompress", "compress_to_size 4")]
    match = decoder.SIZE_LABEL.match("compress_to_size 4.5 calibrated")
    assert float(match["target"]) == 4.5 and match["calibrated"]
    with pytest.raises(ValueError, match="milcompress's alone"):
        decoder.compress("coremltools", None, "compress_to_size 4")
    with pytest.raises(ValueError, match="milcompress's alone"):
        decoder.compress("coremltools", None, "int4 per block 64, float offset")
    assert ("milcompress", "int4 per block 64, float offset") in plan and ("milcompress", "int4 per block 64, float offset") not in random


def _smollm2_result(variant):
    metrics = {"perplexity": 41.0, "top1_agreement": 1.0}
    run = {"seconds": 2.0, "peak_mb": 300.0, "size_bytes": 70_000_000, "ratio_to_fp16": 3.9, "bits_per_weight": 4.1,
           "weights_metrics": {"perplexity": 1234.5, "top1_agreement": 0.25}, "program_metrics": None}
    if variant == "stateful":
        run["same_weights_as_stateless"] = True
    return {
        "model": "smollm2", "variant": variant, "fp16_size_bytes": 270_000_000, "fp16_bits_per_weight": 16.0,
        "conversion": {"seconds": 30.0, "peak_mb": 2000.0, "process_peak_mb": 2500.0, "parameters": 134_515_008},
        "embedding_consts": ["model_embed_tokens_weight_to_fp16"], "fp16_weights_metrics": metrics,
        "fp16_program_metrics": metrics if variant == "stateless" else None, "float32_metrics": metrics,
        "program_error": None if variant == "stateless" else "UnsupportedOpError: read_state",
        "configs": {"palettize 4-bit per tensor": {"milcompress": run, "coremltools": {"error": "ValueError: no"}}},
    }


def test_every_smollm2_table_says_how_its_weights_were_stored(tmp_path):
    results = [_smollm2_result("stateless"), _smollm2_result("stateful")]
    text = decoder.report(results, "python benchmarks/decoder.py")
    assert text.count(decoder.SMOLLM2_NOTE) == 2
    assert "1,234.5" in text and "0.250" in text and "error (1)" in text and "(1) palettize 4-bit per tensor, coremltools: ValueError: no" in text
    assert "palettize 4-bit per tensor =" in text  # the stateful weights equal the stateless ones
    assert "UnsupportedOpError: read_state" in text


def test_readme_section_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n")
    results = [_smollm2_result("stateless")]
    decoder.update_readme(results, "python benchmarks/decoder.py", readme)
    first = readme.read_text()
    assert first.startswith("# title\n\nintro\n\n## Decoder LLMs\n") and first.count(decoder.README_START) == 1
    results[0]["configs"]["palettize 4-bit per tensor"]["milcompress"]["weights_metrics"]["perplexity"] = 99.0
    readme.write_text(first + "\n## After\n")
    decoder.update_readme(results, "python benchmarks/decoder.py", readme)
    second = readme.read_text()
    assert second.count(decoder.README_START) == 1 and second.count("## Decoder LLMs") == 1
    assert "99.0" in second and "1,234.5" not in second and second.endswith("\n## After\n")


def test_a_tiny_random_decoder_through_both_libraries(tmp_path):
    labels = ["int8 per channel", "compress_to_size 4"]
    argv = ["--models", "random_llama", "--random-parameters", "3e6", "--random-vocabulary", "512", "--configs", *labels, "--out", str(tmp_path)]
    assert decoder.main(argv) == 0
    stored = json.loads((tmp_path / "decoder_partial_random_llama.json").read_text())
    (result,) = stored["results"]
    assert result["variant"] == "stateful" and result["conversion"]["parameters"] < 4e6
    assert result["embedding_consts"] == ["model_embed_tokens_weight_to_fp16"]  # tied: one const
    int8 = result["configs"]["int8 per channel"]
    for library in ("milcompress", "coremltools"):
        assert "error" not in int8[library], int8[library]
        assert int8[library]["seconds"] > 0 and 1.5 < int8[library]["ratio_to_fp16"]
    ours = result["configs"]["compress_to_size 4"]
    # Bits per weight over every 2-D float const, the dense rotary tables (32k values) included.
    assert set(ours) == {"milcompress"} and 3.5 < ours["milcompress"]["bits_per_weight"] < 4.25
    assert "compress_to_size 4" in (tmp_path / "decoder_partial_random_llama.md").read_text()


def test_stateful_weights_are_compared_with_a_stateless_run_by_digest():
    stateless, stateful = _smollm2_result("stateless"), _smollm2_result("stateful")
    run = stateful["configs"]["palettize 4-bit per tensor"]["milcompress"]
    del run["same_weights_as_stateless"]
    stateless["configs"]["palettize 4-bit per tensor"]["milcompress"]["weights_digest"] = "abc"
    run["weights_digest"] = "abd"
    decoder._compare_to_stateless([stateless, stateful])
    assert run["same_weights_as_stateless"] is False
    assert "palettize 4-bit per tensor !=" in decoder.table(stateful)
    digest = decoder._digest({"w": (decoder.np.ones((2, 3), dtype="float16"), None)})
    assert digest == decoder._digest({"w": (decoder.np.ones((2, 3), dtype="float16"), "LUT")})
    assert digest != decoder._digest({"w": (decoder.np.ones((3, 2), dtype="float16"), None)})


def test_each_package_is_verified_through_the_api_and_the_cli_and_stateful_equals_stateless(tmp_path):
    import warnings

    import milcompress
    from benchmarks.models.llama import LlamaConfig, convert, random_llama
    from milcompress.config import LinearQuantizeConfig

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_context=16)
    ids_path = tmp_path / decoder.VERIFY_FILE
    decoder.np.savez(ids_path, input_ids=decoder.np.array([[5, 17, 3, 42, 8, 60]], dtype="int32"))
    found = {}
    for variant in ("stateful", "stateless"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense = convert(random_llama(config, stateful=variant == "stateful", seed=3))
        small = milcompress.linear_quantize_weights(dense, LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=8, weight_threshold=0))
        dense.save(str(tmp_path / f"{variant}.mlpackage"))
        small.save(str(tmp_path / f"{variant}-int4.mlpackage"))
        # One real CLI process (the stateful one); the stateless package through the API only.
        found[variant] = decoder.verify_package(tmp_path / f"{variant}.mlpackage", tmp_path / f"{variant}-int4.mlpackage", ids_path,
                                                cli=variant == "stateful")
    stateful, stateless = found["stateful"], found["stateless"]
    assert stateful["cli_exit"] == 0 and stateful["cli_same"] is True, stateful
    assert "cli_exit" not in stateless
    steps = stateful["api"]["steps"]
    assert [s["step"] for s in steps] == list(range(decoder.VERIFY_STEPS + 1)) and steps[0]["positions"] == 6
    assert all(0.9 < s["cosine"] < 1 for s in steps) and stateful["api"]["perplexity"][0] != stateful["api"]["perplexity"][1]
    assert decoder.same_verify(stateful["api"], stateless["api"])
    moved = json.loads(json.dumps(stateless["api"]))
    moved["steps"][1]["kl"] *= 1.01
    assert not decoder.same_verify(stateful["api"], moved)

    result = _smollm2_result("stateful")
    run = result["configs"]["palettize 4-bit per tensor"]["milcompress"]
    run["verify"] = stateful
    other = _smollm2_result("stateless")
    other["configs"]["palettize 4-bit per tensor"]["milcompress"]["verify"] = stateless
    decoder._compare_to_stateless([other, result])
    assert run["same_verify_as_stateless"] is True
    text = decoder.report([other, result], "python benchmarks/decoder.py")
    assert "Verified on Linux" in text and "CLI = API" in text
    row = next(line for line in decoder.verify_table(result).splitlines() if line.startswith("palettize 4-bit per tensor ="))
    assert row.split()[-2:] == ["0", "yes"]
