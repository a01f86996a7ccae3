"""Accuracy against size: milcompress's compress_to_size next to every single config of both libraries.

For each model the float32 torch module is converted once to an iOS18 ML program (float16
weights). Then:
- every uniform config (one config for every weight, as coremltools offers: int8 per channel, int4
  per block of 32, k-means palettes of 2/3/4/6/8 bits per tensor and of 2/4/6 bits per group of
  16) is applied by coremltools and by milcompress, through the same drop-in calls and config
  objects as in compare.py;
- milcompress's `compress_to_size` is run at each target bits per weight, data-free, with
  calibration inputs the evaluation never sees (activation-weighted errors and k-means, bias
  correction), with those plus 30 s of end-to-end sensitivity measurement, and with those plus
  error feedback (GPTQ, `error_feedback=True`).
Each result is scored by the model's own metric on its package's program, run by the reference
executor with float16 activations, and placed by its bits per weight: the stored bytes of every
weight (compressed or not) over their count, from the package itself.

It reports, per model, one table of every point, and whether each single config of either library
is matched or beaten by our point of the same or smaller size; and draws the curves
(benchmarks/results/size_sweep[_quick]_<model>.png).

Calibration inputs come from each model's `calibration()`: photos or passages the evaluation does
not use. A model's first metric decides "at or above"; the others are in the table.

    python benchmarks/size_sweep.py --quick   # MobileNetV2, 33 crops, fewer configs and targets
    python benchmarks/size_sweep.py           # MobileNetV2 (198 crops) and all-MiniLM-L6-v2
    python benchmarks/size_sweep.py --models minilm   # one model: size_sweep_minilm_tables.{md,json}
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"mobilenet_v2": "benchmarks.models.mobilenet_v2", "minilm": "benchmarks.models.minilm"}
QUICK_MODELS = ["mobilenet_v2"]
TARGETS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0)
QUICK_TARGETS = (3.0, 4.0, 4.5, 6.0)
SENSITIVITY_SECONDS = 30.0  # the third series' time to measure each weight's end-to-end sensitivity


def uniform_configs(quick: bool) -> Dict[str, list]:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OpPalettizerConfig

    configs = {
        "int8 per channel": [("linear_quantize_weights", OpLinearQuantizerConfig(dtype="int8", granularity="per_channel"), {})],
        "int4 per block 32": [("linear_quantize_weights", OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=32), {})],
    }
    for nbits in (2, 3, 4, 6) if quick else (2, 3, 4, 6, 8):
        configs[f"palettize {nbits}-bit per tensor"] = [("palettize_weights", OpPalettizerConfig(mode="kmeans", nbits=nbits), {})]
    for nbits in (2, 4) if quick else (2, 4, 6):
        config = OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_grouped_channel", group_size=16)
        configs[f"palettize {nbits}-bit groups of 16"] = [("palettize_weights", config, {})]
    return configs


def bits_per_weight(mlmodel) -> float:
    """Stored bits per weight over every weight (float, two or more dimensions), compressed or not."""
    import milcompress

    metadata = milcompress.get_weights_metadata(mlmodel, weight_threshold=0)
    weights = [m for m in metadata.values() if m.val.ndim >= 2 and m.val.dtype.kind == "f"]
    elements = sum(m.val.size for m in weights)
    return sum(m.bits_per_weight * m.val.size for m in weights) / elements


def sweep_model(name: str, quick: bool) -> dict:
    import coremltools as ct

    import milcompress
    from benchmarks.compare import _compress, _convert, program_accuracy

    bench = importlib.import_module(MODELS[name]).load(quick=quick)
    calibration = bench.calibration()
    points: List[dict] = []
    with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as work:
        path = Path(work) / "dense.mlpackage"
        _convert(bench, path)
        dense = ct.models.MLModel(str(path), skip_model_load=True)
        points.append({"series": "float16", "label": "dense", "bits_per_weight": bits_per_weight(dense), "metrics": program_accuracy(bench, dense)})
        for label, steps in uniform_configs(quick).items():
            for library in ("coremltools", "milcompress"):
                start = time.perf_counter()
                try:
                    model = _compress(library, dense, steps)
                except Exception as error:  # a library that refuses a config is a result too
                    print(f"  {library:11s}  {label}: error {error}", flush=True)
                    continue
                point = {"series": f"{library}, one config", "label": label, "seconds": time.perf_counter() - start,
                         "bits_per_weight": bits_per_weight(model), "metrics": program_accuracy(bench, model)}
                points.append(point)
                print(f"  {library:11s}  {label:28s} {point['bits_per_weight']:.2f} bpw  {point['metrics']}", flush=True)
        for target in QUICK_TARGETS if quick else TARGETS:
            for series, options in (
                ("milcompress compress_to_size", {}),
                ("milcompress compress_to_size, calibrated", {"calibration": calibration}),
                ("milcompress compress_to_size, calibrated, sensitivity 30 s", {"calibration": calibration, "sensitivity_seconds": SENSITIVITY_SECONDS}),
                ("milcompress compress_to_size, calibrated, sensitivity 30 s, error feedback",
                 {"calibration": calibration, "sensitivity_seconds": SENSITIVITY_SECONDS, "error_feedback": True}),
            ):
                start = time.perf_counter()
                model = milcompress.compress_to_size(dense, target, **options)
                point = {"series": series, "label": f"target {target:g}", "target": target, "seconds": time.perf_counter() - start,
                         "bits_per_weight": bits_per_weight(model), "metrics": program_accuracy(bench, model)}
                points.append(point)
                print(f"  {series:42s} {target:4.1f} -> {point['bits_per_weight']:.2f} bpw  {point['seconds']:.0f} s  {point['metrics']}", flush=True)
    return {"model": name, "metrics": list(bench.metrics), "higher_is_better": dict(bench.higher_is_better), "points": points}


def beats_uniform(result: dict) -> List[dict]:
    """Per single config of either library and series of ours: our point of the largest size that
    is not above the config's, and whether ours is at or above the config there (first metric).

    So a "yes" means our curve matches or beats the config with the same or fewer bytes. Configs
    outside the sweep are left out: smaller than our smallest point, or more than a bit per weight
    above the largest target (coremltools' grouped palettes with its 4-byte tables, float16)."""
    metric = result["metrics"][0]
    sign = 1 if result["higher_is_better"][metric] else -1
    ours = [p for p in result["points"] if "target" in p]
    top = max((p["target"] for p in ours), default=0.0)
    uniform = sorted((p for p in result["points"] if p["series"].endswith("one config") and p["bits_per_weight"] <= top + 1),
                     key=lambda p: (p["bits_per_weight"], p["series"]))
    rows = []
    for series in sorted({p["series"] for p in ours}):
        points = [p for p in ours if p["series"] == series]
        for config in uniform:
            fitting = [p for p in points if p["bits_per_weight"] <= config["bits_per_weight"] + 1e-9]
            if not fitting:
                continue
            point = max(fitting, key=lambda p: p["bits_per_weight"])
            rows.append({
                "series": series, "config": f"{config['series'].split(',')[0]} {config['label']}",
                "config_bits": config["bits_per_weight"], "config_value": config["metrics"][metric],
                "target": point["target"], "bits": point["bits_per_weight"], "ours": point["metrics"][metric],
                "at_or_above": sign * point["metrics"][metric] >= sign * config["metrics"][metric],
            })
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    metric = result["metrics"][0]
    figure, axes = pyplot.subplots(figsize=(7, 5.5))
    styles = {
        "coremltools, one config": dict(marker="s", linestyle="none", color="tab:gray"),
        "milcompress, one config": dict(marker="o", linestyle="none", color="tab:blue", fillstyle="none"),
        "milcompress compress_to_size": dict(marker="o", linestyle="-", color="tab:blue"),
        "milcompress compress_to_size, calibrated": dict(marker="^", linestyle="-", color="tab:green"),
        "milcompress compress_to_size, calibrated, sensitivity 30 s": dict(marker="v", linestyle="-", color="tab:red"),
        "milcompress compress_to_size, calibrated, sensitivity 30 s, error feedback": dict(marker="D", linestyle="--", color="tab:purple"),
    }
    for series, style in styles.items():
        points = sorted((p for p in result["points"] if p["series"] == series), key=lambda p: p["bits_per_weight"])
        if points:
            axes.plot([p["bits_per_weight"] for p in points], [p["metrics"][metric] for p in points], label=series, **style)
    axes.set_xlabel("stored bits per weight (all weights)")
    axes.set_ylabel(f"{metric} (package run by the reference executor)")
    axes.set_title(f"{result['model']}: accuracy against size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: no point hidden
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def report(results: List[dict], command: str, suffix: str) -> str:
    from milcompress.tools.table import format_table

    lines = [f"Produced by `{command}`.", ""]
    for result in results:
        metrics = result["metrics"]
        lines += [f"## {result['model']}", "", f"![accuracy against size](size_sweep{suffix}_{result['model']}.png)", "", "```"]
        rows = [[p["series"], p["label"], f"{p['bits_per_weight']:.3f}", "-" if "seconds" not in p else f"{p['seconds']:.1f}"]
                + [f"{p['metrics'][m]:.4f}" for m in metrics]
                for p in sorted(result["points"], key=lambda p: (p["series"], p["bits_per_weight"]))]
        lines.append(format_table(["series", "config", "bits/weight", "seconds"] + metrics, rows, [False, False, True, True] + [True] * len(metrics)))
        lines += ["```", "", f"Each single config of either library against our point of the same or smaller size ({metrics[0]}):", "", "```"]
        rows = [[r["config"], f"{r['config_bits']:.3f}", f"{r['config_value']:.4f}", r["series"], f"{r['target']:g}", f"{r['bits']:.3f}",
                 f"{r['ours']:.4f}", "yes" if r["at_or_above"] else "NO"]
                for r in beats_uniform(result)]
        lines.append(format_table(["single config", "bits/weight", metrics[0], "ours", "target", "bits/weight", metrics[0], "at or above"], rows,
                                  [False, True, True, False, True, True, True, False]))
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, fewer targets and configs")
    parser.add_argument("--models", nargs="*", choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import milcompress._coremltools  # noqa: F401  (imports coremltools without its notices)

    names = args.models or (QUICK_MODELS if args.quick else list(MODELS))
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        results.append(sweep_model(name, args.quick))
    suffix = "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    for result in results:
        plot(result, args.out / f"size_sweep{suffix}_{result['model']}.png")
    text = report(results, "python benchmarks/size_sweep.py" + " ".join([""] + argv), suffix)
    # A run of some models writes its own tables, so it never overwrites another run's.
    stem = f"size_sweep{suffix}" + ("".join(f"_{name}" for name in names) + "_tables" if args.models else "")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
