"""The size sweep's verdict: every single config against our point of the same or smaller size."""

from benchmarks.size_sweep import beats_uniform


def _point(series, label, bits, value, target=None, metric="top1_agreement"):
    point = {"series": series, "label": label, "bits_per_weight": bits, "metrics": {metric: value}}
    if target is not None:
        point["target"] = target
    return point


def test_each_single_config_meets_our_largest_point_not_above_its_size():
    result = {
        "metrics": ["top1_agreement"],
        "higher_is_better": {"top1_agreement": True},
        "points": [
            _point("coremltools, one config", "palettize 2-bit per tensor", 2.0, 0.01),  # below our smallest point
            _point("coremltools, one config", "palettize 4-bit per tensor", 4.04, 0.18),
            _point("milcompress, one config", "palettize 4-bit groups of 16", 4.12, 0.90),
            _point("coremltools, one config", "int4 per block 32", 4.77, 0.67),
            _point("coremltools, one config", "int8 per channel", 8.1, 0.95),
            _point("coremltools, one config", "palettize 6-bit groups of 16", 10.0, 0.99),  # beyond the sweep
            _point("milcompress compress_to_size", "target 4", 3.99, 0.70, target=4.0),
            _point("milcompress compress_to_size", "target 4.5", 4.49, 0.85, target=4.5),
            _point("milcompress compress_to_size", "target 8", 7.98, 0.96, target=8.0),
        ],
    }
    rows = {row["config"]: row for row in beats_uniform(result)}
    assert set(rows) == {"coremltools palettize 4-bit per tensor", "milcompress palettize 4-bit groups of 16",
                         "coremltools int4 per block 32", "coremltools int8 per channel"}
    # A config is met by our point of the largest size not above its own: 4.12 by target 4 (3.99).
    assert rows["milcompress palettize 4-bit groups of 16"]["target"] == 4.0
    assert not rows["milcompress palettize 4-bit groups of 16"]["at_or_above"]
    assert rows["coremltools int4 per block 32"]["target"] == 4.5 and rows["coremltools int4 per block 32"]["at_or_above"]
    assert rows["coremltools int8 per channel"]["target"] == 8.0 and rows["coremltools int8 per channel"]["at_or_above"]


def test_lower_is_better_metrics_flip_the_comparison():
    result = {
        "metrics": ["kl_divergence"],
        "higher_is_better": {"kl_divergence": False},
        "points": [
            _point("coremltools, one config", "a", 3.0, 0.5, metric="kl_divergence"),
            _point("milcompress compress_to_size", "t", 3.0, 0.4, target=3.0, metric="kl_divergence"),
        ],
    }
    (row,) = beats_uniform(result)
    assert row["at_or_above"] and row["config_value"] == 0.5
