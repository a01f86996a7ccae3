"""What a program's weights are and how each is stored.

A weight is a value read through a weight input (see `weights.py`): a const, or the last op of a
constexpr chain. For each: its storage form ("dense" or the compressed form), shape, dtype, the
bytes its stored data takes, bits per weight, and the ops that read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List

from milcompress._coremltools import Program, stored_bytes, target_name
from milcompress.lowering import is_constexpr, read_back
from milcompress.ops import describe
from milcompress.passes.graph import Use, walk_ops
from milcompress.passes.weights import is_weight_input


@dataclass
class WeightInfo:
    name: str
    function: str
    form: str
    shape: List[int]
    dtype: str
    stored_bytes: int
    consumers: List[str]

    @property
    def elements(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.stored_bytes / self.elements if self.elements else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bits_per_weight"] = round(self.bits_per_weight, 4)
        return data


def _chain_consts(op, found: dict) -> dict:
    """The const ops feeding `op` through constexpr ops (each once), keyed by identity."""
    if op.op_type == "const":
        found[id(op)] = op
        return found
    for value in op.inputs.values():
        producer = getattr(value, "op", None)
        if producer is not None and id(producer) not in found and (producer.op_type == "const" or is_constexpr(producer)):
            _chain_consts(producer, found)
    return found


def _stored_bytes(op) -> int:
    return sum(stored_bytes(c.outputs[0]) for c in _chain_consts(op, {}).values())


def inspect_program(prog: Program) -> List[WeightInfo]:
    weights: List[WeightInfo] = []
    for op, function in walk_ops(prog):
        if op.op_type != "const" and not is_constexpr(op):
            continue
        for var in op.outputs:
            uses = [
                Use(child, name)
                for child in var.child_ops
                if not is_constexpr(child)
                for name, value in child.inputs.items()
                if value is var
            ]
            if not uses or not all(is_weight_input(u) for u in uses):
                continue
            back = read_back(var)
            dense = back.dense
            if back.form is not None:
                form = describe(back.form)
            elif is_constexpr(op):
                form = " -> ".join(t.removeprefix("constexpr_") for t in back.chain)
            else:
                form = f"dense {dense.dtype}"
            weights.append(
                WeightInfo(
                    name=var.name,
                    function=function,
                    form=form,
                    shape=[int(d) for d in dense.shape],
                    dtype=str(dense.dtype),
                    stored_bytes=_stored_bytes(op),
                    consumers=[u.describe() for u in uses],
                )
            )
    return weights


def opsets(prog: Program) -> dict:
    """Each function's deployment target."""
    return {name: target_name(f.opset_version) if f.opset_version is not None else "iOS13" for name, f in prog.functions.items()}
