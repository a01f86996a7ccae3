"""What milcompress offers, as plain data: its passes, the presets' configs, the named pipelines.

The command line lists these without importing coremltools or torch (`milcompress pipelines` and
`milcompress passes` answer at once), and `passes/` builds its pass classes and coremltools
pipelines from them. Nothing here imports coremltools' MIL.
- `BASE_PASSES`: pass id -> one-line description of the passes that take a config;
- `PRESETS`: pass id -> (base pass id, default config, one-line description);
- `PIPELINES`: name -> (pass ids, one-line description);
- `expected_bits_per_weight(name)`: what a pipeline stores per weight, measured on a synthetic
  weight; `closest(name, known)`: "did you mean" for names typed by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Dict, Iterable, Optional, Tuple

from milcompress.config import (
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
)

# The passes with no default config, by id: their classes' docstrings say the same (tested).
BASE_PASSES: Dict[str, str] = {
    "milcompress::compress_weights": "compress weights as the `config` option says",
    "milcompress::prune_weights": "magnitude or threshold pruning to sparse storage",
    "milcompress::palettize_weights": "look-up tables (k-means, uniform, unique, custom)",
    "milcompress::linear_quantize_weights": "int8/uint8/int4/uint4 with scales",
    "milcompress::joint_compress_weights": "prune, then palettize or quantize the non-zeros",
    "milcompress::decompress_weights": "every constexpr chain back to a dense const",
    "milcompress::compress_to_size": "one form per weight, chosen to meet a size with least error",
    "milcompress::quantize_activations": "int8 activations, calibrated quantize/dequantize pairs (iOS17; needs calibration)",
}

# Preset passes: pass id -> (base pass id, default config, one-line description).
PRESETS: Dict[str, Tuple[str, object, str]] = {
    "milcompress::palettize_weights_lossless": (
        "milcompress::palettize_weights",
        PalettizeConfig(mode="unique", granularity="auto"),
        "lossless LUT for weights already clustered in training: one table or one per channel group, whichever is smaller",
    ),
    "milcompress::prune_weights_zeros": (
        "milcompress::prune_weights",
        ThresholdPruneConfig(threshold=1e-12),
        "store weights that are at least half zeros sparsely",
    ),
    "milcompress::linear_quantize_weights_int8": ("milcompress::linear_quantize_weights", LinearQuantizeConfig(), "int8, one scale per output channel"),
    "milcompress::linear_quantize_weights_int4_block32": (
        "milcompress::linear_quantize_weights",
        LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32),
        "int4, one scale per 32 input channels (iOS18)",
    ),
    "milcompress::palettize_weights_8bit": ("milcompress::palettize_weights", PalettizeConfig(nbits=8), "8-bit k-means LUT per tensor"),
    "milcompress::palettize_weights_6bit": ("milcompress::palettize_weights", PalettizeConfig(nbits=6), "6-bit k-means LUT per tensor"),
    "milcompress::palettize_weights_4bit": ("milcompress::palettize_weights", PalettizeConfig(nbits=4), "4-bit k-means LUT per tensor"),
    "milcompress::palettize_weights_4bit_grouped": (
        "milcompress::palettize_weights",
        PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16),
        "4-bit k-means LUT per group of 16 output channels (iOS18)",
    ),
    "milcompress::prune_weights_50": ("milcompress::prune_weights", MagnitudePruneConfig(target_sparsity=0.5), "50% of weights pruned by magnitude"),
    "milcompress::prune_weights_75": ("milcompress::prune_weights", MagnitudePruneConfig(target_sparsity=0.75), "75% of weights pruned by magnitude"),
    "milcompress::prune_weights_2_4": ("milcompress::prune_weights", MagnitudePruneConfig(n_m_ratio=(2, 4)), "2 zeros in every 4 input channels"),
    "milcompress::joint_compress_weights_75_4bit": (
        "milcompress::joint_compress_weights",
        JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4)),
        "75% pruned, the rest in a 4-bit LUT (iOS18)",
    ),
}

PIPELINES: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "DEFAULT_PALETTIZATION": (("milcompress::palettize_weights_lossless",), "lossless LUTs for weights palettized during training"),
    "DEFAULT_PRUNING": (("milcompress::prune_weights_zeros",), "sparse storage for weights pruned during training"),
    "INT8": (("milcompress::linear_quantize_weights_int8",), "int8 per channel"),
    "INT4_BLOCK32": (("milcompress::linear_quantize_weights_int4_block32",), "int4 per block of 32 (iOS18)"),
    "PALETTIZE_8BIT": (("milcompress::palettize_weights_8bit",), "8-bit LUT per tensor"),
    "PALETTIZE_6BIT": (("milcompress::palettize_weights_6bit",), "6-bit LUT per tensor"),
    "PALETTIZE_4BIT": (("milcompress::palettize_weights_4bit",), "4-bit LUT per tensor"),
    "PALETTIZE_4BIT_GROUPED": (("milcompress::palettize_weights_4bit_grouped",), "4-bit LUT per 16 channels (iOS18)"),
    "PRUNE_50": (("milcompress::prune_weights_50",), "50% magnitude pruning"),
    "PRUNE_75": (("milcompress::prune_weights_75",), "75% magnitude pruning"),
    "PRUNE_2_4": (("milcompress::prune_weights_2_4",), "2:4 structured pruning"),
    "PRUNE_75_PALETTIZE_4BIT": (("milcompress::joint_compress_weights_75_4bit",), "75% pruning + 4-bit LUT (iOS18)"),
    "DECOMPRESS": (("milcompress::decompress_weights",), "every compressed weight back to dense"),
}


LOSSLESS = ("DEFAULT_PALETTIZATION", "DEFAULT_PRUNING")  # they keep what training left: no size of their own

SYNTHETIC_SHAPE = (256, 256)
"""The weight `expected_bits_per_weight` measures on: 65,536 normal values (a table's overhead
is a smaller share of a bigger weight)."""


@functools.lru_cache(maxsize=None)
def expected_bits_per_weight(name: str) -> Optional[float]:
    """Stored bits per weight of pipeline `name` on a synthetic float16 weight (`SYNTHETIC_SHAPE`,
    normal values); None where it depends on the weights (the lossless pipelines keep what
    training left, and decompression gives dense float16 back)."""
    pass_ids, _ = PIPELINES[name]
    configs = [PRESETS[p][1] for p in pass_ids if p in PRESETS]
    if name in LOSSLESS or not configs:
        return None
    import numpy as np

    from milcompress.ops import compress

    weight = np.random.default_rng(0).standard_normal(SYNTHETIC_SHAPE).astype(np.float16)
    (config,) = configs
    return 8.0 * compress(weight, _sized_alike(config)).nbytes / weight.size


def _sized_alike(config):
    """`config` with k-means palettes made uniform: a palette's size does not depend on how its
    entries are chosen, and uniform tables cost nothing to build (the listing stays instant)."""
    if isinstance(config, PalettizeConfig) and config.mode == "kmeans":
        return dataclasses.replace(config, mode="uniform")
    if isinstance(config, JointConfig):
        return dataclasses.replace(config, then=_sized_alike(config.then))
    return config


def closest(name: str, known: Iterable[str]) -> str:
    """A hint naming the known name nearest to `name` (case-insensitive), as " (did you mean X?)";
    empty where none is near."""
    known = list(known)
    by_upper = {k.upper(): k for k in known}
    found = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.6)
    return f" (did you mean {by_upper[found[0]]}?)" if found else ""
