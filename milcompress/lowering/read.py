"""Constexpr ops back to compressed forms and dense values.

`read_back(var)` takes the var a weight is read through (a const, or the last op of a constexpr
chain) and returns the compressed form it holds (an `ops/` parameters object) with its dense
value. It understands every chain `emit.py` writes, what coremltools' own passes write (iOS16 and
iOS18 forms, joint forms, quantized LUTs), and casts. A chain it does not recognise is still
decompressed, by coremltools' own `materialized_val_inference`, and reported with form None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from milcompress._coremltools import Operation, Var, builtin_bitwidth, is_unsigned
from milcompress.ops import (
    AffineParams,
    CompressedForm,
    LutParams,
    PalettizedAffineParams,
    QuantizedLutParams,
    SparseAffineParams,
    SparseLutParams,
    SparseParams,
)
from milcompress.ops.packing import unpack_bits


@dataclass(frozen=True, eq=False)
class ReadBack:
    """What a weight var holds: its compressed `form` (None when dense or unrecognised), its dense
    value, and the chain of op types it is read through (nearest the consumer last)."""

    form: Optional[CompressedForm]
    dense: np.ndarray
    chain: Tuple[str, ...]

    @property
    def is_compressed(self) -> bool:
        return bool(self.chain) and self.chain[-1].startswith("constexpr_") and self.chain[-1] != "constexpr_cast"


def is_constexpr(op: Optional[Operation]) -> bool:
    return op is not None and op.op_type.startswith("constexpr_")


def chain_of(var: Var) -> Tuple[str, ...]:
    """Op types of the const/constexpr ops producing `var`, producers first."""
    op = var.op
    if op is None:
        return ()
    inner = []
    for value in op.inputs.values():
        if isinstance(value, Var) and is_constexpr(value.op):
            inner.extend(chain_of(value))
    return tuple(dict.fromkeys(inner)) + (op.op_type,)


def read_back(var: Var) -> ReadBack:
    op = var.op
    if op is None or not (op.op_type == "const" or is_constexpr(op)):
        raise ValueError(f"'{var.name}' is not produced by a const or constexpr op")
    chain = chain_of(var)
    if op.op_type == "const":
        return ReadBack(None, np.asarray(op.outputs[0].val), chain)
    reader = _READERS.get(op.op_type)
    form = reader(op) if reader is not None else None
    if isinstance(form, np.ndarray):  # a cast: dense storage, no compressed form
        return ReadBack(None, form, chain)
    if form is None:
        value = op.materialized_val_inference()
        dense = value[list(op.outputs).index(var)] if isinstance(value, tuple) else value
        return ReadBack(None, np.asarray(dense), chain)
    return ReadBack(form, form.decompress(), chain)


def _value(var: Optional[Var]) -> Optional[np.ndarray]:
    """A const input's value, or a constexpr input's materialised value (e.g. a quantized LUT)."""
    if var is None:
        return None
    if var.val is not None:
        return np.asarray(var.val)
    if is_constexpr(var.op):
        value = var.op.materialized_val_inference()
        return np.asarray(value[list(var.op.outputs).index(var)] if isinstance(value, tuple) else value)
    return None


def _mask(var: Var) -> np.ndarray:
    return _value(var).astype(bool)


def _integers(var: Var) -> Tuple[np.ndarray, int, bool]:
    """Integer data as int8/uint8 containers, with their bit width and signedness."""
    value = _value(var)
    nbits, unsigned = builtin_bitwidth(var), is_unsigned(var)
    return value.astype(np.uint8 if unsigned else np.int8), nbits, not unsigned


def _sparse(op: Operation) -> Optional[CompressedForm]:
    if "shape" in op.inputs:  # iOS16: packed mask plus shape
        shape = tuple(int(d) for d in op.shape.val)
        mask = unpack_bits(op.mask.val, 1, int(np.prod(shape))).reshape(shape).astype(bool)
        return SparseParams(mask, np.asarray(op.nonzero_data.val))
    producer = op.nonzero_data.op
    if producer is not None and producer.op_type == "constexpr_lut_to_sparse":
        return _sparse_lut(producer)
    if producer is not None and producer.op_type == "constexpr_sparse_blockwise_shift_scale":
        return _sparse_affine(producer)
    data = _value(op.nonzero_data)
    if data is None:
        return None
    return SparseParams(_mask(op.mask), data)


def _dense_from_sparse(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    dense = np.zeros(mask.shape, dtype=values.dtype)
    dense[mask] = values
    return dense


def _sparse_lut(op: Operation) -> Optional[SparseLutParams]:
    indices_mask = _mask(op.indices_mask)
    values, nbits, _ = _integers(op.indices_nonzero_data)
    lut = _value(op.lut)
    if lut is None:
        return None
    vector_axis = None if op.vector_axis is None else int(op.vector_axis.val)
    params = LutParams(_dense_from_sparse(values.astype(np.uint8), indices_mask), lut, vector_axis)
    mask = indices_mask if params.cluster_dim == 1 else np.repeat(indices_mask, params.cluster_dim, axis=vector_axis)
    return SparseLutParams(mask, params)


def _sparse_affine(op: Operation) -> Optional[SparseAffineParams]:
    mask = _mask(op.data_mask)
    values, nbits, signed = _integers(op.nonzero_data)
    scale = _value(op.scale)
    offset = _value(op.offset)
    affine = AffineParams(_dense_from_sparse(values, mask), scale, offset, nbits, signed)
    return SparseAffineParams(mask, affine)


def _lut(op: Operation) -> Optional[LutParams]:
    if "shape" in op.inputs:  # iOS16: packed indices, one table of scalars
        shape = tuple(int(d) for d in op.shape.val)
        lut = np.asarray(op.lut.val)
        nbits = int(lut.size).bit_length() - 1
        indices = unpack_bits(op.indices.val, nbits, int(np.prod(shape))).reshape(shape)
        return LutParams(indices, lut.reshape((1,) * len(shape) + (lut.size, 1)))
    lut = _value(op.lut)
    if lut is None or op.indices.val is None:
        return None
    vector_axis = None if op.vector_axis is None else int(op.vector_axis.val)
    params = LutParams(np.asarray(op.indices.val).astype(np.uint8), lut, vector_axis)
    table_op = op.lut.op
    if table_op is not None and table_op.op_type == "constexpr_blockwise_shift_scale":  # a quantized table
        table = _shift_scale(table_op)
        if isinstance(table, AffineParams):
            return QuantizedLutParams(params, table)
    return params


def _shift_scale(op: Operation) -> Optional[CompressedForm]:
    scale = _value(op.scale)
    offset = _value(op.offset)
    producer = op.data.op
    if is_constexpr(producer):  # a scale applied to a looked-up (maybe sparse) tensor
        reader = _READERS.get(producer.op_type)
        if producer.op_type == "constexpr_lut_to_dense" and reader is not None:
            integers = reader(producer)
            if isinstance(integers, LutParams) and integers.lut.dtype.kind in "iu":  # palettized integers
                nbits, unsigned = builtin_bitwidth(op.data), is_unsigned(op.data)
                return PalettizedAffineParams(integers, AffineParams(integers.decompress(), scale, offset, nbits, not unsigned))
        inner = reader(producer) if reader is not None and offset is None else None
        if isinstance(inner, LutParams) and inner.scale is None:
            return LutParams(inner.indices, inner.lut, inner.vector_axis, scale)
        if isinstance(inner, QuantizedLutParams) and inner.lut.scale is None:
            lut = inner.lut
            return QuantizedLutParams(LutParams(lut.indices, lut.lut, lut.vector_axis, scale), inner.table)
        if isinstance(inner, SparseLutParams) and inner.lut.scale is None:
            lut = inner.lut
            return SparseLutParams(inner.mask, LutParams(lut.indices, lut.lut, lut.vector_axis, scale))
        return None
    if op.data.val is None or not np.issubdtype(np.asarray(op.data.val).dtype, np.integer):
        return None
    data, nbits, signed = _integers(op.data)
    return AffineParams(data, scale, offset, nbits, signed)


def _affine_ios16(op: Operation) -> AffineParams:
    data, nbits, signed = _integers(op.quantized_data)
    rank, axis = data.ndim, int(op.axis.val) % data.ndim
    shape = [1] * rank
    scale, zero = np.asarray(op.scale.val), np.asarray(op.zero_point.val)
    if scale.ndim == 1 or zero.ndim == 1:
        shape[axis] = data.shape[axis]
    scale = np.broadcast_to(scale.reshape(-1) if scale.ndim else scale, (shape[axis],)).reshape(shape)
    zero = np.broadcast_to(zero.reshape(-1) if zero.ndim else zero, (shape[axis],)).reshape(shape)
    zero_point = None if (zero == 0).all() and signed else np.ascontiguousarray(zero)
    return AffineParams(data, np.ascontiguousarray(scale), zero_point, nbits, signed)


def _cast(op: Operation) -> Optional[np.ndarray]:
    return np.asarray(op.materialized_val_inference())


_READERS = {
    "constexpr_sparse_to_dense": _sparse,
    "constexpr_lut_to_dense": _lut,
    "constexpr_blockwise_shift_scale": _shift_scale,
    "constexpr_affine_dequantize": _affine_ios16,
    "constexpr_cast": _cast,
}
