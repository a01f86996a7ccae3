"""Test helpers for the reference executor's kernels.

`run_op(build, inputs)` builds a one-op program whose runtime inputs are `inputs` (name -> numpy
array) and runs it in the executor; `infer_op(build, inputs)` builds the same op on constant inputs,
so coremltools runs its own value inference (the oracle, where an op has one) and returns those
values. `build(**vars)` calls `mb.<op>(...)` and returns a var or a tuple of vars; arguments that
are not in `inputs` (attributes such as axes or modes) are given inside `build` as constants.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from milcompress._coremltools import IOS15, Function, Program, mb, types
from milcompress.reference.interpreter import Interpreter

_DTYPES = {
    np.dtype(np.float32): types.fp32,
    np.dtype(np.float16): types.fp16,
    np.dtype(np.int32): types.int32,
    np.dtype(np.bool_): types.bool,
}


def _as_list(result) -> list:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def op_program(build: Callable, inputs: Dict[str, np.ndarray], opset=IOS15) -> Program:
    """A program whose function `main` takes `inputs` (by name) and returns what `build` returns."""
    specs = {
        name: mb.placeholder(shape=np.shape(value), dtype=_DTYPES[np.asarray(value).dtype], allow_rank0_input=True)
        for name, value in inputs.items()
    }
    with Function(specs, opset) as function:
        function.set_outputs(_as_list(build(**function.inputs)))
    program = Program()
    program.add_function("main", function)
    return program


def run_op(build: Callable, inputs: Dict[str, np.ndarray], precision: str = "float32", opset=IOS15) -> List[np.ndarray]:
    program = op_program(build, inputs, opset)
    interpreter = Interpreter(program, precision=precision)
    outputs = interpreter.run(inputs)
    return [outputs[name] for name in interpreter.output_names]


def infer_op(build: Callable, inputs: Dict[str, np.ndarray], opset=IOS15) -> Optional[List[np.ndarray]]:
    """coremltools' value inference of the op on constant inputs; None where it has none."""
    results: list = []

    @mb.program(input_specs=[], opset_version=opset)
    def program():
        outputs = _as_list(build(**{name: np.asarray(value) for name, value in inputs.items()}))
        results.extend(outputs)
        return tuple(outputs)

    values = [var.val for var in results]
    if any(value is None for value in values):
        return None
    return [np.asarray(value) for value in values]
