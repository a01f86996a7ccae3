"""The size sweep's verdict: ours against the best single config that is no larger."""

from benchmarks.size_sweep import beats_uniform


def _point(series, label, bits, value, target=None):
    point = {"series": series, "label": label, "bits_per_weight": bits, "metrics": {"top1_agreement": value}}
    if target is not None:
        point["target"] = target
    return point


def test_ours_is_compared_with_the_best_single_config_that_fits():
    result = {
        "metrics": ["top1_agreement"],
        "higher_is_better": {"top1_agreement": True},
        "points": [
            _point("coremltools, one config", "int4 per block 32", 4.6, 0.67),
            _point("coremltools, one config", "palettize 4-bit per tensor", 4.0, 0.18),
            _point("milcompress, one config", "palettize 4-bit per tensor", 4.0, 0.36),
            _point("coremltools, one config", "int8 per channel", 8.1, 1.0),
            _point("milcompress compress_to_size", "target 4.5", 4.5, 0.85, target=4.5),
            _point("milcompress compress_to_size", "target 4", 4.0, 0.30, target=4.0),
        ],
    }
    by_target = {row["target"]: row for row in beats_uniform(result)}
    # At 4.5 bpw, int4 (4.6) and int8 do not fit; the best that fits is our own 4-bit palette.
    assert by_target[4.5]["best_uniform"] == "milcompress palettize 4-bit per tensor"
    assert by_target[4.5]["at_or_above"]
    assert by_target[4.0]["best_uniform_value"] == 0.36 and not by_target[4.0]["at_or_above"]


def test_lower_is_better_metrics_flip_the_comparison():
    result = {
        "metrics": ["kl_divergence"],
        "higher_is_better": {"kl_divergence": False},
        "points": [
            {"series": "coremltools, one config", "label": "a", "bits_per_weight": 3.0, "metrics": {"kl_divergence": 0.5}},
            {"series": "milcompress compress_to_size", "label": "t", "target": 3.0, "bits_per_weight": 3.0, "metrics": {"kl_divergence": 0.4}},
        ],
    }
    (row,) = beats_uniform(result)
    assert row["at_or_above"] and row["best_uniform_value"] == 0.5
