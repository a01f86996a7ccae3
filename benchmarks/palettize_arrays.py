"""Palettization of ResNet50-sized weights: milcompress next to coremltools, same arrays, one run.

For each weight initialisation (normal, Student-t) and each palettization config, both libraries
compress every conv and linear weight of a hand-written ResNet50 (54 float16 tensors, 25.5M
weights) with their pure compress functions (no graph): milcompress.ops.palettize and
coremltools' palettize_weights.blockwise_compress. Reported per config: total wall time of each,
the speed ratio, and the mean weight SNR of each over the tensors both compressed, plus how many
tensors each could not compress.

    python benchmarks/palettize_arrays.py            # everything (coremltools needs ~20 minutes)
    python benchmarks/palettize_arrays.py --quick    # every 6th tensor, a few minutes

coremltools runs at its best by default: with kmeans1d installed it uses that exact 1-D solver
for float16 tensors (or groups) of 10,000+ values and scikit-learn's KMeans for the rest.
`--coremltools-kmeans sklearn` makes it use scikit-learn throughout, as a plain
`pip install coremltools scikit-learn` does.

Writes benchmarks/results/palettize_arrays[_quick][_sklearn].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models.resnet50 import resnet50_weights  # noqa: E402
from milcompress.config import PalettizeConfig  # noqa: E402
from milcompress.errors import NotCompressible  # noqa: E402
from milcompress.ops import palettize, snr_db  # noqa: E402
from milcompress.tools.table import format_table  # noqa: E402

CONFIGS = {
    "kmeans 2-bit per tensor": PalettizeConfig(nbits=2),
    "kmeans 4-bit per tensor": PalettizeConfig(nbits=4),
    "kmeans 6-bit per tensor": PalettizeConfig(nbits=6),
    "kmeans 8-bit per tensor": PalettizeConfig(nbits=8),
    "kmeans 2-bit groups of 16": PalettizeConfig(nbits=2, granularity="per_grouped_channel", group_size=16),
    "kmeans 4-bit groups of 16": PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16),
    "kmeans 6-bit groups of 16": PalettizeConfig(nbits=6, granularity="per_grouped_channel", group_size=16),
    "kmeans 8-bit groups of 16": PalettizeConfig(nbits=8, granularity="per_grouped_channel", group_size=16),
    "uniform 4-bit per tensor": PalettizeConfig(nbits=4, mode="uniform"),
}


def _coremltools_compress(weight: np.ndarray, config: PalettizeConfig) -> Optional[np.ndarray]:
    """coremltools' own static compress function; None where it declines the tensor."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    block_sizes = [0] * weight.ndim
    if config.granularity == "per_grouped_channel":
        block_sizes[0] = config.group_size
    params = palettize_weights.blockwise_compress(weight, config.mode.upper(), config.nbits, block_sizes)
    return None if params is None else palettize_weights.decompress(params)


def _ours_compress(weight: np.ndarray, config: PalettizeConfig) -> Optional[np.ndarray]:
    try:
        return palettize(weight, config).decompress()
    except NotCompressible:
        return None


def _run(compress, weights: Dict[str, np.ndarray], config: PalettizeConfig):
    snrs, seconds = {}, 0.0
    for name, w in weights.items():
        start = time.perf_counter()
        dense = compress(w, config)
        seconds += time.perf_counter() - start
        if dense is not None:
            snrs[name] = snr_db(w, dense)
    return seconds, snrs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 6th tensor only")
    parser.add_argument("--init", choices=["normal", "student_t", "both"], default="both")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--coremltools-kmeans", choices=["kmeans1d", "sklearn"], default="kmeans1d")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from coremltools.models.neural_network import quantization_utils

    if args.coremltools_kmeans == "sklearn":
        quantization_utils._HAS_KMEANS1D = False
    elif not quantization_utils._HAS_KMEANS1D:
        parser.error("kmeans1d is not installed; install it or pass --coremltools-kmeans sklearn")

    inits = ["normal", "student_t"] if args.init == "both" else [args.init]
    rows, records = [], []
    for init in inits:
        weights = resnet50_weights(init)
        if args.quick:
            weights = dict(list(weights.items())[::6])
        count = sum(w.size for w in weights.values())
        print(f"{init}: {len(weights)} tensors, {count:,} weights", flush=True)
        for label in args.configs:
            config = CONFIGS[label]
            ours_s, ours = _run(_ours_compress, weights, config)
            theirs_s, theirs = _run(_coremltools_compress, weights, config)
            both = sorted(set(ours) & set(theirs))
            ours_snr = float(np.mean([ours[n] for n in both])) if both else float("nan")
            theirs_snr = float(np.mean([theirs[n] for n in both])) if both else float("nan")
            record = {
                "init": init,
                "config": label,
                "tensors": len(weights),
                "milcompress_seconds": ours_s,
                "coremltools_seconds": theirs_s,
                "speedup": theirs_s / ours_s,
                "milcompress_mean_snr_db": ours_snr,
                "coremltools_mean_snr_db": theirs_snr,
                "snr_gain_db": ours_snr - theirs_snr,
                "milcompress_skipped": len(weights) - len(ours),
                "coremltools_skipped": len(weights) - len(theirs),
            }
            records.append(record)
            rows.append(
                [
                    init,
                    label,
                    f"{ours_s:.2f}",
                    f"{theirs_s:.2f}",
                    f"{record['speedup']:.1f}x",
                    f"{ours_snr:.3f}",
                    f"{theirs_snr:.3f}",
                    f"{record['snr_gain_db']:+.3f}",
                    f"{record['milcompress_skipped']}/{record['coremltools_skipped']}",
                ]
            )
            print(format_table(HEADER, rows[-1:], RIGHT).splitlines()[-1], flush=True)

    table = format_table(HEADER, rows, RIGHT)
    suffix = ("_quick" if args.quick else "") + ("_sklearn" if args.coremltools_kmeans == "sklearn" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/palettize_arrays.py" + (" --quick" if args.quick else "")
    if args.coremltools_kmeans == "sklearn":
        command += " --coremltools-kmeans sklearn"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"
    which = "kmeans1d + scikit-learn" if args.coremltools_kmeans == "kmeans1d" else "scikit-learn only"
    (args.out / f"palettize_arrays{suffix}.md").write_text(
        f"Produced by `{command}` ({machine}; coremltools k-means: {which}).\n\n```\n{table}\n```\n"
    )
    (args.out / f"palettize_arrays{suffix}.json").write_text(json.dumps(records, indent=2) + "\n")
    print()
    print(table)
    return 0


HEADER = ["init", "config", "ours s", "coremltools s", "speed", "ours SNR dB", "ct SNR dB", "SNR gain", "skipped ours/ct"]
RIGHT = [False, False, True, True, True, True, True, True, True]

if __name__ == "__main__":
    sys.exit(main())
