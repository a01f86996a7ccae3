"""Kernels for compressed weights and quantization: every constexpr op of every opset, plus the
runtime `quantize` and `dequantize`.

Semantics follow coremltools' op definitions and their `materialized_val_inference` / `decompress`:
- `defs/iOS16/constexpr_ops.py`: `constexpr_affine_dequantize`, `constexpr_cast`,
  `constexpr_lut_to_dense` (flat table, indices packed into bytes) and `constexpr_sparse_to_dense`
  (bit mask packed into bytes; both packings fill each byte from its least significant bit up);
- `defs/iOS18/compression.py`: `constexpr_blockwise_shift_scale`, `constexpr_lut_to_dense`
  (per-block and vector tables), `constexpr_sparse_to_dense` (one mask value per element),
  `constexpr_lut_to_sparse` and `constexpr_sparse_blockwise_shift_scale` (each yields a mask and the
  decompressed nonzero values, which a later `constexpr_sparse_to_dense` scatters);
- `defs/iOS17/quantization_ops.py`: `quantize` and `dequantize`, per tensor or along one axis.

`constexpr_lut_to_dense` and `constexpr_sparse_to_dense` exist in iOS16 and iOS18 with different
inputs; each is one kernel that tells the variants apart by the inputs the op has (iOS16's `shape`).

Sub-byte integers (uint1 .. uint6, int4) reach a kernel one value per byte, as coremltools keeps
them in numpy; only iOS16's LUT indices and sparse masks are bit-packed.

A constexpr op's output is a weight: where the op declares fp16, the kernel rounds every step to
fp16 where coremltools' numpy arithmetic does, so the executor runs with exactly the weights Core ML
would decompress. `quantize` and `dequantize` run per input and compute in float32 like every other
runtime op.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from milcompress.reference.kernels import OpArgs, axis_of, kernel


# -- shared helpers -------------------------------------------------------------------------------


def _is_fp16(builtin) -> bool:
    from milcompress._coremltools import types

    return builtin == types.fp16


def _input_is_fp16(args: OpArgs, name: str) -> bool:
    return _is_fp16(args.op.inputs[name].dtype)


def _rounded_to_fp16(value: torch.Tensor, to_fp16: bool) -> torch.Tensor:
    """`value` rounded to the nearest float16 (kept in float32) when `to_fp16`, else unchanged."""
    return value.to(torch.float16).to(torch.float32) if to_fp16 else value


def _as_declared_weight(args: OpArgs, value: torch.Tensor, index: int = 0) -> torch.Tensor:
    """A float output rounded to fp16 where the op declares its `index`-th output fp16."""
    if value.is_floating_point():
        return _rounded_to_fp16(value, _is_fp16(args.op.outputs[index].dtype))
    return value


def _along_axis(parameter: torch.Tensor, rank: int, axis: Optional[int]) -> torch.Tensor:
    """A scalar or vector quantization parameter shaped to broadcast against a rank-`rank` tensor:
    a vector lies along `axis` (coremltools' `promote_rank_to_same_as_data`)."""
    if parameter.dim() in (0, rank):
        return parameter
    shape = [1] * rank
    shape[axis_of(axis, rank)] = -1
    return parameter.reshape(shape)


def _unpacked_bits(packed: torch.Tensor) -> torch.Tensor:
    """The bits of a byte vector, least significant bit of each byte first (numpy's
    `unpackbits(bitorder="little")`), as a uint8 vector eight times as long."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.to(torch.uint8).reshape(-1, 1) >> shifts) & 1).reshape(-1)


def _unpacked_integers(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """`count` unsigned `nbits`-bit integers packed LSB first into bytes (coremltools'
    `restore_elements_from_packed_bits`), as int64."""
    bits = _unpacked_bits(packed)[: count * nbits].reshape(count, nbits)
    integers = torch.zeros(count, dtype=torch.int64)
    for bit in range(nbits):
        integers |= bits[:, bit].to(torch.int64) << bit
    return integers


def _repeated_blocks(parameter: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A per-block parameter repeated so each block covers its slice of a tensor of `shape`
    (block size along each axis = shape / parameter shape), as numpy's `repeat` per axis."""
    for axis, size in enumerate(shape):
        block_size = size // parameter.shape[axis]
        if block_size > 1:
            parameter = parameter.repeat_interleave(block_size, dim=axis)
    return parameter


def _scattered(nonzero_data: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `mask`: `nonzero_data` in row-major order where mask is nonzero, zero
    elsewhere."""
    dense = torch.zeros(mask.shape, dtype=nonzero_data.dtype)
    dense[mask != 0] = nonzero_data.reshape(-1)
    return dense


def _shift_scaled(
    data: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor], scale_fp16: bool, offset_fp32: bool
) -> torch.Tensor:
    """iOS18's block-wise `scale * (data - offset)`, rounded to fp16 after each step where numpy
    computes it in float16: data is cast to the scale's dtype; a float32 offset promotes the rest
    of the arithmetic to float32 (coremltools' `constexpr_blockwise_shift_scale.decompress`)."""
    in_fp16 = scale_fp16
    values = _rounded_to_fp16(data.to(torch.float32), in_fp16)
    if offset is not None:
        in_fp16 = in_fp16 and not offset_fp32
        values = _rounded_to_fp16(values - _repeated_blocks(offset.to(torch.float32), data.shape), in_fp16)
    return _rounded_to_fp16(_repeated_blocks(scale, data.shape) * values, in_fp16)


def _shift_scale_offset(args: OpArgs):
    """The op's offset (None when absent) and whether numpy holds it in float32."""
    from milcompress._coremltools import types

    if "offset" not in args:
        return None, False
    return args["offset"], args.op.inputs["offset"].dtype == types.fp32


def _looked_up(indices: torch.Tensor, lut: torch.Tensor, vector_axis: Optional[int]) -> torch.Tensor:
    """iOS18 palettization (coremltools' `lut_to_dense`): `lut` is [blocks per axis..., palettes,
    vector size]; each index reads the table of the block it lies in. Vectors are laid out along
    `vector_axis`, one index's vector in consecutive positions."""
    shape = indices.shape
    rank = len(shape)
    block_counts = lut.shape[:rank]
    palette_count, vector_size = lut.shape[rank], lut.shape[rank + 1]
    block_number = torch.zeros(shape, dtype=torch.int64)
    for axis, (size, blocks) in enumerate(zip(shape, block_counts)):
        position_shape = [1] * rank
        position_shape[axis] = size
        block_index = torch.arange(size, dtype=torch.int64) // (size // blocks)
        block_number = block_number * blocks + block_index.reshape(position_shape)
    tables = lut.reshape(-1, palette_count, vector_size)
    vectors = tables[block_number, indices.to(torch.int64)]  # shape + [vector_size]
    if vector_size == 1:
        return vectors.reshape(shape)
    axis = axis_of(vector_axis, rank)
    output_shape = list(shape)
    output_shape[axis] *= vector_size
    return vectors.movedim(-1, axis + 1).reshape(output_shape)


# -- iOS16 (and iOS18 constexpr_cast) -------------------------------------------------------------


@kernel("constexpr_affine_dequantize")
def constexpr_affine_dequantize(args: OpArgs):
    data = args["quantized_data"]
    rank, axis = data.dim(), args.int("axis")
    zero_point = _along_axis(args["zero_point"].to(torch.float32), rank, axis)
    scale = _along_axis(args["scale"], rank, axis)
    return _as_declared_weight(args, (data.to(torch.float32) - zero_point) * scale)


@kernel("constexpr_cast")
def constexpr_cast(args: OpArgs):
    # fp16 -> fp32, the only cast the op allows: the executor already holds fp16 values in float32.
    return args["source_val"].to(torch.float32)


@kernel("constexpr_lut_to_dense")
def constexpr_lut_to_dense(args: OpArgs):
    lut = args["lut"]
    if "shape" in args:  # iOS16: a flat table, indices packed log2(table size) bits each
        shape = args.ints("shape")
        count = 1
        for size in shape:
            count *= size
        nbits = (lut.numel() - 1).bit_length()
        indices = _unpacked_integers(args["indices"], nbits, count)
        return lut.reshape(-1)[indices].reshape(shape)
    vector_axis = args.int("vector_axis") if "vector_axis" in args else None
    return _looked_up(args["indices"], lut, vector_axis)


@kernel("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(args: OpArgs):
    nonzero_data, mask = args["nonzero_data"], args["mask"]
    if "shape" in args:  # iOS16: the mask is one bit per element, packed into bytes
        shape = args.ints("shape")
        count = 1
        for size in shape:
            count *= size
        return _scattered(nonzero_data, _unpacked_bits(mask)[:count]).reshape(shape)
    return _scattered(nonzero_data, mask)


# -- iOS18 ------------------------------------------------------------------------------------------


@kernel("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(args: OpArgs):
    offset, offset_fp32 = _shift_scale_offset(args)
    values = _shift_scaled(args["data"], args["scale"], offset, _input_is_fp16(args, "scale"), offset_fp32)
    return _as_declared_weight(args, values)


@kernel("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(args: OpArgs):
    indices_mask, lut = args["indices_mask"], args["lut"]
    vector_axis = args.int("vector_axis") if "vector_axis" in args else None
    indices = _scattered(args["indices_nonzero_data"], indices_mask)
    dense = _looked_up(indices, lut, vector_axis)
    mask = indices_mask
    if vector_axis is not None:
        mask = mask.repeat_interleave(lut.shape[-1], dim=axis_of(vector_axis, mask.dim()))
    return mask, dense[mask != 0]


@kernel("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(args: OpArgs):
    mask = args["data_mask"]
    offset, offset_fp32 = _shift_scale_offset(args)
    data = _scattered(args["nonzero_data"], mask)
    values = _shift_scaled(data, args["scale"], offset, _input_is_fp16(args, "scale"), offset_fp32)
    return mask, _as_declared_weight(args, values[mask != 0], index=1)


# -- iOS17 runtime quantization ---------------------------------------------------------------------


@kernel("quantize")
def quantize(args: OpArgs):
    """`clip(round(input / scale) + zero_point)`, rounding half to even as numpy's `around`."""
    values = args["input"].to(torch.float32)
    rank, axis = values.dim(), args.int("axis")
    quantized = torch.round(values / _along_axis(args["scale"], rank, axis))
    if "zero_point" in args:
        quantized = quantized + _along_axis(args["zero_point"].to(torch.float32), rank, axis)
    dtype = torch.uint8 if args.str("output_dtype") == "uint8" else torch.int8
    limits = torch.iinfo(dtype)
    return quantized.clamp(limits.min, limits.max).to(dtype)


@kernel("dequantize")
def dequantize(args: OpArgs):
    """`scale * (input - zero_point)` in float32."""
    values = args["input"].to(torch.float32)
    rank, axis = values.dim(), args.int("axis")
    if "zero_point" in args:
        values = values - _along_axis(args["zero_point"].to(torch.float32), rank, axis)
    return values * _along_axis(args["scale"], rank, axis)
