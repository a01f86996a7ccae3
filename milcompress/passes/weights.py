"""Which op inputs hold weights, and how those weights are laid out.

`WEIGHT_INPUTS[op_type][input]` gives (output-channel axis, input-channel axis) of a weight read
by that input (None where they depend on op attributes, as for matmul). Any other input -- shapes,
axes, indices, masks, scalars -- is not a weight input, and a const feeding one is never
compressed. The list covers the ops coremltools' frontends emit for convolutional, recurrent and
transformer models (conv, linear, matmul, embeddings as gather, LSTM/GRU/RNN, normalisation
parameters, and consts folded into elementwise arithmetic such as position embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from milcompress.passes.graph import Use

_ROWS = (0, 1)  # [out, in, ...]
_VECTOR = (0, 0)

WEIGHT_INPUTS = {
    "conv": {"weight": (0, 1), "bias": _VECTOR},
    "conv_transpose": {"weight": (1, 0), "bias": _VECTOR},  # [C_in, C_out / groups, ...]
    "linear": {"weight": (0, 1), "bias": _VECTOR},
    "matmul": {"x": None, "y": None},  # depends on transpose_x / transpose_y
    "gather": {"x": _ROWS},  # embedding tables: one row per token
    "gather_along_axis": {"x": _ROWS},
    "gather_nd": {"x": _ROWS},
    # Initial states are learned weights too (coremltools compresses them): [batch, hidden].
    "lstm": {
        name: _ROWS
        for name in (
            "weight_ih", "weight_hh", "bias", "peephole", "weight_ih_back", "weight_hh_back", "bias_back", "peephole_back",
            "initial_h", "initial_c",
        )
    },
    "gru": {"weight_ih": _ROWS, "weight_hh": _ROWS, "bias": _VECTOR, "initial_h": _ROWS},
    "rnn": {"weight_ih": _ROWS, "weight_hh": _ROWS, "bias": _VECTOR, "initial_h": _ROWS},
    "batch_norm": {"mean": _VECTOR, "variance": _VECTOR, "gamma": _VECTOR, "beta": _VECTOR},
    "layer_norm": {"gamma": _VECTOR, "beta": _VECTOR},
    "instance_norm": {"gamma": _VECTOR, "beta": _VECTOR},
    "add": {"x": _ROWS, "y": _ROWS},
    "sub": {"x": _ROWS, "y": _ROWS},
    "mul": {"x": _ROWS, "y": _ROWS},
    "real_div": {"x": _ROWS, "y": _ROWS},
}


@dataclass(frozen=True)
class WeightLayout:
    """Output- and input-channel axes of a weight as stored in its const (None: unknown, because a
    reshape stands between the const and the op; only per-tensor forms then apply)."""

    output_axis: Optional[int]
    input_axis: Optional[int]


def is_weight_input(use: Use) -> bool:
    return use.op is not None and use.input in WEIGHT_INPUTS.get(use.op.op_type, {})


def layout(use: Use, rank: int) -> WeightLayout:
    """The layout of the const's weight as read by `use` (a weight input)."""
    axes = WEIGHT_INPUTS[use.op.op_type][use.input]
    if axes is None:  # matmul
        flipped = bool(getattr(use.op, f"transpose_{use.input}").val)
        rows_out = use.input == "x"  # x: [.., M, K] produces rows; y: [.., K, N] produces columns
        out_axis, in_axis = (-2, -1) if rows_out != flipped else (-1, -2)
        axes = (out_axis % rank, in_axis % rank)
    out_axis, in_axis = axes
    for op in reversed(use.through):  # map the consumer's axes back to the const's
        if op.op_type == "transpose":
            perm = [int(p) for p in op.perm.val]
            out_axis, in_axis = perm[out_axis], perm[in_axis]
        elif op.op_type == "squeeze" and op.axes is not None and op.axes.val is not None:
            before = op.x.rank
            squeezed = {int(a) % before for a in op.axes.val}
            kept = [axis for axis in range(before) if axis not in squeezed]
            out_axis, in_axis = kept[min(out_axis, len(kept) - 1)], kept[min(in_axis, len(kept) - 1)]
        elif op.op_type not in ("cast", "identity"):
            return WeightLayout(None, None)
    rank = max(rank, 1)
    return WeightLayout(min(out_axis, rank - 1), min(in_axis, rank - 1))


def common_layout(uses, rank: int) -> Tuple[Optional[WeightLayout], Optional[str]]:
    """The layout all weight uses agree on, or (None, why not)."""
    layouts = {layout(u, rank) for u in uses}
    if len(layouts) == 1:
        return layouts.pop(), None
    described = ", ".join(f"{u.describe()} ({layout(u, rank).output_axis})" for u in uses)
    return None, f"consumers disagree on the output-channel axis: {described}"
