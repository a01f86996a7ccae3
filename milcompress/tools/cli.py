"""The `milcompress` command line: a thin shell over the library.

Exit codes: 0 success, 2 usage, configuration or input errors, 3 a pass failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from milcompress.errors import ConfigError, InputError, MilcompressError, PassError, PreconditionError

EXIT_OK, EXIT_USAGE, EXIT_PASS_FAILED = 0, 2, 3


def _demo(args: argparse.Namespace) -> int:
    from milcompress.tools.demo import demo_weights, run_demo
    from milcompress.tools.table import format_table

    weights = demo_weights()
    total = sum(w.size for w in weights.values())
    print(f"Compressing {len(weights)} built-in float16 tensors ({total:,} weights):")
    for name, w in weights.items():
        print(f"  {name}")
    print()
    rows = run_demo()
    snr = lambda v: "lossless" if v == float("inf") else f"{v:.1f}"  # noqa: E731
    body = [
        [r.config, f"{r.bits_per_weight:.2f}", f"{16 / r.bits_per_weight:.2f}x", snr(r.mean_snr_db), snr(r.worst_snr_db), f"{r.seconds * 1000:.0f}"]
        for r in rows
    ]
    print(format_table(["config", "bits/weight", "vs fp16", "mean SNR dB", "worst SNR dB", "ms"], body, [False, True, True, True, True, True]))
    notes = [(r.config, s) for r in rows for s in r.skipped]
    if notes:
        print("\nLeft dense (counted at 16 bits per weight):")
        for config, note in notes:
            print(f"  {config}: {note}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="milcompress", description="Compress the weights of Core ML models.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="compress a built-in set of weights every supported way")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
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


if __name__ == "__main__":
    sys.exit(main())
