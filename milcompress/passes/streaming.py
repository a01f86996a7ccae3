"""Streaming: what a pass holds between weights goes to disk when its program is read on demand.

A program loaded from a saved package (`packages.program_of`) reads each weight from the package
when asked and carries a `storage.ScratchSpace` (`storage.scratch_of(prog)`). For such a program
the passes keep, instead of in memory:
- each computed compressed form, between computing it and rewriting the program with it
  (`keep_form` / `storage.restored`);
- each const the rewrite emits (indices, tables, scales, ...), written to the scratch blob file
  as soon as it is made and read back on demand (`spill_emitted`),
so memory stays near one weight's working set whatever the model's size. When the model is
saved, coremltools' writer reads every const on demand, in program order, and writes the same
bytes as for a program held in memory. A program held in memory (from `ct.convert`, or built in
Python) has no scratch space and these functions leave everything as it is.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from milcompress._coremltools import blob_ref_of, dtype_name, read_on_demand
from milcompress.lowering import is_constexpr
from milcompress.storage import DTYPES, ScratchSpace, scratch_of

SMALLEST_FILE_VALUE = 10
"""Consts of fewer elements are written into the program itself (coremltools' rule), so they stay
in memory."""


def keep_form(scratch: Optional[ScratchSpace], params):
    """`params` (a compressed form), kept on disk when streaming; `storage.restored` gives it back."""
    return params if scratch is None else scratch.keep_object(params)


def spill_emitted(scratch: Optional[ScratchSpace], var) -> None:
    """Write the values of the consts feeding `var` (the last op of an emitted constexpr chain, or
    a const) to the scratch blob file and make them read on demand."""
    if scratch is None or var.op is None:
        return
    pending = [var.op]
    while pending:
        op = pending.pop()
        if op.op_type == "const":
            _spill_const(scratch, op.outputs[0])
        elif is_constexpr(op):
            pending.extend(v.op for v in op.inputs.values() if getattr(v, "op", None) is not None)


def _spill_const(scratch: ScratchSpace, var) -> None:
    if blob_ref_of(var) is not None:
        return
    value = var.val
    if not isinstance(value, np.ndarray) or value.size < SMALLEST_FILE_VALUE:
        return
    if dtype_name(var.dtype) not in DTYPES:
        return
    # Whole bytes, sub-byte types unpacked as they are in memory: reading back is a mapping, no
    # unpacking (coremltools reads a const's value many times while it writes the model).
    read_on_demand(var, scratch.keep_array(value))
