"""Compressed forms to constexpr ops: the only code that builds Core ML's constexpr signatures.

`lower(params, const)` emits, just before `const` in its block, the chain of constexpr ops that
the program's opset supports for the form, and returns the var that stands for the dense weight.
The caller replaces the const's uses with it. What each opset can hold:

| form (ops/)            | iOS16, iOS17                                   | iOS18                                                        |
|------------------------|------------------------------------------------|--------------------------------------------------------------|
| SparseParams           | constexpr_sparse_to_dense (packed mask, shape) | constexpr_sparse_to_dense (uint1 mask)                       |
| LutParams              | constexpr_lut_to_dense: one table, scalar      | constexpr_lut_to_dense (uintN indices, tables per block,     |
|                        | entries, 1/2/4/6/8 bits, no scale              | vectors) [-> constexpr_blockwise_shift_scale for a scale]     |
| AffineParams           | constexpr_affine_dequantize: int8/uint8, one   | constexpr_blockwise_shift_scale (int4/uint4/int8/uint8, any  |
|                        | scale per tensor or per channel of one axis    | block structure, optional offset)                            |
| SparseLutParams        | -                                              | constexpr_lut_to_sparse -> constexpr_sparse_to_dense         |
|                        |                                                | [-> constexpr_blockwise_shift_scale]                         |
| SparseAffineParams     | -                                              | constexpr_sparse_blockwise_shift_scale -> sparse_to_dense    |
| QuantizedLutParams     | -                                              | constexpr_blockwise_shift_scale (the table) -> lut_to_dense  |
| PalettizedAffineParams | -                                              | constexpr_lut_to_dense (integers) -> blockwise_shift_scale   |

A form the opset cannot hold raises `PreconditionError` naming the const and the
`minimum_deployment_target` it needs; programs older than iOS16 have no constexpr ops at all.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from milcompress._coremltools import IOS16, IOS18, Operation, Var, building_in, integer_dtype, mb, opset_of, target_name, unsigned_dtype
from milcompress.errors import PreconditionError
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
from milcompress.ops.packing import pack_bits
from milcompress.ops.palettize import PaletteEstimate

IOS16_LUT_NBITS = (1, 2, 4, 6, 8)

# The suffix each form adds to the const's name for the var that replaces it.
SUFFIX = {
    SparseParams: "sparsified",
    LutParams: "palettized",
    AffineParams: "quantized",
    SparseLutParams: "pruned_palettized",
    SparseAffineParams: "pruned_quantized",
    QuantizedLutParams: "palettized",
    PalettizedAffineParams: "quantized",
}


def required_target(params: CompressedForm):
    """The oldest deployment target whose constexpr ops can hold `params` (or the palette a
    `PaletteEstimate` stands for), and why if not iOS16."""
    if isinstance(params, (SparseLutParams, SparseAffineParams)):
        return IOS18, "joint sparse + palettized or quantized weights"
    if isinstance(params, QuantizedLutParams):
        return IOS18, "joint palettization with a quantized table"
    if isinstance(params, PalettizedAffineParams):
        return IOS18, "joint quantization with palettized integers"
    if isinstance(params, (LutParams, PaletteEstimate)):
        if params.tables > 1:
            return IOS18, f"a LUT with {params.tables} tables (per-group palettization)"
        if params.cluster_dim > 1:
            return IOS18, "vector palettization (cluster_dim > 1)"
        if params.scale is not None:
            return IOS18, "palettization with per-channel scales"
        if params.nbits not in IOS16_LUT_NBITS:
            return IOS18, f"a {params.nbits}-bit LUT (iOS16/17 LUTs hold 1, 2, 4, 6 or 8 bits)"
    if isinstance(params, AffineParams):
        if params.nbits != 8:
            return IOS18, f"{params.nbits}-bit quantization"
        if _single_scale_axis(params) is False:
            return IOS18, f"per-block quantization (blocks {params.block_sizes})"
        if params.zero_point is not None and params.zero_point.dtype.kind == "f" and params.zero_point.dtype != np.float32:
            return IOS18, "a float16 zero point"
    return IOS16, None


def config_required_target(config, fake: bool = False):
    """The oldest deployment target coremltools accepts `config` on, whatever form a weight then
    takes (it refuses these configs before compressing: a group covering every channel is still
    "per_grouped_channel palettization"), and why if not iOS16. `fake`: for fake compression,
    where coremltools lets per-channel scales pass (no constexpr op is written)."""
    from milcompress.config import JointConfig, LinearQuantizeConfig, PalettizeConfig

    if isinstance(config, JointConfig):
        need, why = config_required_target(config.then, fake)
        return (IOS18, "joint sparse + palettized or quantized weights") if need < IOS18 else (need, why)
    if isinstance(config, PalettizeConfig):
        if config.granularity == "per_grouped_channel":
            return IOS18, "per_grouped_channel palettization"
        if config.cluster_dim > 1:
            return IOS18, "vector palettization (cluster_dim > 1)"
        if config.enable_per_channel_scale and not fake:
            return IOS18, "palettization with per-channel scales"
    if isinstance(config, LinearQuantizeConfig):
        if config.mode == "linear_float_offset":
            return IOS18, "linear_float_offset quantization (a float16 offset)"
        if config.granularity == "per_block":
            return IOS18, "per_block quantization"
        if config.nbits == 4:
            return IOS18, "4-bit quantization"
    return IOS16, None


def opset_error(const_name: str, why: Optional[str], need, have) -> PreconditionError:
    """The error for a form the program's opset cannot hold: our detail (the const, the form, both
    targets) and coremltools' own wording for the same case, which callers' code may match on."""
    what = why or "compressed weights"
    return PreconditionError(
        f"const '{const_name}': {what} needs minimum_deployment_target=ct.target.{target_name(need)}; "
        f"the program targets {target_name(have)} ({what} is only supported since {target_name(need)}). "
        f"Please re-convert your model with minimum_deployment_target set to at least ct.target.{target_name(need)}.",
        minimum_deployment_target=target_name(need),
    )


def check_target(params: CompressedForm, const: Operation) -> None:
    """PreconditionError unless `const`'s program can hold `params`."""
    have = opset_of(const)
    need, why = required_target(params)
    if have < IOS16:
        raise PreconditionError(
            f"const '{const.name}': compressed weights need minimum_deployment_target=ct.target.iOS16 or later; "
            f"the program targets {target_name(have)}. "
            "Please re-convert your model with minimum_deployment_target set to at least ct.target.iOS16.",
            minimum_deployment_target=target_name(IOS16),
        )
    if have < need:
        raise opset_error(const.name, why, need, have)


