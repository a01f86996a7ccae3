"""A program's dataflow as a networkx graph, built once per pass run, and the weights in it.

Nodes are ops (every function, every nested cond/while block) and each function's inputs; an edge
runs from the op producing a var to each op reading it, labelled with the input name. Whole-
program questions are answered here:
- `uses(const)`: which op inputs a const reaches, looking through layout-only ops (transpose,
  reshape, cast, ...), and whether it is a block output;
- `depth(op)`: how many ops separate an op from the program inputs and outputs (how deep in the
  network a weight sits);
- `consts()`: every const op, in program order.

This module only reads programs; passes/ rewrites them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import networkx as nx

from milcompress._coremltools import Block, Operation, Program, Var

# Ops that only move or retype data: a weight seen through them is still a weight.
LAYOUT_OPS = frozenset({"transpose", "reshape", "expand_dims", "squeeze", "cast", "identity"})
LAYOUT_DATA_INPUT = "x"


@dataclass(frozen=True)
class Use:
    """One place a const's value is read: input `input` of `op`, after the layout ops `through`.

    `op` is None when the value leaves a block as one of its outputs.
    """

    op: Optional[Operation]
    input: str
    through: Tuple[Operation, ...] = ()

    def describe(self) -> str:
        if self.op is None:
            return "block output"
        via = "".join(f"{o.op_type}->" for o in self.through)
        return f"{via}{self.op.name}({self.op.op_type}).{self.input}"


def _walk_block(block: Block, function: str) -> Iterator[Tuple[Operation, str]]:
    for op in block.operations:
        yield op, function
        for inner in op.blocks:
            yield from _walk_block(inner, function)


def walk_ops(prog: Program) -> Iterator[Tuple[Operation, str]]:
    """Every op of every function, nested blocks included, with its function's name."""
    for name, function in prog.functions.items():
        yield from _walk_block(function, name)


class ProgramGraph:
    """The dataflow graph of a program; see the module docstring."""

    def __init__(self, prog: Program):
        self.graph = nx.DiGraph()
        self.function_of: Dict[Operation, str] = {}
        self._order: List[Operation] = []
        outputs = set()
        for name, function in prog.functions.items():
            for var in function.inputs.values():
                self.graph.add_node(("input", name, var.name))
            outputs.update(id(v) for v in function.outputs)
        self._function_outputs = outputs
        for op, function in walk_ops(prog):
            self.function_of[op] = function
            self._order.append(op)
            self.graph.add_node(op)
            for input_name, value in op.inputs.items():
                for var in value if isinstance(value, (list, tuple)) else (value,):
                    if not isinstance(var, Var):
                        continue
                    source = var.op if var.op is not None else ("input", function, var.name)
                    if source in self.graph:
                        self.graph.add_edge(source, op, input=input_name)
        self._depth: Optional[Dict[object, Tuple[int, int]]] = None

    def ops(self) -> List[Operation]:
        """Every op of every function and nested block, in program order."""
        return list(self._order)

    def consts(self) -> List[Operation]:
        return [op for op in self._order if op.op_type == "const"]

    def uses(self, const: Operation) -> List[Use]:
        """The op inputs (and block outputs) the const's value reaches through layout-only ops."""
        return self._uses_of_var(const.outputs[0], ())

    def _uses_of_var(self, var: Var, through: Tuple[Operation, ...]) -> List[Use]:
        found: List[Use] = []
        for child in var.child_ops:
            for input_name, value in child.inputs.items():
                values = value if isinstance(value, (list, tuple)) else (value,)
                if not any(v is var for v in values):
                    continue
                if child.op_type in LAYOUT_OPS and input_name == LAYOUT_DATA_INPUT:
                    found.extend(self._uses_of_var(child.outputs[0], through + (child,)))
                else:
                    found.append(Use(child, input_name, through))
        if var.consuming_blocks:
            found.append(Use(None, "block output", through))
        return found

    def depth(self, op: Operation) -> Tuple[int, int]:
        """(ops from the nearest program input, ops to the nearest program output) along dataflow."""
        if self._depth is None:
            self._depth = self._compute_depths()
        return self._depth.get(op, (0, 0))

    def _compute_depths(self) -> Dict[object, Tuple[int, int]]:
        starts = [n for n in self.graph if isinstance(n, tuple)]
        ends = [op for op in self._order if any(id(v) in self._function_outputs for v in op.outputs)]
        from_inputs = nx.multi_source_dijkstra_path_length(self.graph, starts) if starts else {}
        to_outputs = nx.multi_source_dijkstra_path_length(self.graph.reverse(copy=False), ends) if ends else {}
        nodes = set(from_inputs) | set(to_outputs)
        return {n: (int(from_inputs.get(n, 0)), int(to_outputs.get(n, 0))) for n in nodes}
