"""Linear (affine) quantization: integers with a scale, and a zero point in `linear` mode.

`quantize(weight, config, output_axis=..., input_axis=...)` returns `AffineParams`: `data`
(integers in an int8 or uint8 container, whatever `nbits`), `scale` and optional `zero_point` with
the weight's rank and one entry per block, so dense = scale * (data - zero_point) block by block.

Guarantees, for every element: it decodes within half a step (scale / 2) of its original before
the final rounding to the output dtype, even after the scale is rounded to that dtype; an all-zero
block decodes to exact zeros (scale 1, data = zero point). Integer ranges, scales and zero points
follow coremltools: `linear_symmetric` int8 uses [-127, 127] (uint8 [0, 254] around 127) and
scale = max|w| / 127; `linear` uses the full range and scale = (max - min) / 255.

`linear_float_offset` (ours; Core ML's iOS18 op takes a float offset) spans each block's own
[min, max], zero included or not, with the offset in the weight's dtype: a scale and a minimum per
block, the form of llama.cpp's Q4_1. Weights already stored that way (a checkpoint shipped as
Q4_1, or quantization-aware training with a float zero point) come back to within the float16
rounding of the offset arithmetic, about 1/256 of a step, where `linear`, whose zero point is an
integer, puts them on another grid. A block's decoded values are scale * (q - offset) with the
difference rounded to the dtype first, as coremltools computes it; each element still decodes
within half a step of its original, plus that rounding. A constant block decodes exactly.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from milcompress.config import LinearQuantizeConfig
from milcompress.errors import NotCompressible
from milcompress.ops._arrays import block_slices, block_view, check_weight, largest_divisor_at_most, normalize_axis, per_block_view
from milcompress.ops.packing import packed_size


@dataclass(frozen=True, eq=False)
class AffineParams:
    """An affinely quantized tensor; see the module docstring."""

    data: np.ndarray
    scale: np.ndarray
    zero_point: Optional[np.ndarray]  # integers like data, or a float offset (`linear_float_offset`)
    nbits: int
    signed: bool

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.scale.dtype

    @property
    def block_sizes(self) -> Tuple[int, ...]:
        return tuple(d // s for d, s in zip(self.data.shape, self.scale.shape))

    @property
    def nbytes(self) -> int:
        """Payload bytes: packed integers, scales, and packed zero points."""
        if self.zero_point is None:
            zero = 0
        elif self.float_offset:
            zero = self.zero_point.nbytes
        else:
            zero = packed_size(self.zero_point.size, self.nbits)
        return packed_size(self.data.size, self.nbits) + self.scale.nbytes + zero

    @property
    def float_offset(self) -> bool:
        return self.zero_point is not None and self.zero_point.dtype.kind == "f"

    def decompress(self) -> np.ndarray:
        """scale * (data - zero_point), in the scale's dtype, as Core ML's iOS18 op computes it."""
        # In float32, then rounded once to the dtype: exact for float16 (an 11-bit by 11-bit
        # product fits float32's 24 bits, and small integers and their differences are exact),
        # so the same values as float16 arithmetic, which numpy computes far more slowly. A float
        # offset's difference need not be exact in the dtype: it is rounded to it first, as
        # coremltools' value inference rounds it. Slice by slice, so the float32 temporaries stay
        # small whatever the tensor's size.
        blocks = self.scale.shape
        result = np.empty(self.shape, dtype=self.scale.dtype)
        data, out = block_view(self.data, blocks), block_view(result, blocks)
        scale = per_block_view(self.scale.astype(np.float32))
        zero = None if self.zero_point is None else per_block_view(self.zero_point.astype(np.float32))
        round_difference = self.float_offset and self.scale.dtype != np.float32
        for block, rows in block_slices(self.shape, blocks):
            q = data[block, rows].astype(np.float32)
            if zero is not None:
                q -= zero[block]
                if round_difference:
                    q = q.astype(self.scale.dtype).astype(np.float32)
            q *= scale[block]
            out[block, rows] = q
        return result


def integer_range(nbits: int, signed: bool, mode: str) -> Tuple[int, int]:
    """(qmin, qmax) of the stored integers."""
    if signed:
        low, high = -(1 << (nbits - 1)), (1 << (nbits - 1)) - 1
        return (low + 1, high) if mode == "linear_symmetric" else (low, high)
    high = (1 << nbits) - 1
    return (0, high - 1) if mode == "linear_symmetric" else (0, high)


def block_sizes_for(
    shape: Tuple[int, ...], config: LinearQuantizeConfig, output_axis: int, input_axis: int
) -> Tuple[int, ...]:
    """Block size per axis for `config` on a weight laid out with these axes (0 = the whole axis)."""
    rank = len(shape)
    if config.granularity == "per_tensor":
        sizes = [0] * rank
    elif config.granularity == "per_channel":
        sizes = [0] * rank
        sizes[normalize_axis(output_axis, rank, "output_axis")] = 1
    elif isinstance(config.block_size, tuple):
        if len(config.block_size) != rank:
            raise NotCompressible(f"block_size has {len(config.block_size)} entries for a rank-{rank} tensor")
        sizes = list(config.block_size)
    else:
        if rank < 2:
            raise NotCompressible("per_block quantization needs an input axis; the tensor has rank 1")
        sizes = [0] * rank
        sizes[normalize_axis(output_axis, rank, "output_axis")] = 1
        sizes[normalize_axis(input_axis, rank, "input_axis")] = config.block_size
    resolved = []
    for axis, (dim, size) in enumerate(zip(shape, sizes)):
        size = dim if size == 0 else size
        if dim % size:
            raise NotCompressible(
                f"dim {axis} (size {dim}) is not divisible by block size {size}"
                f" (the largest block size that divides it is {largest_divisor_at_most(dim, size)})"
            )
        resolved.append(size)
    return tuple(resolved)


def quantize(
    weight: np.ndarray, config: LinearQuantizeConfig, *, output_axis: int = 0, input_axis: int = 1
) -> AffineParams:
    """Quantize `weight` as `config` says, for a weight whose output/input channels are these axes."""
    weight = check_weight(weight)
    blocks = block_sizes_for(weight.shape, config, output_axis, input_axis)
    return quantize_blocks(weight, config.nbits, config.signed, config.mode, blocks)


def quantize_blocks(
    weight: np.ndarray, nbits: int, signed: bool, mode: str, block_sizes: Sequence[int]
) -> AffineParams:
    """Quantize with explicit block sizes (each dividing its dimension).

    Scale and zero point follow coremltools (scale = range / number of steps, so weights already
    on such a grid, as after quantization-aware training, come back exactly), with two repairs: an
    all-zero block gets scale 1 instead of 0 / 0, and a scale that rounding to the weight's dtype
    left too small to reach the block's extremes within half a step is nudged up by one ulp.
    """
    weight = check_weight(weight)
    qmin, qmax = integer_range(nbits, signed, mode)
    blocks = tuple(dim // size for dim, size in zip(weight.shape, block_sizes))
    if mode == "linear_float_offset":
        return _float_offset_blocks(weight, nbits, signed, blocks)
    x = block_view(weight, blocks)
    low, high = _block_extremes(weight, blocks, start=0.0)  # coremltools' ranges always hold 0
    if mode == "linear_symmetric":
        half = (qmax - qmin) // 2
        zero = np.full(low.shape, qmin + half, dtype=np.float64)
        high = np.maximum(-low, high)
        low = -high
        need = high / half
    else:
        span = high - low
        need = span / (qmax - qmin)
        ideal = qmin - low / np.where(span > 0, need, 1.0)
        zero = np.clip(np.round(ideal), qmin, qmax)
    # Values may sit up to half a step beyond the outermost levels and still round within half a step.
    reach_up, reach_down = qmax - zero + 0.5, zero - qmin + 0.5
    scale = np.where(need > 0, need, 1.0).astype(weight.dtype)
    for _ in range(4):
        s64 = scale.astype(np.float64)
        short = (s64 * reach_up < high) | (s64 * reach_down < -low)
        if not short.any():
            break
        scale = np.where(short, np.nextafter(scale, np.array(np.inf, dtype=weight.dtype)), scale)
    # Slice by slice. Float32 suffices for float16 weights and scales: a quotient that is not a
    # half-integer lies at least ulp(x) / s or ulp(s) / 2s away from one, far more than float32's
    # rounding of it (at most |x / s| * 2**-24), so it rounds to the same integer.
    work = np.float32 if weight.dtype == np.float16 else np.float64
    container = np.int8 if signed else np.uint8
    data = np.empty(weight.shape, dtype=container)
    out, divisor = block_view(data, blocks), scale.astype(work)
    for block, rows in block_slices(weight.shape, blocks):
        q = np.divide(x[block, rows], divisor[block], dtype=work)
        np.rint(q, out=q)
        q += zero[block]
        np.clip(q, qmin, qmax, out=q)
        out[block, rows] = q
    zero_point = None if signed and mode == "linear_symmetric" else zero.reshape(blocks).astype(container)
    return AffineParams(
        data=data,
        scale=scale.reshape(blocks),
        zero_point=zero_point,
        nbits=nbits,
        signed=signed,
    )


def _float_offset_blocks(weight: np.ndarray, nbits: int, signed: bool, blocks: Tuple[int, ...]) -> AffineParams:
    """`linear_float_offset`: each block's [min, max] onto the full integer range, the offset in
    the weight's dtype (see the module docstring)."""
    qmin, qmax = integer_range(nbits, signed, "linear")
    x = block_view(weight, blocks)
    low, high = _block_extremes(weight, blocks, start=np.inf)
    span = high - low
    # A constant block c: scale |c| and offset qmin - sign(c) decode qmin to c exactly (scale 1 and
    # offset qmin for zeros). Otherwise the step is the span over the levels, but at least
    # max|w| / 2**14 (so the offset, about -min / step, stays well inside float16's range for
    # blocks whose values barely differ, which the dtype holds only to a few ulps anyway) and at
    # least the dtype's smallest step (subnormal weights).
    constant = span == 0
    floor = np.maximum(np.maximum(np.abs(low), np.abs(high)) / (1 << 14), float(np.finfo(weight.dtype).smallest_subnormal))
    step = np.maximum(span / (qmax - qmin), floor).astype(weight.dtype)
    # Rounded to nearest (weights stored as such blocks keep their own step), but never below the
    # smallest step whose top level reaches the maximum within half a step: a subnormal float16
    # scale has few bits, and qmax - qmin of them may fall short of the span by more.
    reach = span / (qmax - qmin + 0.5)
    least = reach.astype(weight.dtype)
    least = np.where(least.astype(np.float64) < reach, np.nextafter(least, np.array(np.inf, dtype=weight.dtype)), least)
    scale = np.where(constant, np.where(low != 0, np.abs(low), 1.0).astype(weight.dtype), np.maximum(step, least))
    s64 = scale.astype(np.float64)
    offset = np.where(constant, qmin - np.sign(low), qmin - low / s64).astype(weight.dtype)
    work = np.float32 if weight.dtype == np.float16 else np.float64
    container = np.int8 if signed else np.uint8
    data = np.empty(weight.shape, dtype=container)
    out = block_view(data, blocks)
    divisor, shift = scale.astype(work), offset.astype(work)
    for block, rows in block_slices(weight.shape, blocks):
        q = np.divide(x[block, rows], divisor[block], dtype=work)
        q += shift[block]
        np.rint(q, out=q)
        np.clip(q, qmin, qmax, out=q)
        out[block, rows] = q
    return AffineParams(data=data, scale=scale.reshape(blocks), zero_point=offset.reshape(blocks), nbits=nbits, signed=signed)


def _block_extremes(weight: np.ndarray, blocks: Tuple[int, ...], start: float) -> Tuple[np.ndarray, np.ndarray]:
    """Each block's (min, max) as float64 per-block views (`per_block_view`), starting from
    (start, -start): 0 makes every range hold 0. Exact in the weight's own dtype (taken slice by
    slice on float32 copies of float16 weights, exact and many times faster for numpy); scales are
    then chosen in float64."""
    x = block_view(weight, blocks)
    inner = tuple(range(1, 2 * len(blocks), 2))
    low, high = per_block_view(np.full(blocks, float(start))), per_block_view(np.full(blocks, -float(start)))
    for block, rows in block_slices(weight.shape, blocks):
        part = x[block, rows].astype(np.float32, copy=False)
        low[block] = np.minimum(low[block], part.min(axis=inner, keepdims=True))
        high[block] = np.maximum(high[block], part.max(axis=inner, keepdims=True))
    return low, high
