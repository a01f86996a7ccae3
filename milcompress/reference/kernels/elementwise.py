"""Kernels for elementwise and reduction ops: coremltools `defs/iOS15/elementwise_binary.py`,
`elementwise_unary.py` (with `cast`), `activation.py` and `reduction.py`, their iOS17 variants
(`defs/iOS17/elementwise_unary.py`, `activation.py`, `reduction.py`), and `select`
(`defs/iOS15/control_flow.py`).

The iOS17 variants change only which dtypes an input may have (activation `alpha`/`beta`, `epsilon`,
`cast`'s targets, argmax/argmin's `output_dtype`), which a kernel computing in float32 never sees,
so one kernel serves every opset.

Integer results follow coremltools' value inference, which is numpy on the declared integer type:
arithmetic wraps at the declared width (int32 overflow wraps; `cast` to int8/uint8/int16/uint16
wraps), a float result stored in an integer type is truncated toward zero (`cast` from float, and
`real_div`, `reduce_mean`, `reduce_l2_norm`, `exp2`, ... on int32), `floor_div` rounds toward
negative infinity, `mod` takes the sign of the divisor, and integer division or `mod` by zero gives
0. Broadcasting follows numpy (torch's broadcasting is numpy's).

Where an op's docstring and its value inference disagree, the docstring (the op's definition) wins:
`clamped_relu` is `min(beta, x)` for `x >= 0` and `min(beta, alpha * x)` otherwise, which its value
inference reproduces only for `beta >= 0`.
"""

from __future__ import annotations

import math
from typing import Callable, List

import torch

from milcompress._coremltools import types
from milcompress.reference.kernels import OpArgs, axis_of, kernel

# -- shared helpers ---------------------------------------------------------------------------

Reduction = Callable[[torch.Tensor, List[int], bool], torch.Tensor]


# MIL integer type -> the torch dtype of its width (results wrap to it, as numpy's astype wraps).
_INTEGER_WIDTHS = {
    types.int8: torch.int8,
    types.uint8: torch.uint8,
    types.int16: torch.int16,
    types.uint16: torch.uint16,
    types.int32: torch.int32,
}


def _as_declared(args: OpArgs, value: torch.Tensor) -> torch.Tensor:
    """`value` converted to the op's declared output type as numpy's `astype` converts: floats
    stay float32 (the interpreter rounds to float16 where it emulates it), nonzero (NaN included)
    is True, and an integer type truncates a float toward zero, then wraps to its width."""
    declared = args.op.outputs[0].dtype
    if types.is_float(declared):
        return value.to(torch.float32)
    if declared == types.bool:
        return value.to(torch.bool)
    if declared not in _INTEGER_WIDTHS:
        raise TypeError(f"no integer storage for MIL type {types.builtin_to_string(declared)}")
    if value.is_floating_point():
        value = value.trunc().to(torch.int64)
    return value.to(_INTEGER_WIDTHS[declared])


def _in_float(x: torch.Tensor) -> torch.Tensor:
    """`x` itself if it is float; an integer tensor in float64 (exact for every int32)."""
    return x if x.is_floating_point() else x.to(torch.float64)


def _without_zeros(divisor: torch.Tensor) -> torch.Tensor:
    return torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def _integer_division(x: torch.Tensor, y: torch.Tensor, divide: Callable) -> torch.Tensor:
    """`divide(x, y)` on integers, 0 where `y` is 0 (numpy's result; torch raises instead)."""
    result = divide(x, _without_zeros(y))
    return torch.where(y == 0, torch.zeros_like(result), result)


