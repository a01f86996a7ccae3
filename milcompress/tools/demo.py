"""The built-in demonstration: compress a fixed set of weight tensors every supported way.

`demo_weights()` is a deterministic set of tensors shaped like a small network's (a conv layer,
a heavy-tailed linear layer, an embedding table, and a layer already clustered to 16 values as
training-time palettization leaves it). `run_demo()` compresses them with each config in
`DEMO_CONFIGS` and returns one row per config: bits per weight, mean and worst SNR, time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from milcompress.config import (
    AlgorithmConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
)
from milcompress.errors import NotCompressible
from milcompress.ops import compress, snr_db

DEMO_CONFIGS: List[Tuple[str, AlgorithmConfig]] = [
    ("int8 per channel", LinearQuantizeConfig()),
    ("int4 per block 32", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32)),
    ("palette 8-bit", PalettizeConfig(nbits=8)),
    ("palette 6-bit", PalettizeConfig(nbits=6)),
    ("palette 4-bit", PalettizeConfig(nbits=4)),
    ("palette 4-bit, groups of 16", PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16)),
    ("palette 4-bit uniform", PalettizeConfig(nbits=4, mode="uniform")),
    ("palette 2-bit", PalettizeConfig(nbits=2)),
    ("palette unique", PalettizeConfig(mode="unique")),
    ("prune 50%", MagnitudePruneConfig(target_sparsity=0.5)),
    ("prune 2:4", MagnitudePruneConfig(n_m_ratio=(2, 4))),
    ("prune 75% + palette 4-bit", JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4))),
]


def demo_weights() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    table = np.sort(rng.normal(0, 0.05, 16))
    return {
        "conv 128x64x3x3": (rng.normal(0, (2 / 576) ** 0.5, (128, 64, 3, 3))).astype(np.float16),
        "linear 512x256 (heavy-tailed)": (rng.standard_t(2.5, (512, 256)) * 0.02).astype(np.float16),
        "embedding 1000x64": rng.normal(0, 1.0, (1000, 64)).astype(np.float16),
        "linear 256x128 (16 values)": table[rng.integers(0, 16, (256, 128))].astype(np.float16),
    }


@dataclass(frozen=True)
class DemoRow:
    config: str
    bits_per_weight: float
    mean_snr_db: float
    worst_snr_db: float
    seconds: float
    skipped: Tuple[str, ...]  # "tensor: reason" for tensors the config cannot compress


def run_demo() -> List[DemoRow]:
    weights = demo_weights()
    rows = []
    for name, config in DEMO_CONFIGS:
        bits = count = 0
        snrs, skipped = [], []
        start = time.perf_counter()
        for tensor, w in weights.items():
            try:
                params = compress(w, config)
            except NotCompressible as reason:
                skipped.append(f"{tensor}: {reason}")
                bits, count = bits + 8 * w.nbytes, count + w.size
                continue
            bits, count = bits + 8 * params.nbytes, count + w.size
            snrs.append(snr_db(w, params.decompress()))
        seconds = time.perf_counter() - start
        finite = [s for s in snrs if np.isfinite(s)]
        mean = float(np.mean(finite)) if finite else float("inf")
        rows.append(DemoRow(name, bits / count, mean, min(snrs) if snrs else float("nan"), seconds, tuple(skipped)))
    return rows