def lower(params: CompressedForm, const: Operation, name: Optional[str] = None) -> Var:
    """Emit constexpr ops for `params` before `const` in its block; return the dense var.

    `name` defaults to the const's name plus a suffix naming the form. The const itself and its
    uses are left alone.
    """
    check_target(params, const)
    name = name or f"{const.name}_{SUFFIX[type(params)]}"
    if isinstance(params, (SparseLutParams, SparseAffineParams)) and not params.mask.any():
        params = SparseParams(params.mask, np.zeros(0, dtype=params.dtype))  # nothing survived
    ios18 = opset_of(const) >= IOS18
    with building_in(const.enclosing_block):
        if isinstance(params, SparseParams):
            return _sparse(params, const, name, ios18)
        if isinstance(params, LutParams):
            return _lut(params, const, name, ios18)
        if isinstance(params, AffineParams):
            return _affine(params, const, name, ios18)
        if isinstance(params, SparseLutParams):
            return _sparse_lut(params, const, name)
        if isinstance(params, SparseAffineParams):
            return _sparse_affine(params, const, name)
        if isinstance(params, QuantizedLutParams):
            return _quantized_lut(params, const, name)
        if isinstance(params, PalettizedAffineParams):
            return _palettized_affine(params, const, name)
    raise TypeError(f"not a compressed form: {type(params).__name__}")


