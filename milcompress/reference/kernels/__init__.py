"""The op table of the reference executor: MIL op type -> one small torch function.

A kernel is `def kernel(args: OpArgs) -> value or tuple of values`, registered with
`@kernel("op_type", ...)`. `args` holds the op's input values by MIL input name (coremltools fills
every optional input with its default, so a kernel never guesses one) plus the op itself, for the
rare kernel that needs an output's declared type. Values are

- torch tensors for tensors and scalars: floats in float32 (the interpreter rounds outputs to
  float16 when emulating it), integers in int32 or int64, booleans in bool;
- Python strings for string inputs (`pad_type`, `mode`, ...);
- tuples of values for tuple inputs (`concat`'s `values`);
- a `StateCell` for a state input (`read_state`, `coreml_update_state`; see `state.py`).

Semantics come from coremltools' op definitions (`coremltools/converters/mil/mil/ops/defs/`), one
function per op type; an op type whose signature changed between opsets (constexpr ops in iOS18,
for example) is one kernel that looks at which inputs the op has. Adding an op is one entry here.
Kernels never see a Program and never walk blocks; control-flow kernels run their nested blocks
through `args.run_block`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Value = Any  # torch.Tensor | str | tuple of values
Kernel = Callable[["OpArgs"], Any]

KERNELS: Dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of each of `op_types`."""

    def register(function: Kernel) -> Kernel:
        for op_type in op_types:
            if op_type in KERNELS:
                raise ValueError(f"two kernels for op type '{op_type}'")
            KERNELS[op_type] = function
        return function

    return register


class OpArgs:
    """The input values of one op, by MIL input name, with typed accessors."""

    __slots__ = ("op", "values", "run_block")

    def __init__(self, op, values: Dict[str, Value], run_block: Callable = None):
        self.op = op
        self.values = values
        # run_block(block, inputs: Sequence[Value]) -> list of the block's output values.
        self.run_block = run_block

    def __contains__(self, name: str) -> bool:
        return self.values.get(name) is not None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def get(self, name: str, default: Value = None) -> Value:
        value = self.values.get(name)
        return default if value is None else value

    def int(self, name: str, default: Optional[int] = None) -> int:
        value = self.values.get(name)
        return default if value is None else int(value)

    def float(self, name: str, default: Optional[float] = None) -> float:
        value = self.values.get(name)
        return default if value is None else float(value)

    def bool(self, name: str, default: Optional[bool] = None) -> bool:
        value = self.values.get(name)
        return default if value is None else bool(value)

    def ints(self, name: str, default: Optional[Sequence[int]] = None) -> Optional[List[int]]:
        value = self.values.get(name)
        if value is None:
            return None if default is None else list(default)
        if isinstance(value, torch.Tensor):
            return [int(v) for v in value.reshape(-1).tolist()]
        return [int(v) for v in value]

    def str(self, name: str, default: Optional[str] = None) -> str:
        value = self.values.get(name)
        return default if value is None else str(value)

    def output_dtype(self, index: int = 0) -> torch.dtype:
        """The torch dtype the interpreter stores the op's `index`-th output in."""
        return torch_dtype(self.op.outputs[index].dtype)


def torch_dtype(builtin) -> torch.dtype:
    """The torch dtype the executor keeps a MIL builtin type in: floats in float32, bool, int8 and
    8-bit-or-narrower unsigned types (constexpr data) as themselves, other integers in int64."""
    from milcompress._coremltools import types

    if types.is_float(builtin):
        return torch.float32
    if builtin == types.bool:
        return torch.bool
    if builtin in (types.int8, types.int4):
        return torch.int8
    if types.is_int(builtin) and types.is_unsigned_int(builtin) and (types.is_sub_byte(builtin) or builtin == types.uint8):
        return torch.uint8
    if types.is_int(builtin):
        return torch.int64
    raise TypeError(f"no tensor dtype for MIL type {types.builtin_to_string(builtin)}")


def axis_of(axis: int, rank: int) -> int:
    """A possibly negative axis made non-negative."""
    return axis + rank if axis < 0 else axis


def supported_op_types() -> Tuple[str, ...]:
    return tuple(sorted(KERNELS))


# Each module registers its kernels on import.
from milcompress.reference.kernels import (  # noqa: E402, F401
    constexpr,
    control_flow,
    elementwise,
    nn,
    recurrent,
    state,
    tensor,
)
