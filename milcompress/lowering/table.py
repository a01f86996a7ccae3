"""The table of what each compressed form lowers to on each opset, produced by lowering it.

`python -m milcompress.lowering.table` prints the markdown table in docs/forms.md; a test checks
the file is what this module produces, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from milcompress._coremltools import IOS16, IOS17, IOS18, building_in, mb, target_name, types
from milcompress.config import JointConfig, LinearQuantizeConfig, MagnitudePruneConfig, PalettizeConfig, ThresholdPruneConfig
from milcompress.errors import PreconditionError
from milcompress.lowering.emit import lower
from milcompress.ops import compress

ROWS: List[Tuple[str, str, object]] = [
    ("prune", "unstructured 50%", MagnitudePruneConfig(target_sparsity=0.5)),
    ("prune", "2:4 along input channels", MagnitudePruneConfig(n_m_ratio=(2, 4))),
    ("prune", "blocks of 2 along output channels", MagnitudePruneConfig(target_sparsity=0.5, block_size=2)),
    ("prune", "threshold", ThresholdPruneConfig(threshold=0.05, minimum_sparsity_percentile=0.1)),
    ("palettize", "1/2/4/6/8-bit, per tensor", PalettizeConfig(nbits=4)),
    ("palettize", "3-bit, per tensor", PalettizeConfig(nbits=3)),
    ("palettize", "4-bit, per group of 8 channels", PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=8)),
    ("palettize", "2-bit vectors of 2", PalettizeConfig(nbits=2, cluster_dim=2)),
    ("palettize", "4-bit with per-channel scale", PalettizeConfig(nbits=4, enable_per_channel_scale=True)),
    ("quantize", "int8/uint8, per tensor", LinearQuantizeConfig(granularity="per_tensor")),
    ("quantize", "int8/uint8, per channel", LinearQuantizeConfig()),
    ("quantize", "int8, per block of 16", LinearQuantizeConfig(granularity="per_block", block_size=16)),
    ("quantize", "int4/uint4, per channel", LinearQuantizeConfig(dtype="int4")),
    ("quantize", "int4/uint4, per block of 16", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=16)),
    ("joint", "prune 75% + 4-bit LUT", JointConfig(MagnitudePruneConfig(target_sparsity=0.75), PalettizeConfig(nbits=4))),
    (
        "joint",
        "prune 50% + 4-bit LUT with per-channel scale",
        JointConfig(MagnitudePruneConfig(target_sparsity=0.5), PalettizeConfig(nbits=4, enable_per_channel_scale=True)),
    ),
    ("joint", "prune 50% + int8 per channel", JointConfig(MagnitudePruneConfig(target_sparsity=0.5), LinearQuantizeConfig())),
]
OPSETS = (IOS16, IOS17, IOS18)


def _cell(config, opset, weight: np.ndarray) -> str:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, weight.shape[1]), dtype=types.fp16)], opset_version=opset)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=weight, name="w"), name="y")

    const = next(op for op in prog.functions["main"].operations if op.name == "w")
    try:
        with building_in(const.enclosing_block):
            lower(compress(weight, config), const)
    except PreconditionError as error:
        return f"error: needs {error.minimum_deployment_target}"
    ops = [op.op_type for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_")]
    return " -> ".join(o.removeprefix("constexpr_") for o in ops)


def markdown() -> str:
    weight = np.random.default_rng(0).normal(0, 0.1, (32, 48)).astype(np.float16)
    header = "| compression | form | " + " | ".join(target_name(o) for o in OPSETS) + " |"
    lines = [header, "|" + "---|" * (2 + len(OPSETS))]
    for kind, form, config in ROWS:
        cells = [_cell(config, opset, weight) for opset in OPSETS]
        lines.append(f"| {kind} | {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
