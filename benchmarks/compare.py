"""milcompress next to coremltools.optimize.coreml on real models: one run, same models, same configs.

For each model the float32 torch module is converted once to an iOS18 ML program (float16
weights), saved, and compressed by each library with the same coremltools config objects, through
each library's Python call on the model (`palettize_weights(model, config)` and so on). Per config
and library it reports:

- seconds: wall time of the compression call (load of the program, the pass, serialisation);
- peak MB: how far the process's resident memory rose above where it stood before the call (each
  library first runs its k-means once on a small weight, `warm_up`: imports and compiled kernels
  are a process's cost, not a call's);
- size: the saved package, and its ratio to the float16 package;
- weight SNR: mean and min over the weights the library compressed (a dense weight is exact);
- accuracy: the model's own metric, from the torch module with the weights decompressed from the
  saved package (our read-back of the constexpr ops; the same reader for both libraries);
- program accuracy: the first metric again, from the saved compressed program itself, run by
  milcompress's reference executor with float16 activations (as Core ML's GPU / Neural Engine).

Then one line per config of ratios, ours over coremltools': speed-up, memory, size, the mean SNR
difference over the weights both compressed, and the weights only one of them compressed.

    python benchmarks/compare.py --quick    # digits CNN and MobileNetV2, a few minutes
    python benchmarks/compare.py            # every model (coremltools' k-means takes most of an hour)

Each library runs in its own subprocess (one per model), so neither's memory or caches affect the
other's. Results go to benchmarks/results/compare[_quick].{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIBRARIES = ("milcompress", "coremltools")

# Model name -> (module, load arguments). Quick mode runs the first two.
MODELS = {
    "digits_cnn": ("benchmarks.models.digits_cnn", {}),
    "mobilenet_v2": ("benchmarks.models.mobilenet_v2", {}),
    "minilm": ("benchmarks.models.minilm", {}),
    "resnet50_normal": ("benchmarks.models.resnet50", {"init": "normal"}),
    "resnet50_student_t": ("benchmarks.models.resnet50", {"init": "student_t"}),
}
QUICK_MODELS = ["digits_cnn", "mobilenet_v2"]


def configs() -> Dict[str, list]:
    """Config label -> the steps, each (function name, coremltools op config, keyword arguments).

    Both libraries get these very objects, in the same calls. The joint config is two calls: prune,
    then palettize the non-zeros (joint_compression=True).
    """
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OpMagnitudePrunerConfig,
        OpPalettizerConfig,
    )

    steps = {
        "int8 per channel": [("linear_quantize_weights", OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel"), {})],
        "int4 per block 32": [
            ("linear_quantize_weights", OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32), {})
        ],
    }
    for nbits in (2, 4, 6, 8):
        steps[f"palettize {nbits}-bit per tensor"] = [("palettize_weights", OpPalettizerConfig(mode="kmeans", nbits=nbits), {})]
    for nbits in (2, 4, 6, 8):
        config = OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_grouped_channel", group_size=16)
        steps[f"palettize {nbits}-bit groups of 16"] = [("palettize_weights", config, {})]
    steps["uniform 4-bit per tensor"] = [("palettize_weights", OpPalettizerConfig(mode="uniform", nbits=4), {})]
    steps["prune 50%"] = [("prune_weights", OpMagnitudePrunerConfig(target_sparsity=0.5), {})]
    steps["prune 75%"] = [("prune_weights", OpMagnitudePrunerConfig(target_sparsity=0.75), {})]
    steps["prune 2:4"] = [("prune_weights", OpMagnitudePrunerConfig(n_m_ratio=(2, 4)), {})]
    steps["joint 75% sparse + 4-bit palette"] = [
        ("prune_weights", OpMagnitudePrunerConfig(target_sparsity=0.75), {}),
        ("palettize_weights", OpPalettizerConfig(mode="kmeans", nbits=4), {"joint_compression": True}),
    ]
    return steps


# ------------------------------------------------------------------------------------------------
# The worker: one library, one model, every config. Runs in its own process.


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_memory() -> None:
    """Make VmHWM start again from the current resident size (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _compress(library: str, model, steps):
    """The same calls on either library: its drop-in functions take coremltools' configs."""
    import coremltools.optimize.coreml as cto

    import milcompress

    api = cto if library == "coremltools" else milcompress
    for function, config, options in steps:
        model = getattr(api, function)(model, cto.OptimizationConfig(global_config=config), **options)
    return model


def timed(call: Callable[[], object]) -> Tuple[object, float, float]:
    """`call()`'s result, its wall seconds, and its peak MB: how far the process's resident memory
    rose above where it stood before the call."""
    gc.collect()
    _reset_peak_memory()
    before = _memory_kb("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, (_memory_kb("VmHWM") - before) / 1024


def warm_up(library: str) -> None:
    """Before anything is timed, run the library's k-means once on a small weight, per tensor, in
    groups and in vectors: milcompress loads numba's compiled kernels (compiling them on an
    installation's first run), coremltools imports scikit-learn. A process pays that once, not
    per call; the peak MB of the calls is then each library's working memory."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float16) for shape in ((64, 512), (64, 4096))]  # sorted and counted histograms
    if library == "milcompress":
        from milcompress.config import PalettizeConfig
        from milcompress.ops import palettize

        for weight in weights:
            for config in (PalettizeConfig(nbits=4), PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16),
                           PalettizeConfig(nbits=4, cluster_dim=2)):
                palettize(weight, config)
        return
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    for sizes, cluster_dim in (([0, 0], 1), ([16, 0], 1), ([0, 0], 2)):
        palettize_weights.blockwise_compress(weights[0], "KMEANS", 4, sizes, cluster_dim=cluster_dim, channel_axis=0)


def package_path(out_dir, library: str, label: str) -> Path:
    name = label.replace(" ", "_").replace("%", "pct").replace(":", "_").replace("/", "_")
    return Path(out_dir) / f"{library}-{name}.mlpackage"


def worker(library: str, dense_path: str, labels: List[str], out_dir: str,
           compress: Optional[Callable[[str, object, str], object]] = None) -> None:
    """Compress the dense package once per label, each from a fresh load, timed; save each result
    and write `<library>.json` (label -> seconds, peak MB, package path, or the error) to `out_dir`.
    `compress(library, model, label)`: default, the steps of `configs()[label]`."""
    import coremltools as ct

    if compress is None:
        all_steps = configs()

        def compress(library, model, label):
            return _compress(library, model, all_steps[label])

    warm_up(library)
    results = {}
    for label in labels:
        model = ct.models.MLModel(dense_path, skip_model_load=True)
        try:
            compressed, seconds, peak_mb = timed(lambda: compress(library, model, label))
        except Exception as error:  # a library declining a config is a result, not a crash
            results[label] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  {library:12s} {label:34s} error: {results[label]['error'][:200]}", flush=True)
            continue
        path = package_path(out_dir, library, label)
        compressed.save(str(path))
        results[label] = {"seconds": seconds, "peak_mb": peak_mb, "package": str(path)}
        print(f"  {library:12s} {label:34s} {seconds:8.2f} s {peak_mb:8.1f} MB", flush=True)
        del compressed, model
    (Path(out_dir) / f"{library}.json").write_text(json.dumps(results))


def run_worker(library: str, dense_path: Path, labels: List[str], out_dir: Path, script: str = __file__,
               env: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """`script --worker library dense_path out_dir labels...` in its own process (`env` added to
    its environment); its results."""
    command = [sys.executable, script, "--worker", library, str(dense_path), str(out_dir), *labels]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **(env or {})})
    return json.loads((out_dir / f"{library}.json").read_text())


# ------------------------------------------------------------------------------------------------
# Measurements in the parent process.


def _convert(bench, path: Path) -> None:
    import coremltools as ct
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(bench.module, bench.example_inputs)
    mlmodel = ct.convert(traced, inputs=list(bench.input_types), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    mlmodel.save(str(path))


def _weights(path: Path, keys: Dict[str, str], zeros_without_key: bool = False) -> Dict[str, tuple]:
    """state_dict key -> (dense value, storage form or None) for every weight of more than 2048
    values; `keys` maps normalised state_dict keys (or buffer names) to keys (see models/base.py).
    A const that no key names is an error, unless `zeros_without_key` and it is all zeros (the
    zero bias coremltools gives a bias-free linear, such as a tied lm_head): then it is left out."""
    import coremltools as ct

    import milcompress

    metadata = milcompress.get_weights_metadata(ct.models.MLModel(str(path), skip_model_load=True), weight_threshold=2048)
    found = {}
    for name, m in metadata.items():
        matches = [n for n in keys if name == n or name.startswith(n + "_")]
        if not matches:
            if zeros_without_key and not np.any(m.val):
                continue
            raise RuntimeError(f"{path.name}: weight const {name} comes from no state_dict entry")
        found[keys[max(matches, key=len)]] = (m.val, m.form)
    return found


def _with_weights(bench, weights: Dict[str, tuple]):
    """A copy of the bench module with `weights` (by state_dict key or buffer name) in place."""
    import torch

    module = copy.deepcopy(bench.module)
    tensors = {**dict(module.named_buffers()), **module.state_dict()}  # state_dict tensors share storage
    with torch.no_grad():
        for key, (value, _) in weights.items():
            tensors[key].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)).reshape(tensors[key].shape))
    return module.eval()


def _snr_db(reference: np.ndarray, value: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = float(np.sum((reference - value.astype(np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def program_accuracy(bench, model) -> Dict[str, float]:
    """The model's metrics from a package's program itself (a path or an MLModel), run by the
    reference executor with float16 activations."""
    from benchmarks.models.base import ProgramModule
    from milcompress.reference import load_program

    return bench.evaluate(ProgramModule(load_program(model), precision="float16"))


def _measure(bench, dense: Dict[str, tuple], path: Path, dense_size: int) -> dict:
    from benchmarks.models.base import normalised_keys
    from milcompress.packages import package_size

    weights = _weights(path, normalised_keys(bench.module))
    compressed = {name: _snr_db(dense[name][0], value) for name, (value, form) in weights.items() if form is not None}
    size = package_size(path)
    finite = [s for s in compressed.values() if math.isfinite(s)]
    return {
        "size_bytes": size,
        "ratio_to_fp16": dense_size / size,
        "compressed_weights": sorted(compressed),
        "weight_snr_db": compressed,
        "mean_snr_db": float(np.mean(finite)) if finite else None,
        "min_snr_db": float(np.min(finite)) if finite else None,
        "accuracy": bench.evaluate(_with_weights(bench, weights)),
        "program_accuracy": program_accuracy(bench, path),
    }


def benchmark_model(name: str, quick: bool, labels: List[str]) -> dict:
    module_name, arguments = MODELS[name]
    bench = importlib.import_module(module_name).load(quick=quick, **arguments)
    from benchmarks.models.base import normalised_keys
    from milcompress.packages import package_size

    with tempfile.TemporaryDirectory(prefix=f"compare-{name}-") as work:
        work = Path(work)
        dense_path = work / "dense.mlpackage"
        start = time.perf_counter()
        _convert(bench, dense_path)
        dense = _weights(dense_path, normalised_keys(bench.module))
        dense_size = package_size(dense_path)
        print(f"{name}: {len(dense)} weights, {sum(v.size for v, _ in dense.values()):,} values, "
              f"{dense_size / 1e6:.1f} MB float16 (converted in {time.perf_counter() - start:.0f} s)", flush=True)
        result = {
            "model": name,
            "weights": len(dense),
            "fp16_size_bytes": dense_size,
            "fp16_accuracy": bench.evaluate(_with_weights(bench, dense)),
            "fp16_program_accuracy": program_accuracy(bench, dense_path),
            "metrics": list(bench.metrics),
            "higher_is_better": dict(bench.higher_is_better),
            "configs": {label: {} for label in labels},
        }
        for library in LIBRARIES:
            runs = run_worker(library, dense_path, labels, work)
            for label, run in runs.items():
                if "error" not in run:
                    run.update(_measure(bench, dense, Path(run.pop("package")), dense_size))
                result["configs"][label][library] = run
    for runs in result["configs"].values():
        if "error" not in runs["milcompress"] and "error" not in runs["coremltools"]:
            runs["ratios"] = ratios(runs["milcompress"], runs["coremltools"])
    return result


# ------------------------------------------------------------------------------------------------
# Tables.


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _library_rows(result: dict) -> List[List[str]]:
    first = result["metrics"][0]
    rows = [["fp16 (dense)", "-", "-", "-", f"{result['fp16_size_bytes'] / 1e6:.2f}", "1.00", "-", "-", f"0/{result['weights']}"]
            + [_fmt(result["fp16_accuracy"][m], ".4f") for m in result["metrics"]]
            + [_fmt(result.get("fp16_program_accuracy", {}).get(first), ".4f")]]
    for label, runs in result["configs"].items():
        for library in LIBRARIES:
            run = runs[library]
            if "error" in run:
                rows.append([label, library, "error: " + run["error"][:60]] + [""] * (7 + len(result["metrics"])))
                continue
            rows.append(
                [label, library, _fmt(run["seconds"]), _fmt(run["peak_mb"], ".0f"), f"{run['size_bytes'] / 1e6:.2f}",
                 _fmt(run["ratio_to_fp16"]), _fmt(run["mean_snr_db"]), _fmt(run["min_snr_db"]),
                 f"{len(run['compressed_weights'])}/{result['weights']}"]
                + [_fmt(run["accuracy"][m], ".4f") for m in result["metrics"]]
                + [_fmt(run.get("program_accuracy", {}).get(first), ".4f")]
            )
    return rows


def ratios(ours: dict, theirs: dict) -> dict:
    """Ours over coremltools' for one config (both ran)."""
    both = sorted(set(ours["compressed_weights"]) & set(theirs["compressed_weights"]))
    finite = [n for n in both if math.isfinite(ours["weight_snr_db"][n]) and math.isfinite(theirs["weight_snr_db"][n])]
    only_ours = sorted(set(ours["compressed_weights"]) - set(theirs["compressed_weights"]))
    only_theirs = sorted(set(theirs["compressed_weights"]) - set(ours["compressed_weights"]))
    return {
        "speedup": theirs["seconds"] / ours["seconds"],
        "memory_ratio": ours["peak_mb"] / theirs["peak_mb"] if theirs["peak_mb"] > 0 else None,
        "size_ratio": ours["size_bytes"] / theirs["size_bytes"],
        "snr_gain_db_common": float(np.mean([ours["weight_snr_db"][n] - theirs["weight_snr_db"][n] for n in finite])) if finite else None,
        "worst_snr_gain_db_common": float(np.min([ours["weight_snr_db"][n] - theirs["weight_snr_db"][n] for n in finite])) if finite else None,
        "only_ours": only_ours,
        "only_theirs": only_theirs,
    }


def _ratio_rows(result: dict) -> List[List[str]]:
    rows = []
    for label, runs in result["configs"].items():
        ours, theirs = runs["milcompress"], runs["coremltools"]
        if "ratios" not in runs:
            rows.append([label] + ["-"] * 7 + [f"error: {(ours.get('error') or theirs.get('error'))[:60]}"])
            continue
        r = runs["ratios"]
        metric = result["metrics"][0]
        delta = ours["accuracy"][metric] - theirs["accuracy"][metric]
        program_delta = (ours["program_accuracy"][metric] - theirs["program_accuracy"][metric]
                         if "program_accuracy" in ours and "program_accuracy" in theirs else None)
        rows.append([label, f"{r['speedup']:.1f}x", _fmt(r["memory_ratio"]), f"{r['size_ratio']:.3f}",
                     _fmt(r["snr_gain_db_common"], "+.3f"), _fmt(r["worst_snr_gain_db_common"], "+.3f"),
                     f"{len(r['only_ours'])}/{len(r['only_theirs'])}", f"{delta:+.4f}", _fmt(program_delta, "+.4f")])
    return rows


def report(results: List[dict], command: str) -> str:
    from milcompress.tools.table import format_table

    import coremltools
    import torch

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, torch {torch.__version__}, coremltools {coremltools.__version__}"
    lines = [f"Produced by `{command}` ({machine}).", ""]
    for result in results:
        metrics = result["metrics"]
        lines += [f"## {result['model']}", "", "```"]
        lines.append(format_table(
            ["config", "library", "seconds", "peak MB", "size MB", "vs fp16", "mean SNR", "min SNR", "compressed"] + metrics
            + [f"program {metrics[0]}"],
            _library_rows(result), [False, False] + [True] * (8 + len(metrics))))
        lines += ["```", "", f"{metrics[0]} and the other metrics: the torch model with the weights read back from each package; "
                  f"program {metrics[0]}: the package's program itself, run by milcompress's reference executor with float16 "
                  "activations.", "", f"Ours over coremltools' (speed-up = their time / ours; memory and size: ours / theirs; SNR gains in dB "
                  f"over the weights both compressed; {metrics[0]}: ours minus theirs):", "", "```"]
        lines.append(format_table(
            ["config", "speed-up", "memory", "size", "mean SNR gain", "worst SNR gain", "only ours/only ct", f"d {metrics[0]}",
             f"d program {metrics[0]}"],
            _ratio_rows(result), [False] + [True] * 8))
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if argv[:1] == ["--worker"]:
        library, dense_path, out_dir, *labels = argv[1:]
        import milcompress._coremltools  # noqa: F401  (imports coremltools without its notices)

        worker(library, dense_path, labels, out_dir)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{' and '.join(QUICK_MODELS)} only, smaller evaluation sets")
    parser.add_argument("--models", nargs="*", choices=list(MODELS))
    parser.add_argument("--configs", nargs="*", help="config labels (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import milcompress._coremltools  # noqa: F401  (imports coremltools without its notices)

    labels = args.configs or list(configs())
    unknown = sorted(set(labels) - set(configs()))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(configs())}")
    names = args.models or (QUICK_MODELS if args.quick else list(MODELS))
    results = [benchmark_model(name, args.quick, labels) for name in names]
    command = "python benchmarks/compare.py" + " ".join([""] + argv)
    text = report(results, command)
    suffix = "_quick" if args.quick else ""
    if args.models or args.configs:
        suffix += "_partial"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"compare{suffix}.md").write_text(text)
    (args.out / f"compare{suffix}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