def _channel_broadcast(parameter: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel vector [C] shaped [1, C, 1, ...] to broadcast against a rank-`rank` tensor
    whose channels are its second dimension."""
    return parameter.reshape([1, -1] + [1] * (rank - 2))


def _stable_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), computed as coremltools' value inference does, without overflow."""
    return torch.log1p(torch.exp(-x.abs())) + x.clamp_min(0)


def _reduce(args: OpArgs, reduction: Reduction) -> torch.Tensor:
    """`reduction(x, dims, keep_dims)` over `axes` (all axes when absent), in the declared type.

    Integer inputs are reduced exactly (sum, product, max, ...) or in float64 (mean, norms, logs),
    then truncated and wrapped to int32 as coremltools' `astype` does. No axes to reduce over
    (`axes=[]`, or a rank-0 `x`) reduces over a new length-1 axis, so the op still applies its
    elementwise part (abs, square, log, ...), as numpy does for `axis=()`.
    """
    x = args["x"]
    dims = args.ints("axes")
    if dims is None:
        dims = list(range(x.dim()))
    dims = [axis_of(axis, x.dim()) for axis in dims]
    if not dims:
        return _as_declared(args, reduction(x.unsqueeze(-1), [-1], False))
    return _as_declared(args, reduction(x, dims, args.bool("keep_dims", False)))


def _arg_reduce(args: OpArgs, function: Callable) -> torch.Tensor:
    """argmax/argmin along `axis`; ties give the first index, as numpy's do."""
    x = args["x"]
    return function(x, dim=axis_of(args.int("axis", -1), x.dim()), keepdim=args.bool("keep_dims", False))


# -- elementwise binary (numpy broadcasting) -------------------------------------------------------


@kernel("add")
def add(args: OpArgs):
    return _as_declared(args, args["x"] + args["y"])


@kernel("sub")
def sub(args: OpArgs):
    return _as_declared(args, args["x"] - args["y"])


@kernel("mul")
def mul(args: OpArgs):
    return _as_declared(args, args["x"] * args["y"])


@kernel("real_div")
def real_div(args: OpArgs):
    """x / y; on int32, the quotient truncated toward zero (numpy's true divide, then astype)."""
    x, y = args["x"], args["y"]
    return _as_declared(args, _in_float(x) / _in_float(y))


@kernel("floor_div")
def floor_div(args: OpArgs):
    """x / y rounded toward negative infinity (Python's `//`)."""
    x, y = args["x"], args["y"]
    if x.is_floating_point() or y.is_floating_point():
        return _as_declared(args, torch.div(x, y, rounding_mode="floor"))
    return _as_declared(args, _integer_division(x, y, lambda a, b: torch.div(a, b, rounding_mode="floor")))


@kernel("mod")
def mod(args: OpArgs):
    """x % y with the sign of y (Python's `%`, numpy's `remainder`)."""
    x, y = args["x"], args["y"]
    if x.is_floating_point() or y.is_floating_point():
        return _as_declared(args, torch.remainder(x, y))
    return _as_declared(args, _integer_division(x, y, torch.remainder))


@kernel("pow")
def power(args: OpArgs):
    return _as_declared(args, torch.pow(args["x"], args["y"]))


@kernel("maximum")
def maximum(args: OpArgs):
    return torch.maximum(args["x"], args["y"])


@kernel("minimum")
def minimum(args: OpArgs):
    return torch.minimum(args["x"], args["y"])


@kernel("equal")
def equal(args: OpArgs):
    return torch.eq(args["x"], args["y"])


@kernel("not_equal")
def not_equal(args: OpArgs):
    return torch.ne(args["x"], args["y"])


@kernel("greater")
def greater(args: OpArgs):
    return torch.gt(args["x"], args["y"])


@kernel("greater_equal")
def greater_equal(args: OpArgs):
    return torch.ge(args["x"], args["y"])


@kernel("less")
def less(args: OpArgs):
    return torch.lt(args["x"], args["y"])


@kernel("less_equal")
def less_equal(args: OpArgs):
    return torch.le(args["x"], args["y"])


@kernel("logical_and")
def logical_and(args: OpArgs):
    return torch.logical_and(args["x"], args["y"])


@kernel("logical_or")
def logical_or(args: OpArgs):
    return torch.logical_or(args["x"], args["y"])


@kernel("logical_xor")
def logical_xor(args: OpArgs):
    return torch.logical_xor(args["x"], args["y"])


@kernel("select")
def select(args: OpArgs):
    """`a` where `cond` is true, else `b` (numpy's `where`, broadcasting all three)."""
    return torch.where(args["cond"], args["a"], args["b"])


# -- elementwise unary --------------------------------------------------------------------------


@kernel("abs")
def absolute(args: OpArgs):
    return _as_declared(args, torch.abs(args["x"]))


@kernel("sign")
def sign(args: OpArgs):
    """-1, 0 or 1; NaN stays NaN (numpy's sign; torch's gives 0)."""
    x = args["x"]
    return torch.where(torch.isnan(x), x, torch.sign(x)) if x.is_floating_point() else torch.sign(x)


@kernel("square")
def square(args: OpArgs):
    return _as_declared(args, args["x"] * args["x"])


@kernel("exp2")
def exp2(args: OpArgs):
    """2^x; on int32, truncated toward zero (2^-1 is 0)."""
    return _as_declared(args, torch.exp2(_in_float(args["x"])))


@kernel("threshold")
def threshold(args: OpArgs):
    """max(x, alpha)."""
    return torch.maximum(args["x"], args["alpha"].to(args["x"].dtype))


@kernel("clip")
def clip(args: OpArgs):
    """min(max(x, alpha), beta): beta everywhere when alpha > beta (allowed before iOS17)."""
    return torch.minimum(torch.maximum(args["x"], args["alpha"]), args["beta"])


@kernel("acos")
def acos(args: OpArgs):
    return torch.acos(args["x"])


@kernel("asin")
def asin(args: OpArgs):
    return torch.asin(args["x"])


@kernel("atan")
def atan(args: OpArgs):
    return torch.atan(args["x"])


@kernel("atanh")
def atanh(args: OpArgs):
    return torch.atanh(args["x"])


@kernel("cos")
def cos(args: OpArgs):
    return torch.cos(args["x"])


@kernel("cosh")
def cosh(args: OpArgs):
    return torch.cosh(args["x"])


@kernel("sin")
def sin(args: OpArgs):
    return torch.sin(args["x"])


@kernel("sinh")
def sinh(args: OpArgs):
    return torch.sinh(args["x"])


@kernel("tan")
def tan(args: OpArgs):
    return torch.tan(args["x"])


@kernel("tanh")
def tanh(args: OpArgs):
    return torch.tanh(args["x"])


@kernel("ceil")
def ceil(args: OpArgs):
    return torch.ceil(args["x"])


@kernel("floor")
def floor(args: OpArgs):
    return torch.floor(args["x"])


@kernel("round")
def round_half_to_even(args: OpArgs):
    """To the nearest integer, halves to even (0.5 -> 0, 1.5 -> 2), as numpy's round."""
    return torch.round(args["x"])


@kernel("erf")
def erf(args: OpArgs):
    return torch.erf(args["x"])


@kernel("exp")
def exp(args: OpArgs):
    return torch.exp(args["x"])


@kernel("sqrt")
def sqrt(args: OpArgs):
    return torch.sqrt(args["x"])


@kernel("log")
def log(args: OpArgs):
    """log(x + epsilon)."""
    return torch.log(args["x"] + args["epsilon"])


@kernel("inverse")
def inverse(args: OpArgs):
    """1 / (x + epsilon)."""
    return torch.reciprocal(args["x"] + args["epsilon"])


@kernel("rsqrt")
def rsqrt(args: OpArgs):
    """1 / sqrt(x + epsilon)."""
    return torch.rsqrt(args["x"] + args["epsilon"])


@kernel("logical_not")
def logical_not(args: OpArgs):
    return torch.logical_not(args["x"])


@kernel("cast")
def cast(args: OpArgs):
    """`x` in type `dtype`, as numpy's `astype`: float to integer truncates toward zero, then an
    integer wraps to the target's width (300 -> 44 in uint8, -1 -> 255); nonzero is True; bool is
    0 or 1. A cast to fp16 keeps float32 (the interpreter rounds where it emulates float16)."""
    return _as_declared(args, args["x"])


# -- activations -------------------------------------------------------------------------------


@kernel("relu")
def relu(args: OpArgs):
    return torch.relu(args["x"])


@kernel("relu6")
def relu6(args: OpArgs):
    """min(max(x, 0), 6)."""
    return torch.clamp(args["x"], 0.0, 6.0)


@kernel("leaky_relu")
def leaky_relu(args: OpArgs):
    """x if x >= 0, else alpha * x."""
    x = args["x"]
    return torch.where(x >= 0, x, args["alpha"] * x)


@kernel("clamped_relu")
def clamped_relu(args: OpArgs):
    """min(beta, x) if x >= 0, else min(beta, alpha * x) (the op's docstring; see the module's)."""
    x, beta = args["x"], args["beta"]
    return torch.where(x >= 0, torch.minimum(beta, x), torch.minimum(beta, args["alpha"] * x))


@kernel("thresholded_relu")
def thresholded_relu(args: OpArgs):
    """x if x >= alpha, else 0."""
    x = args["x"]
    return torch.where(x >= args["alpha"], x, torch.zeros_like(x))


@kernel("elu")
def elu(args: OpArgs):
    """x if x > 0, else alpha * (e^x - 1)."""
    x = args["x"]
    return torch.where(x > 0, x, args["alpha"] * torch.expm1(x))


@kernel("prelu")
def prelu(args: OpArgs):
    """max(x, 0) + alpha_c * min(x, 0), with one alpha per channel (dimension 1)."""
    x = args["x"]
    alpha = _channel_broadcast(args["alpha"], x.dim())
    return x.clamp_min(0) + alpha * x.clamp_max(0)


@kernel("linear_activation")
def linear_activation(args: OpArgs):
    """alpha * x + beta."""
    return args["alpha"] * args["x"] + args["beta"]


@kernel("scaled_tanh")
def scaled_tanh(args: OpArgs):
    """alpha * tanh(beta * x)."""
    return args["alpha"] * torch.tanh(args["beta"] * args["x"])


@kernel("sigmoid")
def sigmoid(args: OpArgs):
    return torch.sigmoid(args["x"])


@kernel("sigmoid_hard")
def sigmoid_hard(args: OpArgs):
    """min(max(alpha * x + beta, 0), 1)."""
    return torch.clamp(args["alpha"] * args["x"] + args["beta"], 0.0, 1.0)


@kernel("silu")
def silu(args: OpArgs):
    """x * sigmoid(x)."""
    x = args["x"]
    return x * torch.sigmoid(x)


@kernel("softplus")
def softplus(args: OpArgs):
    """log(1 + e^x)."""
    return _stable_softplus(args["x"])


@kernel("softplus_parametric")
def softplus_parametric(args: OpArgs):
    """alpha_c * log(1 + e^(beta_c * x)), with one alpha and beta per channel (dimension 1)."""
    x = args["x"]
    alpha = _channel_broadcast(args["alpha"], x.dim())
    beta = _channel_broadcast(args["beta"], x.dim())
    return alpha * _stable_softplus(beta * x)


@kernel("softsign")
def softsign(args: OpArgs):
    """x / (1 + |x|)."""
    x = args["x"]
    return x / (1 + x.abs())


@kernel("softmax")
def softmax(args: OpArgs):
    x = args["x"]
    return torch.softmax(x, dim=axis_of(args.int("axis", -1), x.dim()))


@kernel("gelu")
def gelu(args: OpArgs):
    """EXACT: 0.5 x (1 + erf(x / sqrt 2)); TANH_APPROXIMATION: 0.5 x (1 + tanh(sqrt(2 / pi) (x +
    0.044715 x^3))); SIGMOID_APPROXIMATION: x sigmoid(1.702 x)."""
    x, mode = args["x"], args.str("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    if mode == "EXACT":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    raise ValueError(f"gelu: unknown mode {mode!r}")


# -- reductions ---------------------------------------------------------------------------------


@kernel("reduce_sum")
def reduce_sum(args: OpArgs):
    return _reduce(args, lambda x, dims, keep: torch.sum(x, dim=dims, keepdim=keep))


@kernel("reduce_prod")
def reduce_prod(args: OpArgs):
    def product(x, dims, keep):
        for dim in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
            x = torch.prod(x, dim=dim, keepdim=keep)
        return x

    return _reduce(args, product)


@kernel("reduce_mean")
def reduce_mean(args: OpArgs):
    return _reduce(args, lambda x, dims, keep: torch.mean(_in_float(x), dim=dims, keepdim=keep))


@kernel("reduce_max")
def reduce_max(args: OpArgs):
    return _reduce(args, lambda x, dims, keep: torch.amax(x, dim=dims, keepdim=keep))


@kernel("reduce_min")
def reduce_min(args: OpArgs):
    return _reduce(args, lambda x, dims, keep: torch.amin(x, dim=dims, keepdim=keep))


@kernel("reduce_l1_norm")
def reduce_l1_norm(args: OpArgs):
    """sum |x|."""
    return _reduce(args, lambda x, dims, keep: torch.sum(x.abs(), dim=dims, keepdim=keep))


@kernel("reduce_l2_norm")
def reduce_l2_norm(args: OpArgs):
    """sqrt(sum x^2)."""
    return _reduce(args, lambda x, dims, keep: torch.sqrt(torch.sum(_in_float(x) ** 2, dim=dims, keepdim=keep)))


@kernel("reduce_sum_square")
def reduce_sum_square(args: OpArgs):
    """sum x^2."""
    return _reduce(args, lambda x, dims, keep: torch.sum(x * x, dim=dims, keepdim=keep))


@kernel("reduce_log_sum")
def reduce_log_sum(args: OpArgs):
    """log(sum x)."""
    return _reduce(args, lambda x, dims, keep: torch.log(torch.sum(_in_float(x), dim=dims, keepdim=keep)))


@kernel("reduce_log_sum_exp")
def reduce_log_sum_exp(args: OpArgs):
    """log(sum e^x), computed stably (max subtracted first)."""
    return _reduce(args, lambda x, dims, keep: torch.logsumexp(_in_float(x), dim=dims, keepdim=keep))


@kernel("reduce_argmax")
def reduce_argmax(args: OpArgs):
    return _arg_reduce(args, torch.argmax)


@kernel("reduce_argmin")
def reduce_argmin(args: OpArgs):
    return _arg_reduce(args, torch.argmin)
