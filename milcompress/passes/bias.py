"""Bias correction in a program: fold the mean output shift of each compressed weight into its bias.

`correct_biases(plans, statistics)` runs after the forms are chosen and before they are lowered
(it needs each weight's dense value and its compressed form). For each planned weight it finds the
one conv or linear op that reads it, computes that op's mean output shift from the calibration
statistics (`ops.bias.output_shift`) and replaces the op's bias const by the corrected one.
`corrected_bias` is the same computation without touching the program, for what-if runs. A weight
is left alone, with the reason in its record's notes, when:
- it feeds more than one op, or an op other than conv / linear (a matmul adds no bias);
- its op's bias is not a const read by that op alone (changing it would change another op too);
- the calibration run never reached the op.
"""

from __future__ import annotations

from typing import List, Mapping, Tuple, Union

import numpy as np

from milcompress._coremltools import Operation, Var, building_in, mb
from milcompress.ops.bias import output_shift
from milcompress.storage import restored


def corrected_bias(const: Operation, value: np.ndarray, approximation: np.ndarray, statistics: Mapping[str, object]) -> Union[Tuple[Var, np.ndarray], str]:
    """(the bias var, its corrected value) for the weight `const` (dense `value`) stored as
    `approximation`; or why its bias cannot be corrected."""
    var = const.outputs[0]
    consumers = list(var.child_ops)
    if len(consumers) != 1:
        return f"the weight feeds {len(consumers)} ops"
    op = consumers[0]
    if op.op_type not in ("conv", "linear") or op.inputs.get("weight") is not var:
        return f"read by a {op.op_type} op, which adds no bias per output channel"
    bias = op.inputs.get("bias")
    if bias is None or bias.op is None or bias.op.op_type != "const" or len(bias.child_ops) != 1 or bias.val is None:
        return "its op has no bias const of its own"
    record = statistics.get(var.name)
    if record is None or record.count == 0:
        return "the calibration inputs never reached its op"
    groups = int(op.inputs["groups"].val) if op.op_type == "conv" and op.inputs.get("groups") is not None else 1
    delta = approximation.astype(np.float64) - value.astype(np.float64)
    try:
        shift = output_shift(delta, record.mean, op.op_type, groups)
    except ValueError as error:
        return str(error)
    old = np.asarray(bias.val)
    if shift.size != old.size or not np.all(np.isfinite(shift)):
        return f"the shift ({shift.size} values) does not fit the bias ({old.size})"
    return bias, (old.astype(np.float64) - shift.reshape(old.shape)).astype(old.dtype)


def correct_biases(plans: List, statistics: Mapping[str, object]) -> int:
    """Correct the bias of every planned weight that can be (see the module docstring); returns how many."""
    corrected = 0
    for plan in plans:
        found = corrected_bias(plan.candidate.const, plan.candidate.value, restored(plan.params).decompress(), statistics)
        if isinstance(found, str):
            plan.record.notes.append(f"bias not corrected: {found}")
            continue
        bias, value = found
        old = np.asarray(bias.val)
        op = bias.child_ops[0]
        block = op.enclosing_block
        with building_in(block):
            new = mb.const(val=value, before_op=op, name=f"{bias.op.name}_corrected")
        block.replace_uses_of_var_after_op(anchor_op=new.op, old_var=bias, new_var=new, no_check_var_types=True)
        block.remove_ops([bias.op])
        shift = np.abs(old.astype(np.float64) - value.astype(np.float64))
        plan.record.notes.append(
            f"bias '{bias.op.name}' corrected by the mean output shift compression adds: largest {float(shift.max()):.3g}"
            f" (bias magnitude {float(np.max(np.abs(old))) if old.size else 0.0:.3g}), from {statistics[plan.candidate.const.outputs[0].name].count:,} calibration input vectors"
        )
        corrected += 1
    return corrected
