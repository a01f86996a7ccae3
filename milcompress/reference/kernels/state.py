"""Kernels for states (coremltools `defs/iOS18/states.py`, `defs/coreml_dialect/ops.py`).

A state input (`ct.StateType`, a KV cache) is a buffer that outlives one call. The interpreter
binds each state var of the function to a `StateCell` its session owns; the ops see the cell:
- `read_state(input)` copies the state's content into a new value;
- `coreml_update_state(state, value)` copies `value` into the state and returns it (a saved model
  holds `write_state`; coremltools loads it as `coreml_update_state`, merged with a following
  `read_state`, so the two forms compute the same).
Ops run in program order, so a `read_state` after an update sees the new content. Writes to a
state are whole-tensor copies: a partial write is a `slice_update` of the read value, then an
update (coremltools' torch frontend turns `cache[..., a:b, :] = k` into exactly that). These are
every state op of the iOS18 opset.
"""

from __future__ import annotations

import torch

from milcompress.reference.kernels import OpArgs, kernel


class StateCell:
    """The current content of one state, replaced (never modified in place) by each update."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: torch.Tensor):
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"StateCell({self.name!r}, shape={list(self.value.shape)})"


def _cell(args: OpArgs, name: str) -> StateCell:
    cell = args[name]
    if not isinstance(cell, StateCell):
        raise TypeError(f"'{name}' must be a state, not {type(cell).__name__}")
    return cell


@kernel("read_state")
def read_state(args: OpArgs):
    # Values are never modified in place by any kernel, so the copy the op promises can share memory.
    return _cell(args, "input").value


@kernel("coreml_update_state")
def coreml_update_state(args: OpArgs):
    cell = _cell(args, "state")
    value = args["value"]
    if tuple(value.shape) != tuple(cell.value.shape):
        raise ValueError(f"state '{cell.name}' holds {list(cell.value.shape)}; the value written is {list(value.shape)}")
    cell.value = value.to(cell.value.dtype)
    return cell.value
