"""The decompress pass: every constexpr chain back to a dense const.

`decompress_program(prog)` finds each constexpr chain (ours, coremltools', or from converting a
model compressed during training), reads its dense value with `lowering.read_back`, and puts a
const in its place named after the weight (our suffixes such as `_palettized` are dropped again).
Casts (`constexpr_cast`) are chains too. Returns a report with one record per chain.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Set

from milcompress._coremltools import AbstractGraphPass, Operation, Program, building_in, mb, stored_bytes
from milcompress.lowering import is_constexpr, read_back
from milcompress.lowering.emit import SUFFIX
from milcompress.ops import describe
from milcompress.passes.graph import walk_ops
from milcompress.passes.report import COMPRESSED, ConstRecord, Report, attach
from milcompress.progress import Progress, as_progress
from milcompress.passes.streaming import spill_emitted
from milcompress.storage import ScratchSpace, scratch_of

_SUFFIXES = sorted((f"_{s}" for s in SUFFIX.values()), key=len, reverse=True)


def _weight_name(var_name: str, taken: Set[str]) -> str:
    for suffix in _SUFFIXES:
        if var_name.endswith(suffix) and var_name[: -len(suffix)] not in taken:
            return var_name[: -len(suffix)]
    return var_name


def _producers(op: Operation) -> List[Operation]:
    """The constexpr ops and consts feeding `op`, nearest last."""
    found: List[Operation] = []
    for value in op.inputs.values():
        var = value
        if getattr(var, "op", None) is not None and (is_constexpr(var.op) or var.op.op_type == "const"):
            found.extend(_producers(var.op))
            found.append(var.op)
    return found


def decompress_program(prog: Program, pass_name: str = "milcompress::decompress_weights", progress: Optional[Progress] = None) -> Report:
    heads = []
    for op, function in walk_ops(prog):
        if not is_constexpr(op):
            continue
        if any(not is_constexpr(child) for out in op.outputs for child in out.child_ops) or any(
            out.consuming_blocks for out in op.outputs
        ):
            heads.append((op, function))
    taken = {op.name for op, _ in walk_ops(prog)}
    report = Report(pass_name)
    removals: Dict[object, List[Operation]] = defaultdict(list)
    scratch = scratch_of(prog)  # a program read on demand: the dense weights go to disk as they are made
    with as_progress(progress).stage("decompress", total=len(heads), unit="weights") as advance:
        for head, function in heads:
            _decompress_chain(head, function, taken, report, removals, scratch)
            advance(head.name)
    for block, ops in removals.items():
        # Remove the chains' ops once nothing reads them (a const may be shared by two chains).
        pending = list(dict.fromkeys(ops))
        with building_in(block):
            while True:
                dead = [op for op in pending if all(not out.child_ops and not out.consuming_blocks for out in op.outputs)]
                if not dead:
                    break
                block.remove_ops(dead)
                pending = [op for op in pending if op not in dead]
    attach(prog, report)
    return report


def _decompress_chain(
    head: Operation, function: str, taken: Set[str], report: Report, removals: Dict[object, List[Operation]], scratch: Optional[ScratchSpace] = None
) -> None:
    """A const in place of the chain ending at `head` (its ops are removed later, block by block)."""
    block = head.enclosing_block
    for var in head.outputs:
        if not any(not is_constexpr(child) for child in var.child_ops) and not var.consuming_blocks:
            continue
        back = read_back(var)
        name = _weight_name(var.name, taken)
        taken.add(name)
        with building_in(block):
            const = mb.const(val=back.dense, name=name, before_op=head)
            spill_emitted(scratch, const)
            block.replace_uses_of_var_after_op(
                anchor_op=head, old_var=var, new_var=const, no_check_var_types=True, force_replace=True
            )
        report.records.append(
            ConstRecord(
                name=name,
                function=function,
                consumers=[f"{c.name}({c.op_type})" for c in const.child_ops],
                shape=[int(d) for d in back.dense.shape],
                dtype=str(back.dense.dtype),
                action=COMPRESSED,
                form="dense",
                notes=[f"was {describe(back.form) if back.form is not None else ' -> '.join(back.chain)}"],
                bytes_before=_payload(head),
                bytes_after=int(back.dense.nbytes),
            )
        )
        del back
    removals[block].extend(_producers(head) + [head])


def _payload(head: Operation) -> int:
    """Bytes held by the consts feeding a constexpr chain, as stored (sub-byte types packed)."""
    consts = {id(op): op for op in _producers(head) if op.op_type == "const"}
    return sum(stored_bytes(op.outputs[0]) for op in consts.values())


class DecompressWeights(AbstractGraphPass):
    """milcompress::decompress_weights: every constexpr chain back to a dense const."""

    PASS_ID = "milcompress::decompress_weights"

    def __init__(self):
        super().__init__()
        self.progress: Optional[Progress] = None  # set by callers that draw progress

    def apply(self, prog: Program) -> None:
        decompress_program(prog, self.PASS_ID, self.progress)

    def __str__(self) -> str:
        return self.PASS_ID