def lower_fake(params: CompressedForm, const: Operation, dtype, name: Optional[str] = None) -> Var:
    """coremltools' fake compression: the form's decompressed values, in `dtype`, as a dense const
    named like coremltools' (`<const>_fake_palettized`, ...)."""
    name = name or f"{const.name}_fake_{SUFFIX[type(params)].split('_')[-1]}"
    with building_in(const.enclosing_block):
        return mb.const(val=np.asarray(params.decompress()).astype(dtype), before_op=const, name=name)


def _stored_mask(mask: np.ndarray) -> np.ndarray:
    """Core ML tensors cannot be empty: an all-zero tensor stores one explicit zero."""
    if mask.any():
        return mask
    mask = mask.copy()
    mask.reshape(-1)[0] = True
    return mask


def _sparse(params: SparseParams, const: Operation, name: str, ios18: bool) -> Var:
    mask = _stored_mask(params.mask)
    nonzero = params.nonzero_data if mask is params.mask else params.decompress()[mask]
    if ios18:
        return mb.constexpr_sparse_to_dense(
            nonzero_data=nonzero, mask=mask.astype(unsigned_dtype(1)), before_op=const, name=name
        )
    return mb.constexpr_sparse_to_dense(
        nonzero_data=nonzero,
        mask=pack_bits(mask.reshape(-1), 1),
        shape=np.array(mask.shape, dtype=np.uint32),
        before_op=const,
        name=name,
    )


def _lut_value(params: LutParams, const: Operation, name: str) -> Var:
    kwargs = {}
    if params.cluster_dim > 1:
        kwargs["vector_axis"] = np.int32(params.vector_axis)
    return mb.constexpr_lut_to_dense(
        indices=params.indices.astype(unsigned_dtype(params.nbits)), lut=params.lut, before_op=const, name=name, **kwargs
    )


def _scaled(var: Var, scale: Optional[np.ndarray], const: Operation, name: str) -> Var:
    return mb.constexpr_blockwise_shift_scale(data=var, scale=scale, before_op=const, name=name)


def _lut(params: LutParams, const: Operation, name: str, ios18: bool) -> Var:
    if not ios18:
        return mb.constexpr_lut_to_dense(
            indices=pack_bits(params.indices.reshape(-1), params.nbits),
            lut=params.lut.reshape(-1),
            shape=np.array(params.shape, dtype=np.uint32),
            before_op=const,
            name=name,
        )
    if params.scale is None:
        return _lut_value(params, const, name)
    return _scaled(_lut_value(params, const, f"{name}_unscaled"), params.scale, const, name)


def _single_scale_axis(params: AffineParams):
    """The axis of an iOS16 per-channel scale; None for per-tensor; False if neither."""
    varying = [axis for axis, size in enumerate(params.scale.shape) if size > 1]
    if not varying:
        return None
    if len(varying) == 1 and params.block_sizes[varying[0]] == 1:
        return varying[0]
    return False


def _affine(params: AffineParams, const: Operation, name: str, ios18: bool) -> Var:
    storage = integer_dtype(params.nbits, params.signed)
    if ios18:
        offset = None if params.zero_point is None else _offset(params.zero_point, storage)
        return mb.constexpr_blockwise_shift_scale(
            data=params.data.astype(storage), scale=params.scale, offset=offset, before_op=const, name=name
        )
    axis = _single_scale_axis(params)
    zero = np.zeros(params.scale.shape, dtype=storage) if params.zero_point is None else params.zero_point
    if axis is None:
        scale, zero, axis = params.scale.reshape(()), zero.reshape(()), 0
    else:
        scale, zero = params.scale.reshape(-1), zero.reshape(-1)
    zero = zero.astype(np.float32 if zero.dtype.kind == "f" else storage)
    return mb.constexpr_affine_dequantize(
        quantized_data=params.data.astype(storage), zero_point=zero, scale=scale, axis=np.int32(axis), before_op=const, name=name
    )


