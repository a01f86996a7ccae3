"""The side-by-side benchmark: its ratios, and one small run of both libraries end to end."""

import json
import math

import pytest

from benchmarks import compare


def _run(seconds, peak_mb, size, snr):
    return {"seconds": seconds, "peak_mb": peak_mb, "size_bytes": size, "compressed_weights": sorted(snr), "weight_snr_db": snr}


def test_ratios_compare_the_weights_both_compressed():
    ours = _run(1.0, 20.0, 900, {"a": 30.0, "b": 20.5, "c": 12.0, "d": math.inf})
    theirs = _run(4.0, 40.0, 1000, {"a": 29.0, "b": 20.0, "d": math.inf, "e": 8.0})
    r = compare.ratios(ours, theirs)
    assert r["speedup"] == 4.0 and r["memory_ratio"] == 0.5 and r["size_ratio"] == 0.9
    # a and b are compressed by both with finite SNR; d is exact in both; c and e by one only.
    assert r["snr_gain_db_common"] == pytest.approx(0.75) and r["worst_snr_gain_db_common"] == pytest.approx(0.5)
    assert r["only_ours"] == ["c"] and r["only_theirs"] == ["e"]


def test_no_memory_ratio_when_theirs_did_not_grow():
    r = compare.ratios(_run(1.0, 3.0, 10, {}), _run(1.0, 0.0, 10, {}))
    assert r["memory_ratio"] is None and r["snr_gain_db_common"] is None


def test_both_libraries_side_by_side_on_the_digits_cnn(tmp_path):
    labels = ["int8 per channel", "palettize 2-bit per tensor", "prune 50%"]
    assert compare.main(["--quick", "--models", "digits_cnn", "--configs", *labels, "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "compare_quick_partial.json").read_text())
    table = (tmp_path / "compare_quick_partial.md").read_text()
    assert "## digits_cnn" in table and "speed-up" in table
    assert result["fp16_accuracy"]["test_accuracy"] > 0.95
    for label in labels:
        runs = result["configs"][label]
        assert label in table
        for library in ("milcompress", "coremltools"):
            run = runs[library]
            assert "error" not in run, run
            assert run["seconds"] > 0 and run["size_bytes"] < result["fp16_size_bytes"]
            assert set(run["program_accuracy"]) == set(result["metrics"])
        assert runs["ratios"]["speedup"] == pytest.approx(runs["coremltools"]["seconds"] / runs["milcompress"]["seconds"])
    int8 = result["configs"]["int8 per channel"]
    # The same form from both libraries: every weight, the same size, the same accuracy.
    assert len(int8["milcompress"]["compressed_weights"]) == result["weights"] == len(int8["coremltools"]["compressed_weights"])
    assert int8["ratios"]["size_ratio"] == pytest.approx(1.0, abs=0.01)
    assert int8["ratios"]["worst_snr_gain_db_common"] >= -0.05
    for library in ("milcompress", "coremltools"):
        assert abs(int8[library]["accuracy"]["test_accuracy"] - result["fp16_accuracy"]["test_accuracy"]) <= 0.01
