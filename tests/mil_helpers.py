"""Small MIL programs for tests, and helpers to lower a weight in one and look at the result."""

from __future__ import annotations

import numpy as np

from milcompress._coremltools import IOS16, IOS17, IOS18, AvailableTarget, mb, types

OPSETS = {"iOS16": IOS16, "iOS17": IOS17, "iOS18": IOS18}


def linear_program(weight: np.ndarray, opset: AvailableTarget = IOS18, name: str = "w"):
    """x[1, in] -> linear(weight[out, in]) -> y, with the weight as a const named `name`."""
    out_features, in_features = weight.shape
    dtype = types.fp16 if weight.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, in_features), dtype=dtype)], opset_version=opset)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=weight, name=name), name="y")

    return prog


def conv_program(weight: np.ndarray, opset: AvailableTarget = IOS18, name: str = "w"):
    """x[1, Cin, 8, 8] -> conv(weight[Cout, Cin, kh, kw]) -> y."""
    dtype = types.fp16 if weight.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, weight.shape[1], 8, 8), dtype=dtype)], opset_version=opset)
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=weight, name=name), pad_type="same", name="y")

    return prog


def const_named(prog, name: str):
    for op in prog.functions["main"].operations:
        if op.op_type == "const" and op.name == name:
            return op
    raise KeyError(name)


def op_types(prog):
    return [op.op_type for op in prog.functions["main"].operations]


def replace_const(prog, name: str, params):
    """Lower `params` for const `name` and make its consumers read the result: the final var."""
    from milcompress._coremltools import building_in
    from milcompress.lowering import lower

    const = const_named(prog, name)
    block = const.enclosing_block
    with building_in(block):
        var = lower(params, const)
        block.replace_uses_of_var_after_op(anchor_op=const, old_var=const.outputs[0], new_var=var)
        block.remove_ops([const])
    return var
