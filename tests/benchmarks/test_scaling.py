"""The scaling benchmark: slopes of time against size, lower bounds for stopped runs, the time cap."""

import math

from benchmarks import memory, scaling


def _results(runs_by_size):
    return {"machine": "test", "sizes": {
        size: {"parameters": parameters, "runs": [{"library": library, "config": config, "seconds": seconds, "status": status}
                                                 for library, config, seconds, status in runs]}
        for size, (parameters, runs) in runs_by_size.items()}}


def test_slopes_and_ratios_count_finished_runs_and_mark_stopped_ones_as_lower_bounds():
    int4, grouped = scaling.CONFIGS
    results = _results({
        "125M": (125_000_000, [("milcompress", int4, 10.0, "ok"), ("coremltools", int4, 40.0, "ok"),
                               ("milcompress", grouped, 30.0, "ok"), ("coremltools", grouped, 600.0, "ok")]),
        "500M": (500_000_000, [("milcompress", int4, 40.0, "ok"), ("coremltools", int4, 160.0, "ok"),
                               ("milcompress", grouped, 120.0, "ok"), ("coremltools", grouped, 900.0, "stopped at the 900 s time cap")]),
        "1B": (1_000_000_000, [("milcompress", int4, 80.0, "ok"), ("milcompress", grouped, 240.0, "ok")]),
    })
    points = scaling.series(results)
    assert math.isclose(scaling.slope(points[("milcompress", int4)]), 1.0)
    assert scaling.slope(points[("coremltools", grouped)]) is None  # one finished size only
    text = scaling.table(results)
    coremltools_grouped = next(line for line in text.splitlines() if "groups" in line and "coremltools" in line)
    assert ">900" in coremltools_grouped and "20.0x, >7.5x" in coremltools_grouped
    assert "4.0x, 4.0x" in next(line for line in text.splitlines() if "int4" in line and "coremltools" in line)
    assert len(text.splitlines()) == 2 + 4  # headers, rule, one row per library and config


def test_a_run_past_the_time_cap_is_stopped_and_leaves_no_output(tmp_path):
    from benchmarks.models.llama import LlamaConfig
    from benchmarks.models.llama_package import write_llama_package

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=1, num_heads=2, num_kv_heads=1)
    package = write_llama_package(config, tmp_path / "tiny.mlpackage")
    record = memory.measure("milcompress", "int4 per block 32", package, tmp_path / "out.mlpackage", time_cap_s=0.5)
    assert record["status"] == "stopped at the 0.5 s time cap"
    assert not (tmp_path / "out.mlpackage").exists()
