"""The `milcompress` command line: a thin shell over the library.

Commands: run, inspect, verify, sweep, pipelines, passes, demo. Exit codes: 0 success, 1 verify
found NaN or infinite outputs or missed a threshold, 2 usage, configuration, input or output
errors, 3 a pass failed, 130 / 143 interrupted by SIGINT / SIGTERM (temporary files removed).
Errors are one or two lines naming the file, field or const (or the path and the cause of an I/O
failure); `--verbose` adds the traceback. Library code only logs; drawing (progress bars on a
terminal, tables) happens here. This module imports coremltools and torch only inside the
commands that need them, so `--help`, `--version`, `pipelines` and `passes` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional

from milcompress.errors import ConfigError, InputError, MilcompressError, OutputError, PassError, PreconditionError
from milcompress.progress import TqdmProgress
from milcompress.table import kilobytes as _kb
from milcompress.table import snr_text as _snr

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_PASS_FAILED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with our usage code (2, as argparse does) and one line."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise SystemExit(f"milcompress: error: {message}")


@contextlib.contextmanager
def _quiet_coremltools():
    """coremltools' logs and warnings would bury our output (its progress bars are silenced inside
    the library's calls); milcompress' own warnings (config entries that match nothing) are printed
    with the summary instead. Levels and filters are restored when the command ends, as `main` may
    run in-process."""
    loggers = [logging.getLogger("coremltools"), logging.getLogger("milcompress")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)




def _progress() -> TqdmProgress:
    """A tqdm bar per stage on stderr, drawn only on a terminal."""
    return TqdmProgress(disable=None)


def _load(path, progress):
    from milcompress.packages import load_model

    with progress.stage(f"loading {Path(path).name}", total=1, unit="package") as advance:
        model, prog = load_model(path)
        advance()
    return model, prog


def _save(model, path, progress, **options) -> None:
    from milcompress.packages import save_model

    with progress.stage(f"saving {Path(path).name}", total=1, unit="package") as advance:
        save_model(model, path, **options)
        advance()


# ------------------------------------------------------------------------------------------------
# run


def _specs(args) -> list:
    from milcompress.passes.pipelines import compression_passes
    from milcompress.passes.spec import PassSpec, parse_passes

    chosen = [flag for flag in ("pipeline", "config", "passes", "target_bpw") if getattr(args, flag) is not None]
    if len(chosen) > 1 or (not chosen and not args.activations):
        raise ConfigError("give exactly one of --pipeline, --config, --passes, --target-bpw (or --activations alone)", field="run")
    if args.activations and not args.calibration:
        raise ConfigError("--activations needs --calibration (an .npz of calibration inputs)", field="calibration")
    if args.activation_ranges and not args.activations:
        raise ConfigError("--activation-ranges goes with --activations", field="activation_ranges")
    if args.calibration and not (args.target_bpw or args.activations):
        raise ConfigError("--calibration goes with --target-bpw or --activations", field="run")
    if (args.sensitivity_seconds or args.error_feedback is not None or args.no_synthetic_check) and not args.target_bpw:
        raise ConfigError("--sensitivity-seconds, --(no-)error-feedback and --no-synthetic-check go with --target-bpw", field="run")
    if args.error_feedback and not args.calibration:
        raise ConfigError("--error-feedback needs --calibration", field="run")
    if args.target_bpw is not None:
        options = {"target_bits_per_weight": args.target_bpw}
        if args.calibration:
            options["calibration"] = args.calibration
        if args.sensitivity_seconds:
            options["sensitivity_seconds"] = args.sensitivity_seconds
        if args.error_feedback is not None:
            options["error_feedback"] = "true" if args.error_feedback else "false"
        if args.no_synthetic_check:
            options["synthetic_check"] = "false"
        specs = [PassSpec("milcompress::compress_to_size", options)]
    elif not chosen:
        specs = []
    elif args.pipeline:
        specs = [PassSpec(p) for p in compression_passes(args.pipeline)]
    elif args.config:
        if not Path(args.config).is_file():
            raise InputError(f"{args.config}: no such config file")
        specs = [PassSpec("milcompress::compress_weights", {"config": args.config})]
    else:
        specs = parse_passes(args.passes)
    if args.activations:  # last: calibration sees the weights as they will be stored
        options = {"config": args.activations, "calibration": args.calibration}
        if args.activation_ranges:
            options["estimator"] = args.activation_ranges
        specs.append(PassSpec("milcompress::quantize_activations", options))
    if args.strict:  # config entries that match no weight fail the pass instead of a warning
        specs = [PassSpec(s.pass_id, {**s.options, "strict": "true"}) if _takes_option(s, "strict") else s for s in specs]
    if args.on_unsupported:
        specs = [
            PassSpec(s.pass_id, {**s.options, "on_unsupported": args.on_unsupported}) if s.pass_id.startswith("milcompress::") and "decompress" not in s.pass_id and s.pass_id != "milcompress::compress_to_size" else s
            for s in specs
        ]
    return specs


def _takes_option(spec, option: str) -> bool:
    from milcompress._coremltools import PASS_REGISTRY

    return spec.pass_id.startswith("milcompress::") and hasattr(type(PASS_REGISTRY[spec.pass_id]), option)


def _import_coremltools_without_torch() -> None:
    """coremltools imports torch with itself (200 MB resident, a third of what streaming a 430M
    decoder takes), for converting torch models, which `run` never does; the reference executor
    (calibration) imports torch for itself. So torch is hidden while coremltools is imported,
    unless either is imported already."""
    if "coremltools" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # "import torch" fails: coremltools carries on without its torch frontend
    try:
        import milcompress._coremltools  # noqa: F401
    finally:
        del sys.modules["torch"]


def _run(args) -> int:
    _import_coremltools_without_torch()
    from milcompress.parallel import check_workers
    from milcompress.passes.spec import format_passes

    args.workers = check_workers(args.workers, "--workers")
    specs = _specs(args)
    print(f"passes: {format_passes(specs)}")
    if not args.dry_run and not args.output:
        raise ConfigError("-o/--output is required (or pass --dry-run)", field="output")
    _check_destinations(args)
    if args.dry_run:
        return _compress(args, specs, staging=None)
    from milcompress.packages import staging_directory

    # Every temporary of the run (coremltools' temporary packages too) goes in one directory next
    # to the output, removed however the run ends.
    with staging_directory(args.output, redirect_tempfile=True) as staging:
        return _compress(args, specs, staging)


def _check_destinations(args) -> None:
    """Refuse unusable outputs before any work: an output that is the input (or holds it or lies
    inside it, even with --force), an existing one without --force, a report path that cannot be
    written."""
    from milcompress.packages import check_output, check_report_path

    inputs = [path for path in (args.model, args.config, args.calibration) if path]  # a config or calibration file is an input too
    if not args.dry_run:
        check_output(args.output, force=args.force, sources=inputs, force_flag="--force")
    if args.report:
        check_report_path(args.report, sources=[(path, "input") for path in inputs] + ([] if args.dry_run else [(args.output, "output")]))


def _compress(args, specs, staging) -> int:
    from milcompress.api import run_passes
    from milcompress.packages import package_size, write_text_atomically

    from milcompress.parallel import dask_client

    progress = _progress()
    model, _ = _load(args.model, progress)
    try:
        with dask_client(args.scheduler) as client:
            new_model, reports = run_passes(model, specs, progress=progress, save=not args.dry_run, workers=args.workers, client=client)
    except OutputError as error:  # coremltools' temporary package, in the staging directory next to the output
        raise OutputError(args.output, error.cause) from None
    size_in = package_size(args.model)
    _print_summary(reports)
    if not args.dry_run:
        _save(new_model, args.output, progress, force=args.force, sources=[args.model], staging=staging)
    if args.report:  # after the model: a report problem never costs the compressed model
        write_text_atomically(args.report, json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    if args.dry_run:
        print(f"\ndry run: nothing written (input {_kb(size_in)})")
        return EXIT_OK
    size_out = package_size(args.output)
    print(f"\n{args.model}: {_kb(size_in)} -> {args.output}: {_kb(size_out)} ({size_in / size_out:.2f}x)")
    return EXIT_OK


def _print_summary(reports) -> None:
    """Each report as its table (`str(report)`): the same text as printing a report in Python."""
    for report in reports:
        print(f"\n{report}")


def _labeller(functions):
    """Weights are named `function/const` only where a model has several functions."""
    if len(set(functions)) > 1:
        return lambda function, name: f"{function}/{name}"
    return lambda function, name: name


# ------------------------------------------------------------------------------------------------
# inspect, pipelines, passes


def _inspect(args) -> int:
    from milcompress.api import inspect_model
    from milcompress.packages import package_size
    from milcompress.signature import describe_io
    from milcompress.table import format_table

    model, prog = _load(args.model, _progress())
    opsets, weights = inspect_model(model)
    size = package_size(args.model)
    io = describe_io(prog)
    if args.json:
        print(json.dumps({"model": str(args.model), "size_bytes": size, "opsets": opsets, "functions": io,
                          "weights": [w.to_dict() for w in weights]}, indent=2))
        return EXIT_OK
    label = _labeller(opsets)
    rows = [[label(w.function, w.name), w.form, "x".join(map(str, w.shape)), f"{w.bits_per_weight:.2f}", _kb(w.stored_bytes)] for w in weights]
    print(format_table(["weight", "storage", "shape", "bits/weight", "size"], rows, [False, False, False, True, True]))
    stored = sum(w.stored_bytes for w in weights)
    count = sum(w.elements for w in weights)
    targets = ", ".join(f"{name}: {target}" for name, target in opsets.items())
    print(f"\n{len(weights)} weights, {count:,} values, {_kb(stored)} stored ({8 * stored / max(count, 1):.2f} bits/weight)")
    print(f"package {_kb(size)} on disk; opset {targets}")
    for function_name, described in io.items():
        where = f" of '{function_name}'" if len(io) > 1 else ""
        print(f"inputs{where}: " + "; ".join(f"{name} {text}" for name, text in described["inputs"].items()))
        if described["states"]:
            print(f"states{where}: " + "; ".join(f"{name} {text}" for name, text in described["states"].items()))
    return EXIT_OK


def _pipelines(args) -> int:
    from milcompress.catalog import PIPELINES, SYNTHETIC_SHAPE, expected_bits_per_weight
    from milcompress.table import format_table

    def expected(name):
        bits = expected_bits_per_weight(name)
        return "as trained" if bits is None and name != "DECOMPRESS" else ("16 (dense)" if bits is None else f"{bits:.2f}")

    rows = [[name, expected(name), doc] for name, (_, doc) in PIPELINES.items()]
    print(format_table(["pipeline", "bits/weight", "what"], rows, [False, True, False]))
    shape = "x".join(map(str, SYNTHETIC_SHAPE))
    print(f"\nbits/weight: stored bits per weight of a {shape} float16 weight of normal values; 'as trained': lossless,\n"
          "only for weights palettized or pruned in training. Each pipeline runs one preset pass (`milcompress passes`).")
    return EXIT_OK


def _passes(args) -> int:
    from milcompress.catalog import BASE_PASSES, PRESETS

    passes = {**BASE_PASSES, **{pass_id: doc for pass_id, (_, _, doc) in PRESETS.items()}}
    for pass_id, doc in passes.items():
        print(f"{pass_id:<52} {doc}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# demo


def _demo(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise InputError("the demo builds a PyTorch model: install torch (pip install 'milcompress[torch]')") from error
    from milcompress.table import format_table
    from milcompress.tools.demo import convert_demo_model, run_demo, save_demo

    print("Converting the built-in model (3 convs + attention block + classifier, iOS18, float16)...")
    model = convert_demo_model()
    if args.save:
        written = save_demo(model, args.save, force=args.force)
        for path, what in written:
            print(f"wrote {path}: {what}")
        package, inputs, calibration = (path for path, _ in written)
        print(f"\nnext: milcompress run {package} -o small.mlpackage --pipeline PALETTIZE_4BIT\n"
              f"      milcompress verify {package} small.mlpackage --inputs {inputs}\n"
              f"      milcompress run {package} -o sized.mlpackage --target-bpw 4.5 --calibration {calibration}")
        return EXIT_OK
    rows = []
    results = run_demo(model)
    for row in results:
        ratio = row.bytes_before / row.bytes_after if row.bytes_after else 1.0
        rows.append(
            [
                row.pipeline,
                f"{row.compressed}/{row.weights}",
                _kb(row.bytes_after),
                f"{ratio:.2f}x",
                _snr(row.mean_snr_db),
                _snr(row.worst_snr_db),
                f"{row.seconds:.2f}",
            ]
        )
    print(f"float16 weights (2-D and up): {results[0].weights} tensors, {_kb(results[0].bytes_before)}\n")
    print(format_table(["pipeline", "compressed", "weights", "vs fp16", "mean SNR dB", "worst SNR dB", "s"], rows, [False, True, True, True, True, True, True]))
    print("\nweights: stored bytes of the 2-D+ float weights; vs fp16: their size before / after.")
    print("DEFAULT_PALETTIZATION / DEFAULT_PRUNING only take weights already palettized or pruned in training, losslessly.")
    print("`milcompress demo --save DIR` writes the model and inputs for trying every command on it.")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# verify


def _number(value: float, digits: int = 1) -> str:
    return "inf" if value == math.inf else ("-inf" if value == -math.inf else f"{value:.{digits}f}")


RANDOM_TOP1_CAVEAT = (
    "note: top-1 agreement on random inputs: a model's class scores for random inputs are often nearly flat, so it says "
    "little about real inputs; give --inputs for a measure that does"
)


def _needs_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise InputError(f"{command} runs models with torch: install it (pip install 'milcompress[reference]')") from error


def _verify(args) -> int:
    _needs_torch("verify")
    from milcompress.packages import load_arrays
    from milcompress.reference import verify
    from milcompress.reference.verify import DecoderReport
    from milcompress.table import format_table

    if (args.inputs is None) == (args.random is None):
        raise ConfigError("give exactly one of --inputs FILE.npz or --random N", field="verify")
    inputs = None if args.inputs is None else load_arrays(args.inputs)
    progress = _progress()
    _, original = _load(args.original, progress)
    _, compressed = _load(args.compressed, progress)
    report = verify(original, compressed, inputs, random=args.random, precision=args.precision, seed=args.seed, progress=progress,
                    shapes=dict(args.shape or []), steps=args.steps)
    failures = _failed_thresholds(report, args)
    if args.json:
        print(json.dumps({**report.as_dict(), "failed": failures}, indent=2, allow_nan=False))
        return EXIT_OK if report.ok and not failures else EXIT_VERIFY_FAILED
    if isinstance(report, DecoderReport):
        _print_decoder_report(report, args)
    else:
        rows = [
            [
                o.name,
                _number(o.snr_db),
                _number(o.psnr_db),
                f"{o.cosine:.5f}",
                f"{o.min_cosine:.5f}",
                f"{o.max_abs_error:.3g}",
                "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}",
                "-" if o.kl_divergence is None else f"{o.kl_divergence:.3g}",
            ]
            for o in report.outputs
        ]
        source = f"{args.inputs}" if args.inputs else f"{args.random} random"
        print(f"{report.samples} samples ({source}), computed in {report.precision} by the reference executor\n")
        print(format_table(["output", "SNR dB", "PSNR dB", "cosine", "min cosine", "max abs err", "top-1 agree", "KL"], rows, [False] + [True] * 7))
        if report.random_inputs and any(o.top1_agreement is not None for o in report.outputs):
            print(f"\n{RANDOM_TOP1_CAVEAT}")
    for problem in report.problems:
        print(f"FAILED: {problem}")
    thresholds = [(flag, value) for flag, value in (("--min-cosine", args.min_cosine), ("--min-top1", args.min_top1), ("--max-kl", args.max_kl)) if value is not None]
    if thresholds:
        given = ", ".join(f"{flag} {value:g}" for flag, value in thresholds)
        print(f"\n{'FAILED' if failures else 'passed'}: {given}" + "".join(f"\n  {failure}" for failure in failures))
    return EXIT_OK if report.ok and not failures else EXIT_VERIFY_FAILED


def _failed_thresholds(report, args) -> List[str]:
    """What misses the thresholds given: mean cosine of every output; top-1 agreement and KL
    divergence of every output that looks like class scores (an error if none does). A decoder's
    report is held to them step by step (the prompt, then each decode step)."""
    from milcompress.reference.verify import DecoderReport

    if isinstance(report, DecoderReport):
        failures = []
        for step in report.steps:
            where = "prompt" if step.step == 0 else f"step {step.step}"
            if args.min_cosine is not None and not step.cosine >= args.min_cosine:
                failures.append(f"{where}: logits cosine {step.cosine:.5f} < {args.min_cosine:g}")
            if args.min_top1 is not None and not step.top1_agreement >= args.min_top1:
                failures.append(f"{where}: top-1 agreement {step.top1_agreement:.4g} < {args.min_top1:g}")
            if args.max_kl is not None and not step.kl <= args.max_kl:
                failures.append(f"{where}: KL divergence {step.kl:.4g} > {args.max_kl:g}")
        return failures
    failures = []
    if args.min_cosine is not None:
        failures += [f"{o.name}: cosine {o.cosine:.5f} < {args.min_cosine:g}" for o in report.outputs if not o.cosine >= args.min_cosine]
    for flag, limit, field, label in (
        ("--min-top1", args.min_top1, "top1_agreement", "top-1 agreement"),
        ("--max-kl", args.max_kl, "kl_divergence", "KL divergence"),
    ):
        if limit is None:
            continue
        scored = [o for o in report.outputs if getattr(o, field) is not None]
        if not scored and report.ok:  # (non-finite outputs are not scored: they fail as problems)
            raise ConfigError(f"{flag}: no output looks like class scores (float, last dimension 2 or more); use --min-cosine", field=flag)
        for o in scored:
            value = getattr(o, field)
            if flag == "--min-top1" and not value >= limit:
                failures.append(f"{o.name}: {label} {value:.4g} < {limit:g}")
            elif flag == "--max-kl" and not value <= limit:
                failures.append(f"{o.name}: {label} {value:.4g} > {limit:g}")
    return failures


# ------------------------------------------------------------------------------------------------
# sweep


def _targets(text: str) -> List[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"--targets: expected bits per weight separated by commas, got {text!r}", field="targets") from error


def _sweep(args) -> int:
    _needs_torch("sweep")
    from milcompress import sweep as sweeps
    from milcompress.packages import load_arrays
    from milcompress.passes.pipelines import compression_passes

    if (args.inputs is None) == (args.random is None):
        raise ConfigError("give exactly one of --inputs FILE.npz or --random N", field="sweep")
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise InputError("sweep draws its plot with matplotlib: pip install 'milcompress[plot]'") from error
    targets = _targets(args.targets) if args.targets else list(sweeps.DEFAULT_TARGETS)
    pipelines = None
    if args.pipelines is not None:
        pipelines = [name.strip().upper() for name in args.pipelines.split(",") if name.strip()]
        for name in pipelines:
            compression_passes(name)  # unknown names fail here, before any work
    inputs = None if args.inputs is None else load_arrays(args.inputs)
    calibration = None if args.calibration is None else load_arrays(args.calibration)
    out = Path(args.out) if args.out else Path(f"{Path(args.model).stem}_sweep")
    progress = _progress()
    model, _ = _load(args.model, progress)
    result = sweeps.sweep(model, inputs, targets, pipelines=pipelines, calibration=calibration, precision=args.precision, random=args.random,
                          name=str(args.model), progress=progress)
    written = sweeps.write(result, out)
    source = f"{args.inputs}" if args.inputs else f"{args.random} random"
    print(f"{args.model}: {result.dense_bits_per_weight:.2f} bits per weight dense; output {result.output} on {result.samples} samples ({source})\n")
    print(result.table())
    if result.random_inputs and result.metric == "top1_agreement":
        print(f"\n{RANDOM_TOP1_CAVEAT}")
    print("\nwrote " + ", ".join(str(path) for path in written))
    return EXIT_OK


def _print_decoder_report(report, args) -> None:
    from milcompress.table import format_table

    kinds = ["stateful" if stateful else "stateless" for stateful in report.stateful]
    source = f"{args.inputs}" if args.inputs else f"{args.random} random"
    print(
        f"decoder ({kinds[0]} / {kinds[1]}): {report.sequences} prompts of {report.prompt_length} tokens ({source}), "
        f"then {report.decode_steps} greedy decode steps on the original's tokens; computed in {report.precision} "
        "by the reference executor\n"
    )
    rows = [
        ["prompt" if s.step == 0 else str(s.step), str(s.positions), f"{s.cosine:.5f}", f"{s.min_cosine:.5f}", f"{s.top1_agreement:.3f}", f"{s.kl:.4g}"]
        for s in report.steps
    ]
    print(format_table(["step", "positions", "logits cosine", "min cosine", "top-1 agree", "KL"], rows, [False] + [True] * 5))
    if report.perplexity is not None:
        print(f"\nperplexity of the given ids: original {report.perplexity[0]:.4g}, compressed {report.perplexity[1]:.4g}")


def _shape_option(text: str):
    from milcompress.signature import parse_shape

    name, separator, shape = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"--shape takes NAME=SHAPE, such as input_ids=1x8, not {text!r}")
    try:
        return name, parse_shape(shape)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


# ------------------------------------------------------------------------------------------------


EXAMPLES = {
    "top": """examples:
  milcompress demo --save demo                  # a model, inputs and calibration inputs to try everything on
  milcompress run demo/demo.mlpackage -o small.mlpackage --pipeline PALETTIZE_4BIT
  milcompress verify demo/demo.mlpackage small.mlpackage --inputs demo/inputs.npz --min-cosine 0.99
  milcompress pipelines                         # the named pipelines and their bits per weight""",
    "run": """examples:
  milcompress run demo/demo.mlpackage -o small.mlpackage --pipeline PALETTIZE_4BIT --report report.json
  milcompress run demo/demo.mlpackage -o small.mlpackage --passes 'palettize_weights{config=cfg.yaml},prune_weights_2_4'
  milcompress run demo/demo.mlpackage -o sized.mlpackage --target-bpw 4.5 --calibration demo/calibration.npz
  milcompress run demo/demo.mlpackage --pipeline INT4_BLOCK32 --dry-run
  milcompress run big.mlpackage -o small.mlpackage --pipeline INT4_BLOCK32 --workers 2
  milcompress run big.mlpackage -o small.mlpackage --target-bpw 4 --scheduler tcp://10.0.0.5:8786
  milcompress run demo/demo.mlpackage -o w8a8.mlpackage --pipeline INT8 --activations int8 --calibration demo/calibration.npz""",
    "inspect": """examples:
  milcompress inspect demo/demo.mlpackage
  milcompress inspect small.mlpackage --json""",
    "verify": """exit codes: 0 within every threshold given, 1 a threshold missed, 2 usage or input errors.

examples:
  milcompress verify demo/demo.mlpackage small.mlpackage --inputs demo/inputs.npz
  milcompress verify demo/demo.mlpackage small.mlpackage --inputs demo/inputs.npz --min-cosine 0.99 --min-top1 0.9 --max-kl 0.05
  milcompress verify demo/demo.mlpackage small.mlpackage --random 8 --precision float16""",
    "sweep": """writes OUT/sweep.md (the table), OUT/sweep.json (every point) and OUT/sweep.png (the plot).

examples:
  milcompress sweep demo/demo.mlpackage --inputs demo/inputs.npz
  milcompress sweep demo/demo.mlpackage --inputs demo/inputs.npz --calibration demo/calibration.npz --targets 3,4,6 --out sweep""",
    "pipelines": "example:\n  milcompress pipelines",
    "passes": "example:\n  milcompress passes",
    "demo": """examples:
  milcompress demo                # every named pipeline on a built-in model, as a table
  milcompress demo --save demo    # demo/demo.mlpackage, demo/inputs.npz, demo/calibration.npz""",
}