def _offset(zero_point: np.ndarray, storage: np.dtype) -> np.ndarray:
    return zero_point if zero_point.dtype.kind == "f" else zero_point.astype(storage)


def _sparse_lut(params: SparseLutParams, const: Operation, name: str) -> Var:
    lut = params.lut
    mask = params.mask
    kwargs = {}
    if lut.cluster_dim > 1:  # the stored mask marks whole vectors: one bit per index
        kwargs["vector_axis"] = np.int32(lut.vector_axis)
        mask = np.take(mask, np.arange(0, mask.shape[lut.vector_axis], lut.cluster_dim), axis=lut.vector_axis)
    mask_var, values = mb.constexpr_lut_to_sparse(
        indices_mask=mask.astype(unsigned_dtype(1)),
        indices_nonzero_data=lut.indices[mask].astype(unsigned_dtype(lut.nbits)),
        lut=lut.lut,
        before_op=const,
        name=f"{name}_nonzero",
        **kwargs,
    )
    final = name if lut.scale is None else f"{name}_unscaled"
    dense = mb.constexpr_sparse_to_dense(nonzero_data=values, mask=mask_var, before_op=const, name=final)
    return dense if lut.scale is None else _scaled(dense, lut.scale, const, name)


def _sparse_affine(params: SparseAffineParams, const: Operation, name: str) -> Var:
    affine = params.affine
    storage = integer_dtype(affine.nbits, affine.signed)
    mask = _stored_mask(params.mask)
    mask_var, values = mb.constexpr_sparse_blockwise_shift_scale(
        data_mask=mask.astype(unsigned_dtype(1)),
        nonzero_data=affine.data[mask].astype(storage),
        scale=affine.scale,
        offset=None if affine.zero_point is None else _offset(affine.zero_point, storage),
        before_op=const,
        name=f"{name}_nonzero",
    )
    return mb.constexpr_sparse_to_dense(nonzero_data=values, mask=mask_var, before_op=const, name=name)


def _quantized_lut(params: QuantizedLutParams, const: Operation, name: str) -> Var:
    table = params.table
    storage = integer_dtype(table.nbits, table.signed)
    offset = None if table.zero_point is None else _offset(table.zero_point, storage)
    lut = mb.constexpr_blockwise_shift_scale(
        data=table.data.astype(storage), scale=table.scale, offset=offset, before_op=const, name=f"{name}_lut_quantized"
    )
    kwargs = {}
    if params.lut.cluster_dim > 1:
        kwargs["vector_axis"] = np.int32(params.lut.vector_axis)
    scale = params.lut.scale
    dense = mb.constexpr_lut_to_dense(
        indices=params.lut.indices.astype(unsigned_dtype(params.nbits)),
        lut=lut,
        before_op=const,
        name=name if scale is None else f"{name}_unscaled",
        **kwargs,
    )
    return dense if scale is None else _scaled(dense, scale, const, name)


def _palettized_affine(params: PalettizedAffineParams, const: Operation, name: str) -> Var:
    affine = params.affine
    storage = integer_dtype(affine.nbits, affine.signed)
    integers = mb.constexpr_lut_to_dense(
        indices=params.lut.indices.astype(unsigned_dtype(params.nbits)),
        lut=params.lut.lut.astype(storage),
        before_op=const,
        name=f"{name}_integers",
        **({"vector_axis": np.int32(params.lut.vector_axis)} if params.lut.cluster_dim > 1 else {}),
    )
    offset = None if affine.zero_point is None else _offset(affine.zero_point, storage)
    return mb.constexpr_blockwise_shift_scale(data=integers, scale=affine.scale, offset=offset, before_op=const, name=name)
