"""Kernels for const, identity and control flow (coremltools `defs/iOS15/control_flow.py`).

`cond` runs its true block (blocks[0]) or false block (blocks[1]); `while_loop` runs its condition
block (blocks[0]) and, while that yields true, its body block (blocks[1]), both on the loop
variables, as tf.while_loop does.
"""

from __future__ import annotations

from milcompress.reference.kernels import OpArgs, kernel


@kernel("const")
def const(args: OpArgs):
    from milcompress._coremltools import const_value
    from milcompress.reference.interpreter import value_from_numpy

    return value_from_numpy(const_value(args.op.outputs[0]))


@kernel("identity")
def identity(args: OpArgs):
    return args["x"]


@kernel("cond")
def cond(args: OpArgs):
    true_block, false_block = args.op.blocks
    outputs = args.run_block(true_block if bool(args["pred"]) else false_block, ())
    return tuple(outputs)


@kernel("while_loop")
def while_loop(args: OpArgs):
    condition_block, body_block = args.op.blocks
    values = tuple(args["loop_vars"])
    while bool(args.run_block(condition_block, values)[0]):
        values = tuple(args.run_block(body_block, values))
    return values
