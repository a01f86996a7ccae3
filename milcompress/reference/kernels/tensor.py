"""Kernels for tensor transformation, tensor operation, and scatter/gather ops.

These are the op types defined in coremltools' `defs/iOS15..iOS18/tensor_transformation.py`,
`defs/iOS15..iOS17/tensor_operation.py` and `defs/iOS15..iOS17/scatter_gather.py` (except
`identity`, which lives with control flow). Each op type has one kernel, whatever opset its op class
comes from; where an input appeared in a later opset (`topk`'s `return_indices`, `gather`'s
`batch_dims`, `validate_indices`) the kernel reads it when it is there, and where a meaning changed
(`reshape`'s zeros in iOS17, `non_maximum_suppression`'s layout in iOS17) it asks the opset.

Conventions taken from the op definitions and coremltools' value inference:

- slicing (`slice_by_index`, `slice_update`) is numpy slicing, masks included;
- gathers accept negative indices in [-size, 0) and wrap them, as numpy and coremltools' value
  inference do (iOS17 calls them out of bounds with undefined results, so wrapping is a valid
  choice); an index outside [-size, size) raises, and so does a negative one when
  `validate_indices` is true;
- scatters combine `updates` into `data` by `mode`: `update` writes (the last of duplicate indices
  wins), `add`/`sub`/`mul`/`div` apply every update at an index in turn, `max`/`min` keep the
  extreme of the data and every update at an index;
- `depth_to_space`/`space_to_depth`/`space_to_batch`/`batch_to_space` are TensorFlow's ops on NCHW
  (the TF frontend maps them one to one); `pixel_shuffle`/`pixel_unshuffle` are PyTorch's.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

from milcompress._coremltools import IOS17, opset_of
from milcompress.reference.kernels import OpArgs, axis_of, kernel

# -- shape ops ------------------------------------------------------------------------------------


def _opset_is_at_least(args: OpArgs, target) -> bool:
    return opset_of(args.op) >= target


def _reshape_target(input_shape: Sequence[int], shape: List[int], zeros_right_aligned: bool) -> List[int]:
    """`shape` with its zeros replaced: by the same axis of the input (iOS15), or by the input axis
    at the same distance from the right, or 1 where there is none (iOS17). A -1 is left for torch."""
    if zeros_right_aligned:
        rank = len(input_shape)
        return [
            (input_shape[rank - len(shape) + i] if rank - len(shape) + i >= 0 else 1) if size == 0 else size
            for i, size in enumerate(shape)
        ]
    if 0 in shape and len(shape) != len(input_shape):
        raise ValueError(f"a 0 in reshape's shape {shape} needs as many dims as the input's rank {len(input_shape)}")
    return [input_shape[i] if size == 0 else size for i, size in enumerate(shape)]


@kernel("reshape")
def reshape(args: OpArgs):
    x = args["x"]
    target = _reshape_target(list(x.shape), args.ints("shape"), _opset_is_at_least(args, IOS17))
    return x.reshape(target)


@kernel("reshape_like")
def reshape_like(args: OpArgs):
    shape: List[int] = []
    for reference, begin, end, end_mask in zip(
        args["ref_tensors"], args.ints("begins"), args.ints("ends"), args["end_masks"]
    ):
        shape += list(reference.shape[begin:] if bool(end_mask) else reference.shape[begin:end])
    return args["x"].reshape(shape)


@kernel("expand_dims")
def expand_dims(args: OpArgs):
    x = args["x"]
    axes = args.ints("axes")
    out_rank = x.dim() + len(axes)
    shape = list(x.shape)
    for axis in sorted(axis_of(axis, out_rank) for axis in axes):
        shape.insert(axis, 1)
    return x.reshape(shape)


@kernel("squeeze")
def squeeze(args: OpArgs):
    """Removes the size-1 axes among `axes` (all of them by default); other axes in `axes` stay, as
    in PyTorch."""
    x = args["x"]
    axes = args.ints("axes")
    if axes is None:
        axes = list(range(x.dim()))
    squeezed = {axis_of(axis, x.dim()) for axis in axes}
    return x.reshape([size for axis, size in enumerate(x.shape) if not (axis in squeezed and size == 1)])


@kernel("transpose")
def transpose(args: OpArgs):
    x = args["x"]
    return x if x.dim() == 0 else x.permute(args.ints("perm"))


@kernel("flatten2d")
def flatten2d(args: OpArgs):
    x = args["x"]
    axis = args.int("axis")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("reverse")
def reverse(args: OpArgs):
    x = args["x"]
    axes = args.ints("axes")
    axes = list(range(x.dim())) if axes is None else axes
    return x.flip(axes) if axes else x


@kernel("reverse_sequence")
def reverse_sequence(args: OpArgs):
    """Along `batch_axis` position b, reverses the first `lengths[b]` elements along `seq_axis`."""
    x = args["x"]
    seq_axis, batch_axis = axis_of(args.int("seq_axis"), x.dim()), axis_of(args.int("batch_axis"), x.dim())
    lengths = args["lengths"].long().reshape(-1, 1)  # [batch, 1]
    positions = torch.arange(x.shape[seq_axis]).reshape(1, -1)  # [1, seq]
    source = torch.where(positions < lengths, lengths - 1 - positions, positions)  # [batch, seq]
    if batch_axis > seq_axis:
        source = source.t()
    index_shape = [1] * x.dim()
    index_shape[batch_axis], index_shape[seq_axis] = x.shape[batch_axis], x.shape[seq_axis]
    return torch.gather(x, seq_axis, source.reshape(index_shape).expand(x.shape))


@kernel("shape")
def shape(args: OpArgs):
    return torch.tensor(list(args["x"].shape), dtype=torch.int64)


# -- slicing --------------------------------------------------------------------------------------


def _slice_positions(args: OpArgs, x_shape: Sequence[int]) -> List[List[int]]:
    """Per axis, the positions `slice_by_index`'s begin/end/stride/masks select, as numpy would
    (coremltools' `solve_slice_by_index_slice`); a squeezed axis selects the one at `begin`."""
    rank = len(x_shape)
    begin, end = args.ints("begin"), args.ints("end")
    stride = args.ints("stride", [1] * rank)
    begin_mask = args.ints("begin_mask", [0] * rank)
    end_mask = args.ints("end_mask", [0] * rank)
    squeeze_mask = args.ints("squeeze_mask", [0] * rank)
    positions = []
    for axis, size in enumerate(x_shape):
        start = None if begin_mask[axis] else begin[axis]
        if squeeze_mask[axis]:
            positions.append([range(size)[slice(start, None, 1)][0]])
            continue
        stop = None if end_mask[axis] else end[axis]
        positions.append(list(range(size)[slice(start, stop, stride[axis])]))
    return positions


def _squeeze_mask_axes(args: OpArgs, rank: int) -> List[int]:
    return [axis for axis, squeezed in enumerate(args.ints("squeeze_mask", [0] * rank)) if squeezed]


@kernel("slice_by_index")
def slice_by_index(args: OpArgs):
    x = args["x"]
    result = x
    for axis, positions in enumerate(_slice_positions(args, x.shape)):
        result = result.index_select(axis, torch.tensor(positions, dtype=torch.int64))
    squeezed = _squeeze_mask_axes(args, x.dim())
    return result.reshape([size for axis, size in enumerate(result.shape) if axis not in squeezed])


@kernel("slice_update")
def slice_update(args: OpArgs):
    x = args["x"]
    positions = _slice_positions(args, x.shape)
    index = tuple(
        torch.tensor(axis_positions, dtype=torch.int64).reshape([-1 if a == axis else 1 for a in range(x.dim())])
        for axis, axis_positions in enumerate(positions)
    )
    result = x.clone()
    result[index] = args["update"].to(x.dtype).reshape([len(p) for p in positions])
    return result


@kernel("slice_by_size")
def slice_by_size(args: OpArgs):
    """From `begin` (negative counts from the end), `size` elements per axis; -1 means to the end."""
    x = args["x"]
    result = x
    for axis, (begin, size) in enumerate(zip(args.ints("begin"), args.ints("size"))):
        begin = axis_of(begin, x.shape[axis])
        result = result.narrow(axis, begin, x.shape[axis] - begin if size == -1 else size)
    return result


@kernel("sliding_windows")
def sliding_windows(args: OpArgs):
    """Windows of `size` every `stride` along `axis`; the window axis comes right after `axis`."""
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    return x.unfold(axis, args.int("size"), args.int("stride")).movedim(-1, axis + 1)


# -- joining and splitting ------------------------------------------------------------------------


@kernel("concat")
def concat(args: OpArgs):
    """Joins `values` along `axis`; with `interleave`, takes one slice of each input in turn."""
    values = tuple(args["values"])
    axis = args.int("axis")
    if values[0].dim() == 0:
        return torch.stack(values)
    axis = axis_of(axis, values[0].dim())
    if args.bool("interleave", False):
        return torch.stack(values, dim=axis + 1).flatten(axis, axis + 1)
    return torch.cat(values, dim=axis)


@kernel("stack")
def stack(args: OpArgs):
    values = tuple(args["values"])
    return torch.stack(values, dim=axis_of(args.int("axis"), values[0].dim() + 1))


@kernel("split")
def split(args: OpArgs):
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    sizes = args.ints("split_sizes")
    if sizes is None:
        sizes = x.shape[axis] // args.int("num_splits")
    return tuple(torch.split(x, sizes, dim=axis))


@kernel("tile")
def tile(args: OpArgs):
    return args["x"].repeat(args.ints("reps"))


# -- padding --------------------------------------------------------------------------------------


def _padded_positions(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    """For each position of a padded axis, the input position it copies: mirrored without repeating
    the edge (`reflect`), or the nearest edge (`replicate`)."""
    positions = torch.arange(-before, size + after)
    if mode == "replicate":
        return positions.clamp(0, size - 1)
    positions = positions.abs()
    return torch.where(positions > size - 1, 2 * (size - 1) - positions, positions)


@kernel("pad")
def pad(args: OpArgs):
    """Pads the last len(pad)/2 axes by pad[2i] before and pad[2i+1] after, with `constant_val`,
    by reflection, or by replicating the edge."""
    x = args["x"]
    amounts = args.ints("pad")
    mode = args.str("mode")
    first_padded = x.dim() - len(amounts) // 2
    if mode == "constant":
        torch_order = [amount for i in reversed(range(len(amounts) // 2)) for amount in amounts[2 * i : 2 * i + 2]]
        return F.pad(x, torch_order, mode="constant", value=args.float("constant_val"))
    result = x
    for i in range(len(amounts) // 2):
        axis = first_padded + i
        positions = _padded_positions(x.shape[axis], amounts[2 * i], amounts[2 * i + 1], mode)
        result = result.index_select(axis, positions)
    return result


# -- depth, space and batch -----------------------------------------------------------------------


@kernel("depth_to_space")
def depth_to_space(args: OpArgs):
    """TensorFlow's depth_to_space on NCHW: out[n, c, h*b + i, w*b + j] = x[n, (i*b + j)*C' + c, h, w]."""
    x = args["x"]
    block = args.int("block_size")
    n, channels, height, width = x.shape
    out_channels = channels // (block * block)
    x = x.reshape(n, block, block, out_channels, height, width).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, out_channels, height * block, width * block)


@kernel("space_to_depth")
def space_to_depth(args: OpArgs):
    """The inverse of depth_to_space: out[n, (i*b + j)*C + c, h, w] = x[n, c, h*b + i, w*b + j]."""
    x = args["x"]
    block = args.int("block_size")
    n, channels, height, width = x.shape
    x = x.reshape(n, channels, height // block, block, width // block, block).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, channels * block * block, height // block, width // block)


@kernel("pixel_shuffle")
def pixel_shuffle(args: OpArgs):
    return F.pixel_shuffle(args["x"], args.int("upscale_factor"))


@kernel("pixel_unshuffle")
def pixel_unshuffle(args: OpArgs):
    return F.pixel_unshuffle(args["x"], args.int("downscale_factor"))


@kernel("space_to_batch")
def space_to_batch(args: OpArgs):
    """TensorFlow's SpaceToBatchND on NCHW: pads H and W by `paddings`, then moves each offset
    (i, j) of a block to batch (i*block_w + j)*N + n."""
    x = args["x"]
    block_h, block_w = args.ints("block_shape")
    (top, bottom), (left, right) = args["paddings"].reshape(2, 2).tolist()
    x = F.pad(x, [left, right, top, bottom])
    n, channels, height, width = x.shape
    x = x.reshape(n, channels, height // block_h, block_h, width // block_w, block_w).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(block_h * block_w * n, channels, height // block_h, width // block_w)


@kernel("batch_to_space")
def batch_to_space(args: OpArgs):
    """The inverse of space_to_batch: moves batch blocks back into H and W, then crops `crops`."""
    x = args["x"]
    block_h, block_w = args.ints("block_shape")
    (top, bottom), (left, right) = args["crops"].reshape(2, 2).tolist()
    batch, channels, height, width = x.shape
    n = batch // (block_h * block_w)
    x = x.reshape(block_h, block_w, n, channels, height, width).permute(2, 3, 4, 0, 5, 1)
    x = x.reshape(n, channels, height * block_h, width * block_w)
    return x[:, :, top : height * block_h - bottom, left : width * block_w - right]


# -- tensor operations ----------------------------------------------------------------------------


@kernel("band_part")
def band_part(args: OpArgs):
    """Zeroes the innermost matrices outside the band of `lower` sub- and `upper` super-diagonals
    (a negative count keeps the whole triangle)."""
    x = args["x"]
    lower, upper = args.int("lower"), args.int("upper")
    rows = torch.arange(x.shape[-2]).reshape(-1, 1)
    columns = torch.arange(x.shape[-1]).reshape(1, -1)
    band = ((lower < 0) | (rows - columns <= lower)) & ((upper < 0) | (columns - rows <= upper))
    return torch.where(band, x, torch.zeros((), dtype=x.dtype))


@kernel("cumsum")
def cumsum(args: OpArgs):
    """Cumulative sum along `axis`; `exclusive` shifts it by one (starting from 0), `reverse` sums
    from the end."""
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    reverse_order = args.bool("reverse")
    if reverse_order:
        x = x.flip(axis)
    result = torch.cumsum(x, dim=axis)
    if args.bool("exclusive"):
        shifted = result.narrow(axis, 0, x.shape[axis] - 1)
        result = torch.cat([torch.zeros_like(result.narrow(axis, 0, 1)), shifted], dim=axis)
    return result.flip(axis) if reverse_order else result


@kernel("fill")
def fill(args: OpArgs):
    return torch.full(args.ints("shape"), args["value"].item(), dtype=args.output_dtype())


@kernel("fill_like")
def fill_like(args: OpArgs):
    return torch.full(tuple(args["ref_tensor"].shape), args["value"].item(), dtype=args.output_dtype())


@kernel("non_zero")
def non_zero(args: OpArgs):
    return torch.nonzero(args["x"])


@kernel("one_hot")
def one_hot(args: OpArgs):
    """A new axis at `axis` of length `one_hot_vector_size`, `on_value` where it equals the index and
    `off_value` elsewhere (an index outside [0, size) gives all `off_value`)."""
    indices = args["indices"].long()
    size = args.int("one_hot_vector_size")
    axis = axis_of(args.int("axis"), indices.dim() + 1)
    positions = torch.arange(size).reshape([-1 if a == axis else 1 for a in range(indices.dim() + 1)])
    hot = indices.unsqueeze(axis) == positions
    dtype = args.output_dtype()
    return torch.where(hot, args["on_value"].to(dtype), args["off_value"].to(dtype))


@kernel("range_1d")
def range_1d(args: OpArgs):
    start, end, step = args["start"], args["end"], args["step"]
    if all(not value.is_floating_point() for value in (start, end, step)):
        return torch.arange(int(start), int(end), int(step), dtype=torch.int64)
    return torch.arange(float(start), float(end), float(step), dtype=torch.float64).to(torch.float32)


def _sort_order(x: torch.Tensor, axis: int, ascending: bool) -> torch.Tensor:
    """Indices that sort `x` along `axis`; equal values keep their input order."""
    return torch.argsort(x, dim=axis, descending=not ascending, stable=True)


@kernel("argsort")
def argsort(args: OpArgs):
    x = args["x"]
    return _sort_order(x, axis_of(args.int("axis"), x.dim()), args.bool("ascending"))


@kernel("topk")
def topk(args: OpArgs):
    """The `k` largest (smallest if `ascending`) values along `axis` and their indices, sorted (which
    `sort=False` permits); k=-1 (iOS17) takes all. Returns only the values if not `return_indices`."""
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    k = args.int("k")
    k = x.shape[axis] if k == -1 else k
    indices = _sort_order(x, axis, args.bool("ascending")).narrow(axis, 0, k)
    values = torch.gather(x, axis, indices)
    return (values, indices) if args.bool("return_indices", True) else values


# -- gather and scatter ---------------------------------------------------------------------------


def _checked_indices(indices: torch.Tensor, size, validate: bool) -> torch.Tensor:
    """`indices` into an axis (or axes, with `size` a tensor broadcasting against them) of `size`,
    negatives wrapped; out-of-bounds raises, as does a negative one when `validate_indices`."""
    indices = indices.long()
    if validate and bool((indices < 0).any()):
        raise IndexError(f"negative index with validate_indices=True: {indices.min().item()}")
    if bool(((indices < -size) | (indices >= size)).any()):
        raise IndexError(f"index out of bounds for size {size.tolist() if isinstance(size, torch.Tensor) else size}")
    return torch.where(indices < 0, indices + size, indices)


@kernel("gather")
def gather(args: OpArgs):
    """x[..., indices[...], ...] along `axis`, the first `batch_dims` axes of x and indices walked
    together (iOS16+)."""
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    batch_dims = args.int("batch_dims", 0)
    indices = _checked_indices(args["indices"], x.shape[axis], args.bool("validate_indices", False))

    def gather_one(values: torch.Tensor, positions: torch.Tensor, along: int) -> torch.Tensor:
        selected = values.index_select(along, positions.reshape(-1))
        return selected.reshape(values.shape[:along] + positions.shape + values.shape[along + 1 :])

    if batch_dims == 0:
        return gather_one(x, indices, axis)
    batch_shape = x.shape[:batch_dims]
    x_batches = x.reshape((-1,) + x.shape[batch_dims:])
    index_batches = indices.reshape((-1,) + indices.shape[batch_dims:])
    gathered = torch.stack([gather_one(v, i, axis - batch_dims) for v, i in zip(x_batches, index_batches)])
    return gathered.reshape(batch_shape + gathered.shape[1:])


@kernel("gather_along_axis")
def gather_along_axis(args: OpArgs):
    x = args["x"]
    axis = axis_of(args.int("axis"), x.dim())
    indices = _checked_indices(args["indices"], x.shape[axis], args.bool("validate_indices", False))
    return torch.gather(x, axis, indices)


@kernel("gather_nd")
def gather_nd(args: OpArgs):
    """out[b..., i...] = x[b..., indices[b..., i..., :], ...]: the last axis of `indices` indexes the
    leading axes of x after the `batch_dims` shared ones."""
    x = args["x"]
    batch_dims = args.int("batch_dims", 0)
    depth = args["indices"].shape[-1]
    indexed_shape = torch.tensor(x.shape[batch_dims : batch_dims + depth])
    indices = _checked_indices(args["indices"], indexed_shape, args.bool("validate_indices", False))
    batch_count = math.prod(x.shape[:batch_dims])
    x_batches = x.reshape((batch_count,) + x.shape[batch_dims:])
    index_batches = indices.reshape(batch_count, -1, depth)
    batch = torch.arange(batch_count).reshape(-1, 1)
    gathered = x_batches[(batch,) + tuple(index_batches[..., d] for d in range(depth))]
    return gathered.reshape(indices.shape[:-1] + x.shape[batch_dims + depth :])


def _scatter_along(data: torch.Tensor, axis: int, indices: torch.Tensor, updates: torch.Tensor, mode: str):
    """data with updates[p] combined into data[p with its `axis` coordinate replaced by indices[p]]."""
    updates = updates.to(data.dtype)
    if mode == "update":
        return data.scatter(axis, indices, updates)
    if mode == "add":
        return data.scatter_add(axis, indices, updates)
    if mode == "sub":
        return data.scatter_add(axis, indices, -updates)
    if mode == "mul":
        return data.scatter_reduce(axis, indices, updates, "prod")
    if mode == "div":
        divisor = torch.ones_like(data).scatter_reduce(axis, indices, updates, "prod")
        return data / divisor if data.is_floating_point() else torch.div(data, divisor, rounding_mode="trunc")
    if mode in ("max", "min"):
        return data.scatter_reduce(axis, indices, updates, "amax" if mode == "max" else "amin")
    raise ValueError(f"unknown scatter mode '{mode}'")


@kernel("scatter")
def scatter(args: OpArgs):
    """Combines slice i of `updates` along `axis` into slice indices[i] of `data`, by `mode`."""
    data = args["data"]
    axis = axis_of(args.int("axis"), data.dim())
    indices = _checked_indices(args["indices"], data.shape[axis], args.bool("validate_indices", False))
    updates = args["updates"]
    view = [-1 if a == axis else 1 for a in range(data.dim())]
    return _scatter_along(data, axis, indices.reshape(view).expand(updates.shape), updates, args.str("mode"))


@kernel("scatter_along_axis")
def scatter_along_axis(args: OpArgs):
    data = args["data"]
    axis = axis_of(args.int("axis"), data.dim())
    indices = _checked_indices(args["indices"], data.shape[axis], args.bool("validate_indices", False))
    return _scatter_along(data, axis, indices, args["updates"], args.str("mode"))


@kernel("scatter_nd")
def scatter_nd(args: OpArgs):
    """Combines updates[i...] into data[indices[i..., :]] (a slice when indices.shape[-1] < rank)."""
    data = args["data"]
    depth = args["indices"].shape[-1]
    indexed_shape = data.shape[:depth]
    indices = _checked_indices(args["indices"], torch.tensor(indexed_shape), args.bool("validate_indices", False))
    strides = torch.tensor([math.prod(indexed_shape[d + 1 :]) for d in range(depth)], dtype=torch.int64)
    flat_positions = (indices.reshape(-1, depth) * strides).sum(-1)  # [N] into the flattened indexed axes
    flat_data = data.reshape((-1,) + data.shape[depth:])
    flat_updates = args["updates"].reshape((-1,) + data.shape[depth:])
    flat_indices = flat_positions.reshape([-1] + [1] * (flat_data.dim() - 1)).expand(flat_updates.shape)
    return _scatter_along(flat_data, 0, flat_indices, flat_updates, args.str("mode")).reshape(data.shape)


# -- non-maximum suppression ----------------------------------------------------------------------


def _intersection_over_union(boxes: torch.Tensor) -> torch.Tensor:
    """[B, B] IoU of boxes given as (center x, center y, width, height); 0 where the union is empty."""
    center_x, center_y, width, height = boxes.unbind(-1)
    left, right = center_x - width / 2, center_x + width / 2
    bottom, top = center_y - height / 2, center_y + height / 2
    overlap_w = (torch.minimum(right[:, None], right[None]) - torch.maximum(left[:, None], left[None])).clamp(min=0)
    overlap_h = (torch.minimum(top[:, None], top[None]) - torch.maximum(bottom[:, None], bottom[None])).clamp(min=0)
    intersection = overlap_w * overlap_h
    union = (width * height)[:, None] + (width * height)[None] - intersection
    return torch.where(union > 0, intersection / torch.where(union > 0, union, 1.0), 0.0)


def _greedy_selection(candidates: List[int], iou: List[List[float]], iou_threshold: float, limit: int) -> List[int]:
    """From `candidates` (best first), each one that overlaps no kept box by IoU > threshold."""
    kept: List[int] = []
    for box in candidates:
        if len(kept) == limit:
            break
        if all(iou[box][other] <= iou_threshold for other in kept):
            kept.append(box)
    return kept


def _select_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_boxes: int,
    per_class: bool,
) -> List[int]:
    """One batch of NMS: box indices, best score first. A box's score is its best class score; boxes
    scoring at most `score_threshold` are dropped; per class, boxes compete only with boxes whose best
    class is the same. If nothing survives, the best box alone is kept (what coremltools' own NMS
    tests expect of Core ML)."""
    best_score, best_class = scores.max(dim=-1)
    order = torch.argsort(best_score, descending=True, stable=True).tolist()
    best_score, best_class = best_score.tolist(), best_class.tolist()
    candidates = [box for box in order if best_score[box] > score_threshold]
    iou = _intersection_over_union(boxes).tolist()
    if per_class:
        kept = []
        for cls in sorted({best_class[box] for box in candidates}):
            same_class = [box for box in candidates if best_class[box] == cls]
            kept += _greedy_selection(same_class, iou, iou_threshold, max_boxes)
        kept = sorted(kept, key=order.index)[:max_boxes]
    else:
        kept = _greedy_selection(candidates, iou, iou_threshold, max_boxes)
    return kept if kept else order[:1]


@kernel("non_maximum_suppression")
def non_maximum_suppression(args: OpArgs):
    """Per batch, the boxes NMS keeps, padded to `max_boxes` with zero boxes and scores and index -1.
    iOS15: boxes [n, B, 4], scores [n, B, K] -> boxes, scores, indices, count. iOS17: boxes
    [n, 4, B], scores [n, K, B], no score threshold -> boxes [n, 4, max], scores [n, K, max], indices."""
    boxes, scores = args["boxes"], args["scores"]
    boxes_last = _opset_is_at_least(args, IOS17)
    if boxes_last:
        boxes, scores = boxes.transpose(1, 2), scores.transpose(1, 2)
    max_boxes = args.int("max_boxes")
    score_threshold = args.float("score_threshold", -math.inf)
    n_batch, n_classes = scores.shape[0], scores.shape[2]
    out_boxes = torch.zeros(n_batch, max_boxes, 4)
    out_scores = torch.zeros(n_batch, max_boxes, n_classes)
    out_indices = torch.full((n_batch, max_boxes), -1, dtype=torch.int64)
    counts = torch.zeros(n_batch, dtype=torch.int64)
    iou_threshold, per_class = args.float("iou_threshold"), args.bool("per_class_suppression")
    for b in range(n_batch):
        kept = _select_boxes(boxes[b], scores[b], iou_threshold, score_threshold, max_boxes, per_class)
        kept_index = torch.tensor(kept, dtype=torch.int64)
        out_boxes[b, : len(kept)] = boxes[b, kept_index]
        out_scores[b, : len(kept)] = scores[b, kept_index]
        out_indices[b, : len(kept)] = kept_index
        counts[b] = len(kept)
    if boxes_last:
        return out_boxes.transpose(1, 2), out_scores.transpose(1, 2), out_indices
    return out_boxes, out_scores, out_indices, counts
