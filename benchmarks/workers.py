"""Every core: the same compressions of a random Llama-shaped decoder with one worker and with two.

For each config (int4 per block of 32, 4-bit palettes in groups of 16, and `compress_to_size(4.0)`
data-free), the model is compressed with `workers=1` and with `workers=2`, in alternating order
(1, 2, then 2, 1: whatever else the machine does then weighs on both alike), and the run reports:
- the wall time of the pass's per-weight stage (from its progress: the stage the executor runs,
  or for `compress_to_size` its evaluation, sensitivity and rewrite stages) and of the whole call (loading the
  program from the model and serialising the new one included), each the mean of the two runs;
- the ratio one worker / two workers;
- whether the two outputs' weights are byte-identical (the digest of the saved packages);
- for `compress_to_size`, its time split by stage (`report_of(model).summary["seconds"]`).

The decoder is converted once (`benchmarks/models/llama.py`) into a cached package under
`--work`. On the shared 2-core development machine the ratios are noisy: other people's jobs take
cores at random; the load average at the start and end is recorded.

    python benchmarks/workers.py                      # ~500M parameters (conversion takes minutes, ~5 GB)
    python benchmarks/workers.py --parameters 1.25e8  # quicker
    python benchmarks/workers.py --configs "compress_to_size 4.0" --workers 1   # one series (another checkout's code too)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import os
import resource
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


def configs() -> Dict[str, tuple]:
    from milcompress import LinearQuantizeConfig, PalettizeConfig

    return {
        "int4 per block 32": ("linear_quantize_weights", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32)),
        "palettize 4-bit groups of 16": ("palettize_weights", PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16)),
        "compress_to_size 4.0": ("compress_to_size", 4.0),
    }


class StageTimes:
    """A `milcompress.progress.Progress` that times each stage: wall seconds, and CPU seconds of
    this process (all the work where it runs in this process; on a shared machine, where other
    people's jobs take the cores, a measure they do not change)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self.cpu_seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name, total=None, unit="steps"):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield lambda item="", steps=1: None
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu


def _cpu() -> tuple:
    """CPU seconds of this process and of its finished children (pool workers, once stopped)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def decoder_package(parameters: float, work: Path) -> Path:
    """The random decoder of about `parameters` parameters as a package, converted once."""
    from benchmarks.models.llama import convert, llama_of_size, random_llama

    config = llama_of_size(parameters)
    path = work / f"random_llama_{config.parameters // 1_000_000}M.mlpackage"
    if not path.exists():
        print(f"converting a random decoder of {config.parameters / 1e6:.0f}M parameters ({config}) ...", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert(random_llama(config))
            staging = Path(tempfile.mkdtemp(dir=work))
            model.save(str(staging / path.name))
            (staging / path.name).rename(path)
            staging.rmdir()
    return path


def _digest(model, work: Path) -> str:
    from milcompress.packages import save_model

    with tempfile.TemporaryDirectory(dir=work) as scratch:
        path = Path(scratch) / "out.mlpackage"
        save_model(model, path)
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


PASS_STAGES = ("evaluation", "sensitivity", "rewrite", "linear_quantize_weights", "palettize_weights")


def run_once(package: Path, label: str, workers: Optional[int], work: Path) -> dict:
    import coremltools as ct

    import milcompress

    function_name, argument = configs()[label]
    function = getattr(milcompress, function_name)
    options = {}
    if workers is not None:
        if "workers" not in inspect.signature(function).parameters:
            raise SystemExit(f"this checkout's {function_name} takes no workers=: leave out --workers")
        options["workers"] = workers
    model = ct.models.MLModel(str(package), skip_model_load=True)
    times = StageTimes()
    start, (own, children) = time.perf_counter(), _cpu()
    compressed = function(model, argument, progress=times, **options)
    total = time.perf_counter() - start
    own_after, children_after = _cpu()
    report = milcompress.report_of(compressed)
    summary = getattr(report, "summary", None) or {}
    return {
        "config": label,
        "workers": workers,
        "total_seconds": total,
        "pass_seconds": sum(t for stage, t in times.seconds.items() if stage in PASS_STAGES),
        "stage_seconds": times.seconds,
        "stage_cpu_seconds": times.cpu_seconds,
        "cpu_seconds_here": own_after - own,
        "cpu_seconds_workers": children_after - children,
        "size_stage_seconds": summary.get("seconds"),
        "digest": _digest(compressed, work),
    }


def _load_average() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def report(results: List[dict], meta: dict) -> str:
    from milcompress.table import format_table

    lines = [f"Produced by `{meta['command']}` on {meta['machine']}.", "",
             f"Decoder: {meta['model']}. Load average before {meta['load_before']}, after {meta['load_after']}.", ""]
    rows, cpu_rows, by_config = [], [], {}
    for result in results:
        by_config.setdefault(result["config"], {}).setdefault(result["workers"], []).append(result)

    def mean(runs, key):
        return sum(r[key] for r in runs) / len(runs)

    for label, runs in by_config.items():
        digests = {r["digest"] for rs in runs.values() for r in rs}
        one, two = runs.get(1), runs.get(2)
        cells = []
        for key in ("pass_seconds", "total_seconds"):
            cells += [f"{mean(runs[w], key):.1f}" if w in runs else "-" for w in (1, 2)]
            cells.append(f"{mean(one, key) / mean(two, key):.2f}x" if one and two else "-")
        rows.append([label, *cells, "yes" if len(digests) == 1 else "NO"])
        if one and two:
            serial = mean(one, "cpu_seconds_here") + mean(one, "cpu_seconds_workers")
            here, workers = mean(two, "cpu_seconds_here"), mean(two, "cpu_seconds_workers")
            during = sum(sum(r["stage_cpu_seconds"].get(stage, 0.0) for stage in PASS_STAGES) for r in two) / len(two)
            best = (here - during) + max(during, workers / 2)  # the rest stays serial; the pass's work splits over two cores
            cpu_rows.append([label, f"{serial:.1f}", f"{here:.1f}", f"{workers:.1f}", f"{serial / best:.2f}x"])
    lines += ["```", format_table(["config", "pass s, 1 worker", "pass s, 2 workers", "pass ratio", "total s, 1", "total s, 2", "total ratio", "same bytes"],
                                  rows, [False] + [True] * 7), "```", ""]
    if cpu_rows:
        lines += ["CPU seconds of the whole call (what other people's jobs on the machine do not change): with one worker, all in "
                  "this process; with two, this process and the two workers. The last column is the ratio a quiet two-core machine "
                  "would give at best: one worker's CPU over this process's CPU outside the pass's stages (loading, writing: serial) "
                  "plus the larger of its CPU in them and half the workers'.", "", "```",
                  format_table(["config", "CPU s, 1 worker", "CPU s here, 2 workers", "CPU s in workers, 2 workers", "best-case ratio"],
                               cpu_rows, [False] + [True] * 4), "```", ""]
    sized = [r for r in results if r["size_stage_seconds"]]
    if sized:
        stages = list(sized[0]["size_stage_seconds"])
        lines += ["compress_to_size(4.0) data-free, seconds by stage:", "", "```",
                  format_table(["workers", "run", *stages, "total"],
                               [[str(r["workers"]), str(i), *(f"{r['size_stage_seconds'][s]:.1f}" for s in stages), f"{r['total_seconds']:.1f}"]
                                for i, r in enumerate(sized)], [True, True] + [True] * (len(stages) + 1)), "```", ""]
    lines += ["pass s: the pass's per-weight stages (for compress_to_size: evaluation, sensitivity and rewrite); total s: the whole call, "
              "loading the program and serialising the new model included. Each the mean of the runs (alternating order)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=float, default=5e8, help="size of the random decoder (default 500M)")
    parser.add_argument("--configs", nargs="*", help="config labels (default: all)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts to compare (default 1 2); none: the checkout's default")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each worker count, in alternating order")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "milcompress-workers-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="workers", help="results file name (default workers: workers.md, workers.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    warnings.simplefilter("ignore")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    args.work.mkdir(parents=True, exist_ok=True)
    package = decoder_package(args.parameters, args.work)
    from benchmarks.models.llama import llama_of_size

    config = llama_of_size(args.parameters)
    labels = args.configs or list(configs())
    counts = args.workers or [None]
    meta = {"command": "python benchmarks/workers.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{os.cpu_count()} cores", "model": f"{config.parameters / 1e6:.0f}M parameters, {config}",
            "load_before": _load_average()}
    results = []
    for label in labels:
        for repeat in range(args.repeats):
            for workers in counts if repeat % 2 == 0 else list(reversed(counts)):
                result = run_once(package, label, workers, args.work)
                results.append(result)
                print(f"{label:30s} workers={workers}  pass {result['pass_seconds']:.1f} s  total {result['total_seconds']:.1f} s  "
                      f"cpu here {result['cpu_seconds_here']:.1f} s, workers {result['cpu_seconds_workers']:.1f} s  "
                      f"{result['size_stage_seconds'] or ''}", flush=True)
    meta["load_after"] = _load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    text = report(results, meta)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
