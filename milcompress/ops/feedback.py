"""Error feedback (GPTQ): re-encode a compressed form so the layer's output error is least.

A form's rounding (nearest table entry, nearest integer step) minimises each weight's own error.
What a layer passes on, though, is (W - W') x: with calibration inputs x and their second moment
H = E[x x^T], the expected output noise of one row w is (w - w')^T H (w - w')^T, and where inputs
are correlated, the error of one input column can be partly cancelled by the columns not yet
rounded. `feedback(params, weight, hessian, ...)` does that (Frantar et al. 2023, GPTQ / OPTQ):
it rounds one input column at a time, in order of decreasing H_jj, each to the nearest value the
form can hold, and spreads the column's rounding error over the columns still to come through
the Cholesky factor of H^-1. The form's tables, scales and zero points stay as they are: only the
indices (integers) change, so the size does not.

Forms it re-encodes: scalar palettes (LUT per tensor or per group of output channels, no per
channel scale) and affine integers (per tensor, channel or block), on weights that are a matrix
[output, input] once their other axes (all of size 1, e.g. a 1x1 convolution's kernel) are
dropped. Anything else gives None (keep the form as it was).

H is damped by `damping` times its mean diagonal, as GPTQ does; input channels that calibration
never excited (H_jj = 0) get unit weight, so their weights round to nearest instead of being
bent by noise. With H a multiple of the identity, feedback is plain rounding: nothing to cancel.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import numpy as np

from milcompress.ops.kmeans import assign_nearest
from milcompress.ops.palettize import LutParams
from milcompress.ops.quantize import AffineParams
from milcompress.ops._arrays import expand_blocks

_BLOCK = 128  # columns updated together before the rest of the matrix is (lazy batch updates)


def feedback(
    params: Union[LutParams, AffineParams],
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    output_axis: int,
    input_axis: int,
    damping: float = 0.01,
) -> Optional[Union[LutParams, AffineParams]]:
    """`params` (a compression of `weight`) re-encoded by error feedback against `hessian`
    [inputs, inputs]; None if the form or the weight's layout is not one it handles."""
    matrix = _as_matrix(weight, output_axis, input_axis)
    if matrix is None or hessian.shape != (matrix.shape[1],) * 2:
        return None
    if isinstance(params, LutParams):
        if params.cluster_dim != 1 or params.scale is not None:
            return None
        tables = _as_matrix(params.lut[..., 0], output_axis, input_axis, keep_last=True)  # [blocks out, blocks in, K]
        if tables is None or tables.shape[1] != 1:
            return None
        rows_per_table = matrix.shape[0] // tables.shape[0]
        table = np.repeat(tables[:, 0].astype(np.float64), rows_per_table, axis=0)  # [out, K]
        rank = np.argsort(table, axis=1, kind="stable")
        ascending = np.take_along_axis(table, rank, axis=1)
        rows = np.arange(table.shape[0])
        codes = lambda j, column: rank[rows, assign_nearest(column[:, None], ascending)[:, 0]]  # noqa: E731
        values = lambda j, code: table[rows, code]  # noqa: E731
        encoded = _run(matrix, hessian, codes, values, damping)
        indices = _from_matrix(encoded.astype(np.uint8), weight.shape, output_axis, input_axis)
        return dataclasses.replace(params, indices=indices)
    if isinstance(params, AffineParams):
        scale = _as_matrix(expand_blocks(params.scale, params.shape), output_axis, input_axis).astype(np.float64)
        zero = np.zeros_like(scale)
        if params.zero_point is not None:
            zero = _as_matrix(expand_blocks(params.zero_point, params.shape), output_axis, input_axis).astype(np.float64)
        low, high = (-(1 << (params.nbits - 1)), (1 << (params.nbits - 1)) - 1) if params.signed else (0, (1 << params.nbits) - 1)
        codes = lambda j, column: np.clip(np.rint(column / scale[:, j] + zero[:, j]), low, high)  # noqa: E731
        values = lambda j, code: scale[:, j] * (code - zero[:, j])  # noqa: E731
        encoded = _run(matrix, hessian, codes, values, damping)
        data = _from_matrix(encoded.astype(params.data.dtype), weight.shape, output_axis, input_axis)
        return dataclasses.replace(params, data=data)
    return None


def output_error(weight: np.ndarray, approximation: np.ndarray, hessian: np.ndarray, *, output_axis: int, input_axis: int) -> float:
    """sum over output rows of (w - w')^T H (w - w'): the expected squared output error the
    approximation adds, for inputs of second moment `hessian` (a weight that is a matrix)."""
    delta = _as_matrix(approximation.astype(np.float64) - weight.astype(np.float64), output_axis, input_axis)
    return float(np.einsum("oi,ij,oj->", delta, np.asarray(hessian, dtype=np.float64), delta, optimize=True))


def _run(
    matrix: np.ndarray,
    hessian: np.ndarray,
    codes: Callable[[int, np.ndarray], np.ndarray],
    values: Callable[[int, np.ndarray], np.ndarray],
    damping: float,
) -> np.ndarray:
    """GPTQ over the columns of `matrix` [out, in]: the code of every element, [out, in]."""
    w = matrix.astype(np.float64)  # a copy: updated in place as columns are rounded
    h = np.array(hessian, dtype=np.float64)
    inputs = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    h[np.diag_indices(inputs)] += damping * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[np.ix_(order, order)]
    # Upper Cholesky factor of H^-1: row j holds how column j's error spreads to later columns.
    inverse = np.linalg.cholesky(np.linalg.inv(h)).T
    result = np.empty(w.shape, dtype=np.int64)
    for first in range(0, inputs, _BLOCK):
        last = min(first + _BLOCK, inputs)
        errors = np.empty((w.shape[0], last - first))
        for j in range(first, last):
            code = codes(order[j], w[:, j])
            result[:, j] = code
            error = (w[:, j] - values(order[j], code)) / inverse[j, j]
            w[:, j + 1 : last] -= np.outer(error, inverse[j, j + 1 : last])
            errors[:, j - first] = error
        w[:, last:] -= errors @ inverse[first:last, last:]
    unsorted = np.empty_like(result)
    unsorted[:, order] = result
    return unsorted


def _as_matrix(x: np.ndarray, output_axis: int, input_axis: int, keep_last: bool = False) -> Optional[np.ndarray]:
    """`x` as [output, input] (or [output, input, last] with `keep_last`) when every other axis has
    size 1; None otherwise."""
    rank = x.ndim - (1 if keep_last else 0)
    output_axis, input_axis = output_axis % rank, input_axis % rank
    if output_axis == input_axis or any(x.shape[a] != 1 for a in range(rank) if a not in (output_axis, input_axis)):
        return None
    moved = np.moveaxis(x, (output_axis, input_axis), (0, 1))
    return moved.reshape(moved.shape[:2] + moved.shape[rank:])


def _from_matrix(matrix: np.ndarray, shape, output_axis: int, input_axis: int) -> np.ndarray:
    """Inverse of `_as_matrix` for a tensor of `shape`."""
    rank = len(shape)
    output_axis, input_axis = output_axis % rank, input_axis % rank
    moved = [shape[output_axis], shape[input_axis]] + [shape[a] for a in range(rank) if a not in (output_axis, input_axis)]
    return np.moveaxis(matrix.reshape(moved), (0, 1), (output_axis, input_axis))