def _versions() -> str:
    """Ours and coremltools' versions, from package metadata (coremltools is not imported)."""
    from importlib import metadata

    from milcompress import __version__

    try:
        coremltools = metadata.version("coremltools")
    except metadata.PackageNotFoundError:
        coremltools = "not installed"
    return f"milcompress {__version__} (coremltools {coremltools})"


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="milcompress", description="Compress the weights of Core ML models.", epilog=EXAMPLES["top"], formatter_class=formatter)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and coremltools' output")
    parser.add_argument("--version", action="version", version=_versions(), help="print the versions of milcompress and coremltools")
    # `--verbose` is also accepted after the command; SUPPRESS keeps the top-level value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str):
        return commands.add_parser(name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".", epilog=EXAMPLES[name],
                                   formatter_class=formatter)

    run = command("run", "compress a saved .mlpackage")
    run.add_argument("model", help="input .mlpackage (never modified)")
    run.add_argument("-o", "--output", help="output .mlpackage (written atomically)")
    run.add_argument("--pipeline", help="a named pipeline (see `milcompress pipelines`)")
    run.add_argument("--config", help="a YAML config: ours or coremltools' OptimizationConfig layout")
    run.add_argument("--passes", help="passes as text: pass_id{option=value,...},...")
    run.add_argument("--target-bpw", help="one form per weight, chosen to average this many bits per weight with least error")
    run.add_argument("--calibration", help="with --target-bpw: an .npz of inputs for activation-aware errors and bias correction (a decoder: its token ids alone, one sequence per row); "
                     "with --activations: the inputs activation ranges are calibrated on")
    run.add_argument("--activations", choices=["int8", "uint8"],
                     help="also quantize activations (coremltools' linear_quantize_activations, iOS17+), last, calibrated on --calibration; alone: A8 with the weights as they are")
    run.add_argument("--activation-ranges", choices=["minmax", "percentile", "mse"],
                     help="with --activations: how each activation's range is chosen from the calibration: percentile (the default: "
                          "99.99%% of the values), minmax (coremltools') or mse (least quantization error)")
    run.add_argument("--sensitivity-seconds", help="with --target-bpw, and --calibration or a decoder's synthetic check: time to measure each weight's end-to-end "
                     "sensitivity in (a decoder's: every weight unless this bounds it, the largest first)")
    feedback = run.add_mutually_exclusive_group()
    feedback.add_argument("--error-feedback", action="store_true", default=None,
                          help="with --target-bpw and --calibration: re-encode matrix-like weights by error feedback (GPTQ) where held-out "
                               "calibration inputs confirm it helps (the default for decoders)")
    feedback.add_argument("--no-error-feedback", dest="error_feedback", action="store_false",
                          help="with --target-bpw: never re-encode by error feedback, not even a decoder's weights")
    run.add_argument("--no-synthetic-check", action="store_true",
                     help="with --target-bpw and no --calibration: do not run a decoder on synthetic token ids to measure each weight's sensitivity (faster; data-free errors alone)")
    run.add_argument("--on-unsupported", choices=["error", "skip"], help="forms the model's opset cannot hold: fail (default) or skip")
    run.add_argument("--dry-run", action="store_true", help="select and report only; write nothing")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--force", action="store_true", help="replace an existing output (never the input)")
    run.add_argument("--strict", action="store_true", help="fail (exit 2) where a config entry names no weight, op or op type of the model")
    run.add_argument("--workers", metavar="N", help="compress the weights in N processes (default: one per core on big models; 1: this process)")
    run.add_argument("--scheduler", metavar="ADDRESS", help="send the per-weight work to the Dask cluster of this scheduler (tcp://host:8786)")
    run.set_defaults(handler=_run)

    inspect = command("inspect", "how each weight of a model is stored")
    inspect.add_argument("model", help="the .mlpackage to inspect")
    inspect.add_argument("--json", action="store_true", help="every weight as JSON")
    inspect.set_defaults(handler=_inspect)

    verify = command("verify", "compare a compressed model's outputs with the original's")
    verify.add_argument("original", help="the original .mlpackage")
    verify.add_argument("compressed", help="the compressed .mlpackage")
    verify.add_argument("--inputs", help="an .npz of inputs by name: one sample, or stacked along a new first axis")
    verify.add_argument("--random", type=int, help="compare on N random inputs instead")
    verify.add_argument("--precision", choices=["float32", "float16"], default="float32", help="float16 emulates Core ML's GPU/ANE activations")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    verify.add_argument("--min-cosine", type=float, help="exit 1 if any output's mean cosine similarity is below this")
    verify.add_argument("--min-top1", type=float, help="exit 1 if any class-score output's top-1 agreement is below this")
    verify.add_argument("--max-kl", type=float, help="exit 1 if any class-score output's mean KL(original || compressed) is above this")
    verify.add_argument("--shape", type=_shape_option, action="append", metavar="NAME=SHAPE",
                        help="with --random: the shape of a flexible input, such as input_ids=1x8 (default: its default shape)")
    verify.add_argument("--steps", type=int, help="on a decoder given token ids or --random: greedy decode steps after the prompt (default: 8, or as many as the model has positions for after the prompt)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)

    sweep = command("sweep", "compress at several sizes and with the named pipelines of those sizes, verify each, plot")
    sweep.add_argument("model", help="the .mlpackage to sweep (never modified)")
    sweep.add_argument("--inputs", help="an .npz of inputs to verify on (as for verify)")
    sweep.add_argument("--random", type=int, help="verify on N random inputs instead")
    sweep.add_argument("--targets", help="bits per weight for --target-bpw, comma-separated (default 3,4,4.5,6,8)")
    sweep.add_argument("--pipelines", help="named pipelines to compare, comma-separated (default: those within half a bit of the targets' range)")
    sweep.add_argument("--calibration", help="an .npz of calibration inputs: the targets are also compressed calibrated")
    sweep.add_argument("--precision", choices=["float32", "float16"], default="float32", help="float16 emulates Core ML's GPU/ANE activations")
    sweep.add_argument("--out", help="directory for sweep.md, sweep.json and sweep.png (default MODEL_sweep)")
    sweep.set_defaults(handler=_sweep)

    command("pipelines", "the named pipelines and their bits per weight").set_defaults(handler=_pipelines)
    command("passes", "the registered milcompress passes").set_defaults(handler=_passes)
    demo = command("demo", "compress a built-in model with every named pipeline, or save it and inputs to try the commands on")
    demo.add_argument("--save", metavar="DIR", help="write DIR/demo.mlpackage, DIR/inputs.npz and DIR/calibration.npz instead")
    demo.add_argument("--force", action="store_true", help="with --save: replace existing files")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    try:
        with _signals_interrupt(), contextlib.nullcontext() if args.verbose else _quiet_coremltools():
            return args.handler(args)
    except _Interrupted as interrupt:
        # Cleanup has run (finally blocks and context managers, as the exception passed through).
        print(f"milcompress: interrupted by {interrupt.name}; temporary files removed", file=sys.stderr)
        return 128 + interrupt.signum
    except KeyboardInterrupt:  # Ctrl-C before the command's handlers were in place
        print("milcompress: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ConfigError, InputError, PreconditionError) as error:
        if args.verbose:
            raise
        print(f"milcompress: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (PassError, MilcompressError) as error:
        if args.verbose:
            raise
        print(f"milcompress: error: {error}", file=sys.stderr)
        return EXIT_PASS_FAILED
    except OSError as error:  # reading or writing a file outside the library's own checks
        if args.verbose:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"milcompress: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a pass (ours or coremltools') broke
        if args.verbose:
            raise
        print(f"milcompress: error: a pass failed: {type(error).__name__}: {error} (run with --verbose for the traceback)", file=sys.stderr)
        return EXIT_PASS_FAILED


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the command like KeyboardInterrupt, so every cleanup
    runs; `main` turns it into exit code 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


_IMPORT_RETRY_SECONDS = 0.05
_POPEN_FILE = re.compile(r"[/\\]multiprocessing[/\\]popen_\w+\.py$")  # where a worker process is being started


def _unsafe_to_interrupt(frame) -> bool:
    """Whether `frame` runs inside a module's import or the start of a worker process, where an
    exception would abort the process or strand a half-started worker."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or _POPEN_FILE.search(name):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _signals_interrupt():
    """While a command runs, SIGINT and SIGTERM raise `_Interrupted`; a second signal during the
    cleanup the first one started is ignored, so the cleanup finishes.

    A signal that arrives while a module is being imported, or a worker process started, waits
    until that is done (checked every 50 ms on SIGALRM): an extension module's initialisation may
    be C++ calling Python, and an exception raised through it aborts the process (torch's:
    "terminate called after throwing an instance of 'pybind11::error_already_set'", exit -6, no
    cleanup); a worker whose start is cut short prints a traceback (EOFError) of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    pending = []

    def interrupt(signum, frame):
        for each in handled:
            signal.signal(each, signal.SIG_IGN)
        if _unsafe_to_interrupt(frame):
            pending.append(signum)
            signal.setitimer(signal.ITIMER_REAL, _IMPORT_RETRY_SECONDS)
            return
        raise _Interrupted(signum)

    def retry(_signum, frame):
        if _unsafe_to_interrupt(frame):
            signal.setitimer(signal.ITIMER_REAL, _IMPORT_RETRY_SECONDS)
            return
        raise _Interrupted(pending[0])

    previous = {each: signal.signal(each, interrupt) for each in handled}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, retry)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for each, handler in previous.items():
            signal.signal(each, handler)


if __name__ == "__main__":
    sys.exit(main())
