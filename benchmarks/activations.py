"""Activation quantization on real models: W8A8, A8 with float16 weights, A8W4, against float32.

For each model the float32 torch module is converted once to an iOS18 ML program (float16
weights); then, each from that program:
- int8 weights (per channel, linear_symmetric): the weight-only reference, `linear_quantize_weights`;
- A8: `linear_quantize_activations` on the float16-weight program (int8, linear_symmetric);
- W8A8: int8 weights, then activations calibrated on that program (as `run --activations` does:
  calibration sees the weights as they will be stored);
- W4 (int8 tables): 4-bit k-means palettes per tensor whose tables are then quantized to int8
  (`linear_quantize_weights(..., joint_compression=True)`, per tensor), the weight-only
  reference for A8W4;
- A8W4: that model, then activations.
Activations get milcompress' default ranges (percentile, `ops.activations.DEFAULT_ESTIMATOR`);
`--estimators` adds a W8A8 row for each other estimator (by default minmax, coremltools' choice).
For W8A8, what each quantized activation costs alone is measured too (`per_tensor_damage`).
Every program is scored by the model's own metric, run by milcompress's reference executor in
float16 emulation (activations stored as float16, as Core ML's GPU and Neural Engine do); the
float32 torch module gets the perfect score. Calibration uses inputs the evaluation never sees.
coremltools' own route (`coremltools.optimize.coreml.linear_quantize_activations`) calibrates by
running the model in Core ML: it is called on the same model and config, and reported as "needs
macOS" with the error it raises here.

    python benchmarks/activations.py --quick             # digits CNN and MobileNetV2 (33 crops)
    python benchmarks/activations.py --models mobilenet_v2,minilm,resnet50_normal,digits_cnn

Results go to benchmarks/results/activations[_quick][_<models>].{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare import MODELS, _convert  # noqa: E402
from milcompress.ops.activations import DEFAULT_ESTIMATOR  # noqa: E402

VARIANTS = ["float16 program", "int8 weights", "A8 (float16 weights)", "W8A8", "W4 (int8 tables)", "A8W4"]
CALIBRATION_COUNTS = {"digits_cnn": 64, "resnet50_normal": 8, "resnet50_student_t": 8}


def calibration_of(name: str, bench) -> Dict[str, np.ndarray]:
    """Calibration inputs by input name, stacked: the model's own, else data evaluation never uses
    (the digits' training split; other random images for the random-weight ResNet50)."""
    if bench.calibration is not None:
        return bench.calibration()
    if name == "digits_cnn":
        from benchmarks.models.digits_cnn import digits_split

        train_images = digits_split()[0][: CALIBRATION_COUNTS[name]]
        return {"digits": train_images.numpy()[:, None]}
    if name.startswith("resnet50"):
        import torch

        images = torch.randn(CALIBRATION_COUNTS[name], 1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
        return {"image": images.numpy()}
    raise KeyError(name)


def evaluation_inputs(name: str, bench, quick: bool, count: int = 8) -> List[Dict[str, np.ndarray]]:
    """A few evaluation inputs as program samples, for the per-tensor SNR (not for scores)."""
    import torch

    if name == "mobilenet_v2":
        from benchmarks.models.mobilenet_v2 import evaluation_images

        return [{"image": image[None].numpy()} for image in evaluation_images(quick)[:count]]
    if name == "digits_cnn":
        from benchmarks.models.digits_cnn import digits_split

        return [{"digits": image[None].numpy()} for image in digits_split()[2][:count]]
    if name.startswith("resnet50"):
        images = torch.randn(count, 1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        return [{"image": image.numpy()} for image in images]
    if name == "minilm":
        from benchmarks.models.minilm import CONVERSION_BATCH, SEQUENCE_LENGTH, evaluation_passages, tokenize

        input_ids, attention_mask = tokenize(evaluation_passages(count * CONVERSION_BATCH))
        shape = (-1, CONVERSION_BATCH, SEQUENCE_LENGTH)
        ids, mask = input_ids.numpy().reshape(shape).astype(np.int32), attention_mask.numpy().reshape(shape).astype(np.int32)
        return [{"input_ids": ids[index], "attention_mask": mask[index]} for index in range(len(ids))]
    raise KeyError(name)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def variants(dense, samples, estimators=(DEFAULT_ESTIMATOR,), only=None) -> Dict[str, tuple]:
    """Variant name -> (model, seconds of its activation calibration or None). Activations are
    quantized with milcompress' default range estimator; other estimators add a W8A8 row each;
    `only` (names) builds just those."""
    import coremltools.optimize.coreml as cto

    import milcompress

    weights8 = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    activations = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    palettes = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=4))
    tables = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_tensor"))

    def a8(model, estimator=DEFAULT_ESTIMATOR):
        start = time.perf_counter()
        result = _quiet(milcompress.linear_quantize_activations, model, activations, samples, estimator=estimator)
        return result, time.perf_counter() - start

    builders = {
        "float16 program": lambda: (dense, None),
        "int8 weights": lambda: (w8(), None),
        "A8 (float16 weights)": lambda: a8(dense),
        "W8A8": lambda: a8(w8()),
    }
    for estimator in estimators:
        if estimator != DEFAULT_ESTIMATOR:
            builders[f"W8A8 ({estimator} ranges)"] = lambda estimator=estimator: a8(w8(), estimator)
    builders["W4 (int8 tables)"] = lambda: (w4(), None)
    builders["A8W4"] = lambda: a8(w4())
    made = {}

    def w8():
        if "w8" not in made:
            made["w8"] = _quiet(milcompress.linear_quantize_weights, dense, weights8)
        return made["w8"]

    def w4():
        if "w4" not in made:
            made["w4"] = _quiet(milcompress.linear_quantize_weights, _quiet(milcompress.palettize_weights, dense, palettes), tables, joint_compression=True)
        return made["w4"]

    return {name: build() for name, build in builders.items() if only is None or name in only}


def _program_params(tensor):
    """The quantize -> dequantize parameters the program holds for one report entry."""
    from milcompress.ops.activations import ActivationQuantization

    zero_point = None if tensor.zero_point is None else np.asarray(tensor.zero_point)
    return ActivationQuantization(np.asarray(tensor.scale, dtype=np.float32), zero_point, tensor.dtype, tensor.rmin, tensor.rmax)


def per_tensor_snr(dense, report, samples, limit: int = 8) -> List[dict]:
    """For each activation the W8A8 report quantized: the SNR (dB) of quantizing that tensor alone,
    measured on the float16-weight program's own values over `limit` samples (one pass, an
    observer): where a model's W8A8 loses, the tensors with the lowest SNR say why."""
    import torch

    from milcompress.api import program_of
    from milcompress.ops.activations import quantize_dequantize
    from milcompress.reference import Interpreter

    params = {t.name: _program_params(t) for t in report.tensors}
    energy = {name: [0.0, 0.0] for name in params}

    def observe(op, args, outputs):
        for var, value in zip(op.outputs, outputs):
            if var.name in params and isinstance(value, torch.Tensor):
                values = value.double().numpy()
                energy[var.name][0] += float(np.sum(values ** 2))
                energy[var.name][1] += float(np.sum((quantize_dequantize(values, params[var.name]) - values) ** 2))

    interpreter = Interpreter(program_of(dense), precision="float16", observers=[observe])
    for sample in samples[:limit]:
        interpreter.run(sample)
        for name, value in sample.items():
            if name in params:
                values = np.asarray(value, dtype=np.float64)
                energy[name][0] += float(np.sum(values ** 2))
                energy[name][1] += float(np.sum((quantize_dequantize(values, params[name]) - values) ** 2))
    rows = []
    for tensor in report.tensors:
        signal, noise = energy[tensor.name]
        snr = float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal > 0 else float("nan")
        rows.append({"tensor": tensor.name, "chosen_as": tensor.kind, "range": [tensor.rmin, tensor.rmax], "snr_db": snr})
    return sorted(rows, key=lambda row: row["snr_db"])


def per_tensor_damage(base, report, samples, class_scores: bool, limit: int = 8) -> List[dict]:
    """For each activation the W8A8 report quantized: what quantizing that tensor alone (its
    quantize -> dequantize, simulated by `Interpreter.perturbing`) does to the outputs of `base`
    (the int8-weight program) on `limit` samples: output cosine, SNR, and for class scores the
    KL divergence and top-1 agreement (`class_scores`: the model's metric is about classes).
    Worst first, by KL for class scores, else by 1 - cosine: where a model's W8A8 loses, this
    says which tensors cost it (their sum is roughly the whole W8A8 loss when each costs little)."""
    import torch

    from milcompress.api import program_of
    from milcompress.ops.activations import quantize_dequantize
    from milcompress.reference import Interpreter
    from milcompress.reference.verify import compare_output

    interpreter = Interpreter(program_of(base), precision="float16")
    samples = samples[:limit]
    reference = [interpreter.run(sample) for sample in samples]
    rows = []
    for tensor in report.tensors:
        params = _program_params(tensor)

        def simulate(value, params=params):
            return torch.from_numpy(quantize_dequantize(value.numpy(), params).astype(np.float32))

        with interpreter.perturbing({tensor.name: simulate}):
            outputs = [interpreter.run(sample) for sample in samples]
        row = {"tensor": tensor.name, "chosen_as": tensor.kind, "range": [tensor.rmin, tensor.rmax]}
        for name in reference[0]:
            comparison = compare_output(name, [r[name] for r in reference], [o[name] for o in outputs])
            row.update(cosine=comparison.cosine, snr_db=comparison.snr_db,
                       kl=comparison.kl_divergence if class_scores else None, top1=comparison.top1_agreement if class_scores else None)
            break  # the first output: every benchmark model has one that matters
        rows.append(row)
    return sorted(rows, key=lambda row: -(row["kl"] if row["kl"] is not None else 1 - row["cosine"]))


def coremltools_route(dense, samples) -> str:
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    try:
        _quiet(cto.linear_quantize_activations, dense, config, samples[:1])
    except Exception as error:  # Core ML is not there to calibrate on
        return f"needs macOS ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return "ran"


def run_model(name: str, quick: bool, estimators=(DEFAULT_ESTIMATOR,), only=None) -> dict:
    import coremltools as ct

    import milcompress
    from benchmarks.models.base import ProgramModule
    from milcompress.api import program_of

    module_name, arguments = MODELS[name]
    bench = importlib.import_module(module_name).load(quick=quick, **arguments)
    stacked = calibration_of(name, bench)
    count = len(next(iter(stacked.values())))
    samples = [{key: value[index] for key, value in stacked.items()} for index in range(count)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "dense.mlpackage"
        _quiet(_convert, bench, path)
        dense = ct.models.MLModel(str(path), skip_model_load=True)
        built = variants(dense, samples, estimators, only)
        rows = {}
        for label, (model, seconds) in built.items():
            start = time.perf_counter()
            scores = bench.evaluate(ProgramModule(program_of(model), precision="float16"))
            report = milcompress.activation_report_of(model)
            rows[label] = {
                **scores,
                "calibration_seconds": seconds,
                "evaluation_seconds": time.perf_counter() - start,
                "activations_quantized": None if report is None else len(report.tensors),
                "left_float": None if report is None else [list(s) for s in report.skipped],
            }
            print(f"  {name:18s} {label:22s} " + "  ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)
        coremltools = coremltools_route(dense, samples)
        evaluation_samples = evaluation_inputs(name, bench, quick)
        quantized = next((model for model, seconds in built.values() if seconds is not None), None)
        weakest = [] if quantized is None else per_tensor_snr(dense, milcompress.activation_report_of(quantized), evaluation_samples)
        base = built.get("int8 weights", (None,))[0]
        w8a8 = built.get("W8A8", (None,))[0]
        damage = [] if base is None or w8a8 is None else per_tensor_damage(base, milcompress.activation_report_of(w8a8), evaluation_samples,
                                                                                   class_scores=not any("cosine" in m for m in bench.metrics))
    return {
        "metrics": list(bench.metrics), "higher_is_better": bench.higher_is_better, "calibration_samples": count, "rows": rows,
        "coremltools": coremltools, "per_tensor_snr_db": weakest, "per_tensor_damage": damage,
    }


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Activation quantization: W8A8, A8, A8W4 against float32",
        "",
        f"`{command}` on {platform.machine()} ({platform.python_version()}); every program run by the reference executor in float16 emulation.",
        "Scores are against the float32 torch module (perfect score: 1, or its own accuracy). Calibration inputs are separate from the evaluation inputs.",
        "",
    ]
    for name, result in results.items():
        metrics = result["metrics"]
        lines += [f"## {name} ({result['calibration_samples']} calibration samples)", ""]
        lines.append("| variant | " + " | ".join(metrics) + " | activations quantized | calibration s |")
        lines.append("|---|" + "---|" * (len(metrics) + 2))
        for label, row in result["rows"].items():
            cells = [f"{row[m]:.4f}" for m in metrics]
            quantized = "-" if row["activations_quantized"] is None else str(row["activations_quantized"])
            seconds = "-" if row["calibration_seconds"] is None else f"{row['calibration_seconds']:.1f}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {quantized} | {seconds} |")
        lines.append(f"| coremltools' linear_quantize_activations | {result['coremltools']} |" + " |" * (len(metrics) + 1))
        first = metrics[0]
        if "int8 weights" in result["rows"] and "W8A8" in result["rows"]:
            gap = result["rows"]["int8 weights"][first] - result["rows"]["W8A8"][first]
            sign = 1 if result["higher_is_better"][first] else -1
            lines += ["", f"W8A8 vs int8 weights only, {first}: {sign * gap:+.4f} (positive: W8A8 worse)", ""]
        weakest = result["per_tensor_snr_db"][:5]
        lines.append("Lowest per-tensor SNR of int8 activations (each tensor quantized alone, float16-weight program, 8 evaluation inputs): "
                     + "; ".join(f"{row['tensor']} ({row['chosen_as']}) {row['snr_db']:.1f} dB" for row in weakest))
        damage = result.get("per_tensor_damage") or []
        if damage:
            kl = damage[0]["kl"] is not None
            total = sum((row["kl"] if kl else 1 - row["cosine"]) for row in damage)
            lines += ["", f"What each W8A8 activation costs quantized alone (the int8-weight program with only that tensor's quantize -> dequantize, "
                      f"{'KL divergence and top-1 agreement' if kl else 'output cosine'} against the int8-weight program, 8 evaluation inputs; "
                      f"the {len(damage)} costs sum to {'KL' if kl else '1 - cosine'} {total:.4f}), worst first:", "",
                      "| tensor | chosen as | range | " + ("KL | top-1 |" if kl else "cosine |"), "|---|---|---|" + ("---|---|" if kl else "---|")]
            for row in damage[:10]:
                scores = f"{row['kl']:.4f} | {row['top1']:.3f} |" if kl else f"{row['cosine']:.5f} |"
                lines.append(f"| {row['tensor']} | {row['chosen_as']} | [{row['range'][0]:.3g}, {row['range'][1]:.3g}] | {scores}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits CNN and MobileNetV2 on 33 crops")
    parser.add_argument("--models", help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--estimators", default=f"{DEFAULT_ESTIMATOR},minmax",
                        help=f"range estimators, comma-separated: {DEFAULT_ESTIMATOR} (milcompress' default), minmax (coremltools'), mse; "
                             f"each beyond {DEFAULT_ESTIMATOR} adds a W8A8 row")
    parser.add_argument("--variants", help="only these rows, comma-separated (default: all): " + ", ".join(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else (["digits_cnn", "mobilenet_v2"] if args.quick else ["digits_cnn", "mobilenet_v2", "minilm", "resnet50_normal"])
    results = {}
    for name in names:
        print(f"{name}:", flush=True)
        only = None if args.variants is None else set(args.variants.split(","))
        results[name] = run_model(name, args.quick, tuple(args.estimators.split(",")), only)
    stem = "activations" + ("_quick" if args.quick else "") + ("_" + "_".join(names) if args.models else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/activations.py" + (" --quick" if args.quick else "") + (f" --models {args.models}" if args.models else "")
    command += f" --estimators {args.estimators}" if args.estimators != parser.get_default("estimators") else ""
    command += f" --variants '{args.variants}'" if args.variants else ""
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(results, command))
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
