"""The workers benchmark's table: ratios of one worker to two, the bytes check, the CPU bound."""

from benchmarks.workers import report


def _run(config, workers, wall, cpu_here, cpu_workers, during, digest="same"):
    return {"config": config, "workers": workers, "pass_seconds": wall, "total_seconds": wall + 10.0,
            "stage_cpu_seconds": {"linear_quantize_weights": during}, "cpu_seconds_here": cpu_here,
            "cpu_seconds_workers": cpu_workers, "size_stage_seconds": None, "digest": digest}


def test_the_table_gives_ratios_the_bytes_check_and_the_best_case_bound():
    meta = {"command": "python benchmarks/workers.py", "machine": "2 cores", "model": "tiny", "load_before": [1.0], "load_after": [1.0]}
    results = [_run("int4", 1, 40.0, 44.0, 0.0, 0.0), _run("int4", 2, 20.0, 6.0, 40.0, 1.0),
               _run("pal", 1, 30.0, 30.0, 0.0, 0.0), _run("pal", 2, 30.0, 30.0, 2.0, 25.0, digest="other")]
    text = report(results, meta)
    int4 = next(line for line in text.splitlines() if line.startswith("int4 ") and "yes" in line).split()
    assert int4[1:4] == ["40.0", "20.0", "2.00x"] and int4[4:7] == ["50.0", "30.0", "1.67x"]
    assert any(line.startswith("pal ") and line.rstrip().endswith("NO") for line in text.splitlines())
    # 44 s of CPU alone; with two workers 5 s stay serial here, and the pass's 40 s split over two cores: 44 / 25.
    bound = next(line for line in text.splitlines() if line.startswith("int4 ") and "yes" not in line).split()
    assert bound[1:] == ["44.0", "6.0", "40.0", "1.76x"]
