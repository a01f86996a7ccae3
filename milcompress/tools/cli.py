"""The `milcompress` command line: a thin shell over the library.

Commands: run, inspect, verify, pipelines, passes, demo. Exit codes: 0 success, 1 verify found
NaN or infinite outputs, 2 usage, configuration, input or output errors, 3 a pass failed, 130 / 143
interrupted by SIGINT / SIGTERM (temporary files removed). Errors are one or two lines naming the
file, field or const (or the path and the cause of an I/O failure); `--verbose` adds the
traceback. Library code only logs; drawing (progress, tables) happens here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional

from milcompress.errors import ConfigError, InputError, MilcompressError, OutputError, PassError, PreconditionError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_PASS_FAILED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with our usage code (2, as argparse does) and one line."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise SystemExit(f"milcompress: error: {message}")


def _quiet_coremltools() -> None:
    """coremltools' progress bars, logs and warnings would bury our output; milcompress' own
    warnings (config entries that match nothing) are printed with the summary instead."""
    from functools import partialmethod

    import tqdm

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    logging.getLogger("milcompress").setLevel(logging.ERROR)  # its warnings are in the summary and the report
    warnings.filterwarnings("ignore")


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KB"


def _snr(value) -> str:
    if value is None:
        return "-"
    return "lossless" if value == math.inf else f"{value:.1f}"


class _Progress:
    """A one-line progress bar on stderr while weights are computed (only on a terminal)."""

    def __init__(self, label: str):
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int, name: str) -> None:
        if not self.enabled or not total:
            return
        width = 30
        filled = width * done // total
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{total} {name[:40]:<40}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# run


def _specs(args) -> list:
    from milcompress.passes.pipelines import compression_passes
    from milcompress.passes.spec import PassSpec, parse_passes

    chosen = [flag for flag in ("pipeline", "config", "passes", "target_bpw") if getattr(args, flag) is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --pipeline, --config, --passes, --target-bpw", field="run")
    if (args.calibration or args.sensitivity_seconds or args.error_feedback) and not args.target_bpw:
        raise ConfigError("--calibration, --sensitivity-seconds and --error-feedback go with --target-bpw", field="run")
    if args.error_feedback and not args.calibration:
        raise ConfigError("--error-feedback needs --calibration", field="run")
    if args.target_bpw is not None:
        options = {"target_bits_per_weight": args.target_bpw}
        if args.calibration:
            options["calibration"] = args.calibration
        if args.sensitivity_seconds:
            options["sensitivity_seconds"] = args.sensitivity_seconds
        if args.error_feedback:
            options["error_feedback"] = "true"
        specs = [PassSpec("milcompress::compress_to_size", options)]
    elif args.pipeline:
        specs = [PassSpec(p) for p in compression_passes(args.pipeline)]
    elif args.config:
        if not Path(args.config).is_file():
            raise InputError(f"{args.config}: no such config file")
        specs = [PassSpec("milcompress::compress_weights", {"config": args.config})]
    else:
        specs = parse_passes(args.passes)
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


def _run(args) -> int:
    from milcompress.passes.spec import format_passes

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
    from milcompress.packages import load_model, package_size, save_model, write_text_atomically

    model, _ = load_model(args.model)
    try:
        new_model, reports = run_passes(model, specs, progress=_Progress("compressing"), save=not args.dry_run)
    except OutputError as error:  # coremltools' temporary package, in the staging directory next to the output
        raise OutputError(args.output, error.cause) from None
    size_in = package_size(args.model)
    _print_summary(reports)
    if not args.dry_run:
        save_model(new_model, args.output, force=args.force, sources=[args.model], staging=staging)
    if args.report:  # after the model: a report problem never costs the compressed model
        write_text_atomically(args.report, json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    if args.dry_run:
        print(f"\ndry run: nothing written (input {_kb(size_in)})")
        return EXIT_OK
    size_out = package_size(args.output)
    print(f"\n{args.model}: {_kb(size_in)} -> {args.output}: {_kb(size_out)} ({size_in / size_out:.2f}x)")
    return EXIT_OK


def _print_summary(reports) -> None:
    from milcompress.tools.table import format_table

    for report in reports:
        weights = [r for r in report.records if len(r.shape) >= 2 and r.dtype.startswith("float")]
        rest = len(report.records) - len(weights)
        rows = []
        label = _labeller(r.function for r in weights)
        for r in weights:
            action = r.form if r.action == "compressed" else f"skipped: {r.reason}"
            if r.notes:
                action += f" ({'; '.join(r.notes)})"
            rows.append([label(r.function, r.name), "x".join(map(str, r.shape)), action, f"{r.bits_per_weight:.2f}", _snr(r.snr_db)])
        print(f"\n{report.pass_name}")
        for warning in report.warnings:
            print(f"warning: {warning}")
        if rows:
            print(format_table(["weight", "shape", "action", "bits/weight", "SNR dB"], rows, [False, False, False, True, True]))
        if rest:
            print(f"({rest} other consts left as they are: scalars, shapes, vectors; reasons in --report)")
        totals = report.totals()
        before, after = sum(r.bytes_before for r in weights), sum(r.bytes_after for r in weights)
        ratio = f"{before / after:.2f}x" if after else "-"
        print(
            f"compressed {totals['compressed']} of {len(weights)} weights; weight bytes {_kb(before)} -> {_kb(after)} ({ratio}); "
            f"mean SNR {_snr(totals['mean_snr_db'])} dB"
        )
        for r in weights:
            for warning in r.warnings:
                print(f"warning: {label(r.function, r.name)}: {warning}")
        if report.summary is not None:
            summary = report.summary
            print(
                f"size allocation: {summary['bits_per_weight']:.3f} bits per weight over all {len(summary['choices'])} weights it chose for "
                f"and the small ones kept dense ({summary['total_bytes']:,} of {summary['budget_bytes']:,} budget bytes)"
                + ("; activation-weighted" if summary["calibrated"] else "")
            )
            stages = summary.get("seconds") or {}
            if stages:
                print("time: " + ", ".join(f"{stage} {t:.1f} s" for stage, t in stages.items()))


def _labeller(functions):
    """Weights are named `function/const` only where a model has several functions."""
    if len(set(functions)) > 1:
        return lambda function, name: f"{function}/{name}"
    return lambda function, name: name


# ------------------------------------------------------------------------------------------------
# inspect, pipelines, passes


def _inspect(args) -> int:
    from milcompress.api import inspect_model
    from milcompress.packages import load_model, package_size
    from milcompress.tools.table import format_table

    model, _ = load_model(args.model)
    opsets, weights = inspect_model(model)
    size = package_size(args.model)
    if args.json:
        print(json.dumps({"model": str(args.model), "size_bytes": size, "opsets": opsets, "weights": [w.to_dict() for w in weights]}, indent=2))
        return EXIT_OK
    label = _labeller(opsets)
    rows = [[label(w.function, w.name), w.form, "x".join(map(str, w.shape)), f"{w.bits_per_weight:.2f}", _kb(w.stored_bytes)] for w in weights]
    print(format_table(["weight", "storage", "shape", "bits/weight", "size"], rows, [False, False, False, True, True]))
    stored = sum(w.stored_bytes for w in weights)
    count = sum(w.elements for w in weights)
    targets = ", ".join(f"{name}: {target}" for name, target in opsets.items())
    print(f"\n{len(weights)} weights, {count:,} values, {_kb(stored)} stored ({8 * stored / max(count, 1):.2f} bits/weight)")
    print(f"package {_kb(size)} on disk; opset {targets}")
    return EXIT_OK


def _pipelines(args) -> int:
    from milcompress.passes.pipelines import PIPELINES

    for name, (pass_ids, doc) in PIPELINES.items():
        print(f"{name:<24} {doc}  [{', '.join(pass_ids)}]")
    return EXIT_OK


def _passes(args) -> int:
    from milcompress.passes import ALL_PASSES

    for pass_id, cls in ALL_PASSES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{pass_id:<52} {doc.split(': ', 1)[-1]}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# demo


def _demo(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise InputError("the demo builds a PyTorch model: install torch (pip install 'milcompress[torch]')") from error
    from milcompress.tools.demo import convert_demo_model, run_demo
    from milcompress.tools.table import format_table

    print("Converting the built-in model (3 convs + attention block + classifier, iOS18, float16)...")
    model = convert_demo_model()
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
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# verify


def _number(value: float, digits: int = 1) -> str:
    return "inf" if value == math.inf else ("-inf" if value == -math.inf else f"{value:.{digits}f}")


def _verify(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise InputError("verify runs models with torch: install it (pip install 'milcompress[reference]')") from error
    from milcompress.packages import load_arrays
    from milcompress.reference import verify
    from milcompress.tools.table import format_table

    if (args.inputs is None) == (args.random is None):
        raise ConfigError("give exactly one of --inputs FILE.npz or --random N", field="verify")
    inputs = None if args.inputs is None else load_arrays(args.inputs)
    report = verify(args.original, args.compressed, inputs, random=args.random, precision=args.precision, seed=args.seed)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, allow_nan=False))
        return EXIT_OK if report.ok else EXIT_VERIFY_FAILED
    rows = [
        [
            o.name,
            _number(o.snr_db),
            _number(o.psnr_db),
            f"{o.cosine:.5f}",
            f"{o.min_cosine:.5f}",
            f"{o.max_abs_error:.3g}",
            "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}",
        ]
        for o in report.outputs
    ]
    source = f"{args.inputs}" if args.inputs else f"{args.random} random"
    print(f"{report.samples} samples ({source}), computed in {report.precision} by the reference executor\n")
    print(format_table(["output", "SNR dB", "PSNR dB", "cosine", "min cosine", "max abs err", "top-1 agree"], rows, [False] + [True] * 6))
    for problem in report.problems:
        print(f"FAILED: {problem}")
    return EXIT_OK if report.ok else EXIT_VERIFY_FAILED


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="milcompress", description="Compress the weights of Core ML models.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and coremltools' output")
    # `--verbose` is also accepted after the command; SUPPRESS keeps the top-level value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", parents=[common], help="compress a saved .mlpackage")
    run.add_argument("model", help="input .mlpackage (never modified)")
    run.add_argument("-o", "--output", help="output .mlpackage (written atomically)")
    run.add_argument("--pipeline", help="a named pipeline (see `milcompress pipelines`)")
    run.add_argument("--config", help="a YAML config: ours or coremltools' OptimizationConfig layout")
    run.add_argument("--passes", help="passes as text: pass_id{option=value,...},...")
    run.add_argument("--target-bpw", help="one form per weight, chosen to average this many bits per weight with least error")
    run.add_argument("--calibration", help="with --target-bpw: an .npz of inputs for activation-aware errors and bias correction")
    run.add_argument("--sensitivity-seconds", help="with --target-bpw and --calibration: time to measure each weight's end-to-end sensitivity")
    run.add_argument("--error-feedback", action="store_true",
                     help="with --target-bpw and --calibration: re-encode matrix-like weights by error feedback (GPTQ) where held-out calibration inputs confirm it helps")
    run.add_argument("--on-unsupported", choices=["error", "skip"], help="forms the model's opset cannot hold: fail (default) or skip")
    run.add_argument("--dry-run", action="store_true", help="select and report only; write nothing")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--force", action="store_true", help="replace an existing output (never the input)")
    run.add_argument("--strict", action="store_true", help="fail (exit 2) where a config entry names no weight, op or op type of the model")
    run.set_defaults(handler=_run)

    inspect = commands.add_parser("inspect", parents=[common], help="how each weight of a model is stored")
    inspect.add_argument("model")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)

    verify = commands.add_parser("verify", parents=[common], help="compare a compressed model's outputs with the original's")
    verify.add_argument("original", help="the original .mlpackage")
    verify.add_argument("compressed", help="the compressed .mlpackage")
    verify.add_argument("--inputs", help="an .npz of inputs by name: one sample, or stacked along a new first axis")
    verify.add_argument("--random", type=int, help="compare on N random inputs instead")
    verify.add_argument("--precision", choices=["float32", "float16"], default="float32", help="float16 emulates Core ML's GPU/ANE activations")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)

    commands.add_parser("pipelines", parents=[common], help="the named pipelines").set_defaults(handler=_pipelines)
    commands.add_parser("passes", parents=[common], help="the registered milcompress passes").set_defaults(handler=_passes)
    commands.add_parser("demo", parents=[common], help="compress a built-in model with every named pipeline").set_defaults(handler=_demo)
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
    if not args.verbose:
        _quiet_coremltools()
    try:
        with _signals_interrupt():
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


@contextlib.contextmanager
def _signals_interrupt():
    """While a command runs, SIGINT and SIGTERM raise `_Interrupted`; a second signal during the
    cleanup the first one started is ignored, so the cleanup finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)

    def interrupt(signum, frame):
        for each in handled:
            signal.signal(each, signal.SIG_IGN)
        raise _Interrupted(signum)

    previous = {each: signal.signal(each, interrupt) for each in handled}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


if __name__ == "__main__":
    sys.exit(main())
