"""Activation quantization as MIL ops: the only code that builds (or reads) the iOS17 runtime
`quantize` / `dequantize` signatures.

`check_activation_target(name, function)` refuses an opset without them (before iOS17);
`emit_quantize_pair(var, params, before_op, name)` writes `quantize(var)` -> `dequantize` into
the block that holds `before_op`, just before it, and returns the dequantized var; the caller
moves the chosen uses of `var` to it. The scale is a scalar of `var`'s float dtype (iOS17's
`quantize` takes its input's dtype for the scale), the zero point a scalar int8/uint8 or absent
(symmetric int8), `output_dtype` the integer dtype: as coremltools' activation passes write them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from milcompress._coremltools import IOS17, Operation, Var, building_in, mb, opset_of, target_name, types
from milcompress.errors import PreconditionError
from milcompress.ops.activations import ActivationQuantization

def check_activation_target(function_name: str, function) -> None:
    """PreconditionError unless the function's opset has runtime quantize ops (iOS17 and later)."""
    opset = function.opset_version
    if opset is None or opset < IOS17:
        found = "no opset" if opset is None else target_name(opset)
        raise PreconditionError(
            f"activation quantization needs runtime quantize/dequantize ops, which exist since iOS17; function "
            f"'{function_name}' is {found}: re-convert with minimum_deployment_target=ct.target.iOS17 or later",
            minimum_deployment_target="iOS17",
        )


def scale_dtype_of(var: Var):
    """The numpy dtype of the scale quantizing `var` (its own float dtype)."""
    return np.float16 if var.dtype == types.fp16 else np.float32


def emit_quantize_pair(var: Var, params: ActivationQuantization, before_op: Operation, name: str) -> Var:
    """quantize -> dequantize of `var`, placed before `before_op`; returns the dequantized var."""
    if opset_of(before_op) < IOS17:
        raise PreconditionError(f"quantize '{name}' needs iOS17 or later; the program is {target_name(opset_of(before_op))}", minimum_deployment_target="iOS17")
    scale = np.asarray(params.scale, dtype=scale_dtype_of(var))
    zero_point: Optional[np.ndarray] = params.zero_point
    with building_in(before_op.enclosing_block):
        quantized = mb.quantize(
            input=var, scale=scale, zero_point=zero_point, output_dtype=params.dtype, before_op=before_op, name=f"{name}_quantized"
        )
        return mb.dequantize(input=quantized, scale=scale, zero_point=zero_point, before_op=before_op, name=f"{name}_dequantized")

