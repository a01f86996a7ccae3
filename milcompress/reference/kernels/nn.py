"""Kernels for the neural-network ops: convolution, linear algebra, pooling, normalization, image
resizing and attention (coremltools `defs/iOS15/{conv,linear,pool,normalization,image_resizing}.py`,
their iOS16 and iOS17 revisions, and `defs/iOS18/transformers.py`).

Conventions coremltools documents and several kernels share:

- Padding `same` pads an axis of size D with kernel K (dilated), stride S by
  `total = max((ceil(D / S) - 1) * S + K - D, 0)`, `total // 2` before and the rest after (extra on
  the bottom/right, Core ML's BOTTOM_RIGHT_HEAVY); `same_lower` puts the extra before instead.
  Padded values are zeros, except that max pooling never picks a padded value.
- A resize samples output index i of an axis of input size X (an interval [0, X-1]) at a position
  given by its sampling mode (`_sampling_positions`), clamped to [0, X-1]; linear interpolation reads
  the two neighbouring pixels, nearest reads pixel floor(position + 0.5). crop_resize applies the
  same modes to the interval between a box's start and end, and pads positions outside the image.
- resample and affine sample 2-D images at arbitrary (x, y) points, where (0, 0) is the centre of the
  top-left pixel, with constant/border/reflection/symmetric padding (`_sample_image`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from milcompress.reference.kernels import OpArgs, axis_of, kernel

_CONVOLUTION = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TRANSPOSED_CONVOLUTION = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVERAGE_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# -- shared helpers -----------------------------------------------------------------------------


def _as_float(value: torch.Tensor) -> torch.Tensor:
    return value if value.dtype == torch.float32 else value.to(torch.float32)


def _common_dtype(*values: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The values in float32 if any is floating point, else in int64 (integer matmul stays exact)."""
    dtype = torch.float32 if any(v.is_floating_point() for v in values) else torch.int64
    return tuple(v.to(dtype) for v in values)


def _same_padding(input_size: int, kernel_size: int, stride: int, lower: bool) -> Tuple[int, int]:
    total = max((math.ceil(input_size / stride) - 1) * stride + kernel_size - input_size, 0)
    smaller, larger = total // 2, total - total // 2
    return (larger, smaller) if lower else (smaller, larger)


def _spatial_padding(
    pad_type: str,
    input_sizes: Sequence[int],
    kernel_sizes: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pad: Optional[Sequence[int]],
) -> List[Tuple[int, int]]:
    """(before, after) padding of each spatial axis for a conv or pool `pad_type`."""
    pad_type = pad_type.lower()
    rank = len(input_sizes)
    if pad_type == "valid":
        return [(0, 0)] * rank
    if pad_type == "custom":
        return [(pad[2 * axis], pad[2 * axis + 1]) for axis in range(rank)]
    if pad_type in ("same", "same_lower"):
        return [
            _same_padding(size, (k - 1) * d + 1, s, lower=pad_type == "same_lower")
            for size, k, s, d in zip(input_sizes, kernel_sizes, strides, dilations)
        ]
    raise ValueError(f"unknown pad_type {pad_type!r}")


def _pad_spatial(x: torch.Tensor, pads: Sequence[Tuple[int, int]], value: float = 0.0) -> torch.Tensor:
    """Pad (or, with negative amounts, crop) the trailing len(pads) axes of x."""
    amounts = [amount for before_after in reversed(pads) for amount in before_after]
    if not any(amounts):
        return x
    return F.pad(x, amounts, mode="constant", value=value)


def _channel_shape(values: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over [N, C, *spatial] of the given rank."""
    return values.reshape([1, -1] + [1] * (rank - 2))


# -- convolution (conv.py) ------------------------------------------------------------------------


def _convolve(args: OpArgs, weight: torch.Tensor) -> torch.Tensor:
    x = _as_float(args["x"])
    spatial_rank = x.dim() - 2
    strides = args.ints("strides", [1] * spatial_rank)
    dilations = args.ints("dilations", [1] * spatial_rank)
    pads = _spatial_padding(
        args.str("pad_type", "valid"), list(x.shape[2:]), list(weight.shape[2:]), strides, dilations, args.ints("pad")
    )
    bias = args.get("bias")
    # Symmetric padding goes to the convolution itself (no padded copy of x); other padding first.
    symmetric = all(before == after >= 0 for before, after in pads)
    return _CONVOLUTION[spatial_rank](
        x if symmetric else _pad_spatial(x, pads),
        _as_float(weight),
        None if bias is None else _as_float(bias),
        stride=strides,
        padding=[before for before, _ in pads] if symmetric else 0,
        dilation=dilations,
        groups=args.int("groups", 1),
    )


@kernel("conv")
def conv(args: OpArgs):
    return _convolve(args, args["weight"])


@kernel("conv_quantized")
def conv_quantized(args: OpArgs):
    """conv with weights stored as uint8 codes: weight = code * quant_scale + quant_bias, the scale and
    bias being one value or one per output channel (Core ML's LinearQuantizationParams)."""
    quantization_type = args.str("quantization_type")
    if quantization_type != "linear":
        raise NotImplementedError(
            f"conv_quantized with quantization_type {quantization_type!r}: the op has no look-up table input"
        )
    codes = args["weight"].to(torch.float32)

    def per_channel(values: torch.Tensor) -> torch.Tensor:
        values = _as_float(values).reshape(-1)
        return values.reshape([-1] + [1] * (codes.dim() - 1)) if values.numel() > 1 else values.reshape(())

    return _convolve(args, codes * per_channel(args["quant_scale"]) + per_channel(args["quant_bias"]))


@kernel("conv_transpose")
def conv_transpose(args: OpArgs):
    """The full transposed convolution, cropped on each axis to the output size from `before`
    elements in: the custom pad before the axis, nothing for valid, and for same TensorFlow's
    conv2d_transpose convention, half the excess rounded down (same_lower: rounded up). The output
    size is output_shape when given, else the documented size of the pad_type; an output_shape past
    the full result reads zeros there (bias only)."""
    x, weight = _as_float(args["x"]), _as_float(args["weight"])
    spatial_rank = x.dim() - 2
    strides = args.ints("strides", [1] * spatial_rank)
    pad = args.ints("pad", [0] * 2 * spatial_rank)
    pad_type = args.str("pad_type", "valid").lower()
    output_shape = args.ints("output_shape")
    if pad_type not in ("custom", "valid", "same", "same_lower"):
        raise ValueError(f"unknown pad_type {pad_type!r}")
    dilations = args.ints("dilations", [1] * spatial_rank)
    full = _TRANSPOSED_CONVOLUTION[spatial_rank](x, weight, None, stride=strides, dilation=dilations, groups=args.int("groups", 1))
    crops = []
    for axis in range(spatial_rank):
        full_size = full.shape[2 + axis]
        if output_shape is not None:
            size = output_shape[2 + axis]
        elif pad_type == "custom":
            size = full_size - pad[2 * axis] - pad[2 * axis + 1]
        elif pad_type == "valid":
            size = full_size
        else:
            size = x.shape[2 + axis] * strides[axis]
        excess = max(full_size - size, 0)
        befores = {"custom": pad[2 * axis], "valid": 0, "same": excess // 2, "same_lower": excess - excess // 2}
        before = befores[pad_type]
        crops.append((-before, before + size - full_size))
    result = _pad_spatial(full, crops)
    bias = args.get("bias")
    return result if bias is None else result + _channel_shape(_as_float(bias), result.dim())


# -- linear algebra (linear.py) -------------------------------------------------------------------


@kernel("linear")
def linear(args: OpArgs):
    x, weight, bias = _common_dtype(args["x"], args["weight"], args["bias"])
    return torch.matmul(x, weight.transpose(0, 1)) + bias


@kernel("matmul")
def matmul(args: OpArgs):
    x, y = _common_dtype(args["x"], args["y"])
    if args.bool("transpose_x", False) and x.dim() >= 2:
        x = x.transpose(-1, -2)
    if args.bool("transpose_y", False) and y.dim() >= 2:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@kernel("einsum")
def einsum(args: OpArgs):
    """Two operands laid out [*B, C, H, W1] and [*B, W1, H, W2]; B and H of size 1 broadcast (as
    torch.einsum broadcasts dimensions of size 1)."""
    x, y = _common_dtype(*args["values"])
    return torch.einsum(args.str("equation"), x, y)


# -- pooling (pool.py) ----------------------------------------------------------------------------


def _pooled_size(input_size: int, total_pad: int, kernel_size: int, stride: int, ceil_mode: bool) -> int:
    """coremltools' output size (spatial_dimensions_out_shape); in ceil mode a last window that would
    start past the input and its leading pad is dropped, when there is padding."""
    if not ceil_mode:
        return (input_size + total_pad - kernel_size) // stride + 1
    size = (input_size + total_pad - kernel_size + stride - 1) // stride + 1
    if total_pad > 0 and (size - 1) * stride >= input_size + total_pad / 2:
        size -= 1
    return size


def _pooling_windows(args: OpArgs):
    """(kernel sizes, strides, pads, window pads): `pads` is the op's padding, `window pads` the
    padding that makes exactly the op's windows fit (ceil mode adds after, unused tails are cut)."""
    x = args["x"]
    spatial_rank = x.dim() - 2
    input_sizes = list(x.shape[2:])
    kernel_sizes = args.ints("kernel_sizes")
    strides = args.ints("strides", [1] * spatial_rank)
    pad_type, pad = args.str("pad_type", "valid"), args.ints("pad")
    pads = _spatial_padding(pad_type, input_sizes, kernel_sizes, strides, [1] * spatial_rank, pad)
    ceil_mode = args.bool("ceil_mode", False)
    window_pads = []
    for size, k, s, (before, after) in zip(input_sizes, kernel_sizes, strides, pads):
        output_size = _pooled_size(size, before + after, k, s, ceil_mode)
        window_pads.append((before, (output_size - 1) * s + k - size - before))
    return kernel_sizes, strides, pads, window_pads


@kernel("max_pool")
def max_pool(args: OpArgs):
    kernel_sizes, strides, _, window_pads = _pooling_windows(args)
    x = _as_float(args["x"])
    return _MAX_POOL[x.dim() - 2](_pad_spatial(x, window_pads, float("-inf")), kernel_sizes, strides)


@kernel("avg_pool")
def avg_pool(args: OpArgs):
    """The window's sum over the number of its elements inside the padded input (the padding counts
    unless exclude_padding_from_average; ceil mode's overhang past the padding never counts)."""
    kernel_sizes, strides, pads, window_pads = _pooling_windows(args)
    x = _as_float(args["x"])
    average = _AVERAGE_POOL[x.dim() - 2]
    counted = torch.ones([1, 1] + list(x.shape[2:]))  # the window positions the divisor counts
    if args.bool("exclude_padding_from_average", False):
        counted = _pad_spatial(counted, window_pads)
    else:
        overhang = [(0, window_after - after) for (_, after), (_, window_after) in zip(pads, window_pads)]
        counted = _pad_spatial(_pad_spatial(counted, pads, 1.0), overhang)
    sums = average(_pad_spatial(x, window_pads), kernel_sizes, strides)
    return sums / average(counted, kernel_sizes, strides).clamp(min=1e-12)


@kernel("l2_pool")
def l2_pool(args: OpArgs):
    kernel_sizes, strides, _, window_pads = _pooling_windows(args)
    x = _as_float(args["x"])
    mean_square = _AVERAGE_POOL[x.dim() - 2](_pad_spatial(x * x, window_pads), kernel_sizes, strides)
    return torch.sqrt(mean_square * math.prod(kernel_sizes))


# -- normalization (normalization.py) ------------------------------------------------------------


@kernel("batch_norm")
def batch_norm(args: OpArgs):
    x = _as_float(args["x"])
    rank = x.dim()
    mean, variance = _as_float(args["mean"]), _as_float(args["variance"])
    normalized = (x - _channel_shape(mean, rank)) / torch.sqrt(_channel_shape(variance, rank) + args.float("epsilon", 1e-5))
    return _channel_affine(args, normalized)


def _channel_affine(args: OpArgs, normalized: torch.Tensor) -> torch.Tensor:
    """normalized * gamma + beta, per channel (axis 1), each only where the op has it."""
    rank = normalized.dim()
    if "gamma" in args:
        normalized = normalized * _channel_shape(_as_float(args["gamma"]), rank)
    if "beta" in args:
        normalized = normalized + _channel_shape(_as_float(args["beta"]), rank)
    return normalized


@kernel("instance_norm")
def instance_norm(args: OpArgs):
    """Each (batch, channel) slice normalized over its spatial axes, with the biased variance."""
    x = _as_float(args["x"])
    rank = x.dim()
    spatial_axes = tuple(range(2, rank))
    centered = x - x.mean(dim=spatial_axes, keepdim=True)
    variance = (centered * centered).mean(dim=spatial_axes, keepdim=True)
    return _channel_affine(args, centered / torch.sqrt(variance + args.float("epsilon", 1e-5)))


@kernel("l2_norm")
def l2_norm(args: OpArgs):
    """x / sqrt(sum(x^2) + epsilon) over the last three axes, the leading axes being batch."""
    x = _as_float(args["x"])
    square_sum = (x * x).sum(dim=(-3, -2, -1), keepdim=True)
    return x / torch.sqrt(square_sum + args.float("epsilon", 1e-6))


@kernel("layer_norm")
def layer_norm(args: OpArgs):
    """Normalized over `axes` (biased variance); gamma and beta have the shape of x on those axes,
    in axis order."""
    x = _as_float(args["x"])
    rank = x.dim()
    axes = sorted({axis_of(axis, rank) for axis in args.ints("axes", range(rank))})
    centered = x - x.mean(dim=axes, keepdim=True)
    variance = (centered * centered).mean(dim=axes, keepdim=True)
    result = centered / torch.sqrt(variance + args.float("epsilon", 1e-5))
    normalized_shape = [x.shape[axis] if axis in axes else 1 for axis in range(rank)]
    if "gamma" in args:
        result = result * _as_float(args["gamma"]).reshape(normalized_shape)
    if "beta" in args:
        result = result + _as_float(args["beta"]).reshape(normalized_shape)
    return result


@kernel("local_response_norm")
def local_response_norm(args: OpArgs):
    """x / (k + alpha / size * sum of x^2 over the channels c - size // 2 .. c + (size - 1) // 2)^beta
    (torch.nn.LocalResponseNorm's window). The channel axis is axis -3, as in Core ML's LRN layer:
    axis 1 of a rank-4 [n, C, H, W] input, but axis 0 of a rank-3 one (coremltools' own test expects
    that: its rank-3 example normalizes each value by itself alone)."""
    x = _as_float(args["x"])
    size = args.int("size")
    channels = x.shape[-3]
    squares = (x * x).reshape(-1, 1, channels, x.shape[-2] * x.shape[-1])  # channels as a pooled axis
    squares = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))
    window_sum = (F.avg_pool2d(squares, (size, 1), stride=1) * size).reshape(x.shape)
    denominator = (args.float("k", 1.0) + args.float("alpha", 1e-4) / size * window_sum) ** args.float("beta", 0.75)
    return x / denominator


# -- image resizing (image_resizing.py) -----------------------------------------------------------


def _sampling_positions(sampling_mode: str, length: float, count: int) -> torch.Tensor:
    """`count` positions on the interval [0, length] (an axis of size length + 1, or a crop box), by
    resize_bilinear's documented sampling modes, clamped to the interval."""
    index = torch.arange(count, dtype=torch.float64)
    size = length + 1
    if sampling_mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if count == 1:
            positions = torch.full((1,), length / 2 if sampling_mode == "ALIGN_CORNERS" else 0.0, dtype=torch.float64)
        else:
            positions = index * (length / (count - 1))
    elif sampling_mode == "DEFAULT":
        positions = index * (size / count)
    elif sampling_mode == "OFFSET_CORNERS":
        spacing = max(1.0, length) / count
        positions = 0.5 * spacing + index * spacing
    elif sampling_mode == "UNALIGN_CORNERS":
        positions = (index + 0.5) * (size / count) - 0.5
    else:
        raise ValueError(f"unknown sampling_mode {sampling_mode!r}")
    return positions.clamp(0.0, length) if length >= 0 else positions


def _interpolate_axis(x: torch.Tensor, axis: int, positions: torch.Tensor, nearest: bool = False) -> torch.Tensor:
    """x sampled along `axis` at `positions` (within [0, size - 1]), linearly or nearest."""
    size = x.shape[axis]
    if nearest:
        index = torch.floor(positions + 0.5).long().clamp(0, size - 1)
        return x.index_select(axis, index)
    lower = torch.floor(positions).long().clamp(0, size - 1)
    upper = (lower + 1).clamp(max=size - 1)
    weight_shape = [1] * x.dim()
    weight_shape[axis] = -1
    upper_weight = (positions - lower).to(torch.float32).reshape(weight_shape)
    return x.index_select(axis, lower) * (1 - upper_weight) + x.index_select(axis, upper) * upper_weight


def _resize_axes(x: torch.Tensor, sizes: Sequence[int], sampling_mode: str, nearest: bool = False) -> torch.Tensor:
    """x resized on its trailing len(sizes) axes."""
    first_axis = x.dim() - len(sizes)
    for offset, size in enumerate(sizes):
        axis = first_axis + offset
        positions = _sampling_positions(sampling_mode, x.shape[axis] - 1, size)
        x = _interpolate_axis(x, axis, positions, nearest)
    return x


def _scaled_size(size: int, scale: torch.Tensor) -> int:
    """floor(size * scale), in the scale's own precision as coremltools' type inference computes it."""
    return int(torch.floor(scale.reshape(()) * size))


def _nearest_indices(output_size: int, input_size: int, scale: float, half_pixel: bool) -> torch.Tensor:
    """Nearest source index of each output index, in float32 as torch computes it: floor(i * scale),
    or floor((i + 0.5) * scale) for half-pixel centres; `scale` is input size per output pixel."""
    index = torch.arange(output_size, dtype=torch.float32)
    if half_pixel:
        index = index + 0.5
    return torch.floor(index * torch.tensor(scale, dtype=torch.float32)).long().clamp(0, input_size - 1)


@kernel("upsample_nearest_neighbor")
def upsample_nearest_neighbor(args: OpArgs):
    """Output pixel i reads input pixel floor(i * in / out) on the last two axes, out being
    floor(in * scale): the scale recomputed from the sizes, as upsample_bilinear documents and
    coremltools' test of fractional scales expects (scale 1.12 on a width of 3 is the identity)."""
    x = args["x"]
    for axis, scale in ((-2, args["scale_factor_height"]), (-1, args["scale_factor_width"])):
        input_size = x.shape[axis]
        output_size = _scaled_size(input_size, scale)
        indices = _nearest_indices(output_size, input_size, input_size / output_size, half_pixel=False)
        x = x.index_select(axis_of(axis, x.dim()), indices)
    return x


@kernel("resize_nearest_neighbor")
def resize_nearest_neighbor(args: OpArgs):
    """Output pixel i reads input pixel floor((i + 0.5) * in / out) on the last two axes
    (TensorFlow's nearest resize with half-pixel centres, torch's nearest-exact)."""
    x = args["x"]
    for axis, output_size in ((-2, args.int("target_size_height")), (-1, args.int("target_size_width"))):
        input_size = x.shape[axis]
        indices = _nearest_indices(output_size, input_size, input_size / output_size, half_pixel=True)
        x = x.index_select(axis_of(axis, x.dim()), indices)
    return x


@kernel("upsample_bilinear")
def upsample_bilinear(args: OpArgs):
    """Bilinear upsampling to floor(size * scale) with the scale recomputed from the sizes:
    align_corners samples as STRICT_ALIGN_CORNERS; otherwise half_pixel_centers (iOS16; in iOS15 and
    by default it is not align_corners) samples as UNALIGN_CORNERS, and without it as DEFAULT."""
    x = _as_float(args["x"])
    align_corners = args.bool("align_corners", True)
    half_pixel_centers = args.bool("half_pixel_centers", not align_corners)
    if align_corners and half_pixel_centers:
        raise ValueError("upsample_bilinear: align_corners and half_pixel_centers cannot both be true")
    sampling_mode = "STRICT_ALIGN_CORNERS" if align_corners else "UNALIGN_CORNERS" if half_pixel_centers else "DEFAULT"
    sizes = [
        _scaled_size(x.shape[-2], args["scale_factor_height"]),
        _scaled_size(x.shape[-1], args["scale_factor_width"]),
    ]
    return _resize_axes(x, sizes, sampling_mode)


@kernel("resize_bilinear")
def resize_bilinear(args: OpArgs):
    x = _as_float(args["x"])
    sizes = [args.int("target_size_height", 1), args.int("target_size_width", 1)]
    return _resize_axes(x, sizes, args.str("sampling_mode", "DEFAULT"))


@kernel("resize")
def resize(args: OpArgs):
    """The last `resized_dims` axes resized to the last entries of `shape` (0 keeps an axis' size),
    linearly or nearest (nearest pixel to each sampling position)."""
    x = args["x"]
    target = args.ints("shape")
    resized_dims = args.int("resized_dims")
    input_sizes = list(x.shape[x.dim() - resized_dims :])
    wanted = target[len(target) - resized_dims :]
    sizes = [size if size != 0 else input_size for size, input_size in zip(wanted, input_sizes)]
    nearest = args.str("interpolation_mode", "LINEAR") == "NEAREST_NEIGHBOR"
    sampling_mode = args.str("sampling_mode", "DEFAULT")
    if nearest:
        return _resize_axes(x, sizes, sampling_mode, nearest=True)
    resized = _resize_axes(_as_float(x), sizes, sampling_mode)
    return resized if x.is_floating_point() else torch.round(resized)


@kernel("crop")
def crop(args: OpArgs):
    x = args["x"]
    top, bottom = args.ints("crop_height")
    left, right = args.ints("crop_width")
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


def _box_corners(box: torch.Tensor, box_coordinate_mode: str) -> Tuple[float, float, float, float]:
    """(h_start, w_start, h_end, w_end) of one box."""
    first, second, third, fourth = (float(v) for v in box)
    if box_coordinate_mode == "CORNERS_HEIGHT_FIRST":
        return first, second, third, fourth
    if box_coordinate_mode == "CORNERS_WIDTH_FIRST":
        return second, first, fourth, third
    if box_coordinate_mode == "CENTER_SIZE_HEIGHT_FIRST":
        return first - third / 2, second - fourth / 2, first + third / 2, second + fourth / 2
    if box_coordinate_mode == "CENTER_SIZE_WIDTH_FIRST":
        return second - fourth / 2, first - third / 2, second + fourth / 2, first + third / 2
    raise ValueError(f"unknown box_coordinate_mode {box_coordinate_mode!r}")


def _crop_and_resize(image: torch.Tensor, box: torch.Tensor, args: OpArgs) -> torch.Tensor:
    """image [..., H, W] cropped to one box and resized bilinearly; positions outside the image read
    pad_value (TensorFlow's crop_and_resize extrapolation)."""
    height, width = image.shape[-2:]
    h_start, w_start, h_end, w_end = _box_corners(box, args.str("box_coordinate_mode", "CORNERS_HEIGHT_FIRST"))
    scale_h = scale_w = args.float("spatial_scale", 1.0)
    if args.bool("normalized_coordinates", False):
        scale_h, scale_w = scale_h * (height - 1), scale_w * (width - 1)
    sampling_mode = args.str("sampling_mode", "DEFAULT")
    target_height, target_width = args.int("target_height", 1), args.int("target_width", 1)
    rows = h_start * scale_h + _sampling_positions(sampling_mode, (h_end - h_start) * scale_h, target_height)
    columns = w_start * scale_w + _sampling_positions(sampling_mode, (w_end - w_start) * scale_w, target_width)
    inside = ((rows >= 0) & (rows <= height - 1))[:, None] & ((columns >= 0) & (columns <= width - 1))[None, :]
    resized = _interpolate_axis(image, image.dim() - 2, rows.clamp(0, height - 1))
    resized = _interpolate_axis(resized, image.dim() - 1, columns.clamp(0, width - 1))
    return torch.where(inside, resized, torch.tensor(args.float("pad_value", 0.0)))


@kernel("crop_resize")
def crop_resize(args: OpArgs):
    """iOS15/16: `roi` [N, 1, 4 or 5, 1, 1]; four coordinates crop every image ([N, B, C, h, w]), five
    start with the image index ([N, 1, C, h, w]). iOS17: `boxes` [N, 4] on images `box_indices`
    ([N, C, h, w])."""
    x = _as_float(args["x"])
    if "roi" in args:
        roi = _as_float(args["roi"]).reshape(args["roi"].shape[0], -1)
        if roi.shape[1] == 4:
            return torch.stack([_crop_and_resize(x, box, args) for box in roi])
        return torch.stack([_crop_and_resize(x[int(box[0]) : int(box[0]) + 1], box[1:], args) for box in roi])
    boxes = _as_float(args["boxes"])
    indices = args.ints("box_indices", range(boxes.shape[0]))
    return torch.stack([_crop_and_resize(x[index], box, args) for index, box in zip(indices, boxes)])


def _padded_index(index: torch.Tensor, size: int, padding_mode: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(index into the image, mask of indices inside it or None) for an index into the padded image."""
    if padding_mode == "constant":
        return index.clamp(0, size - 1), (index >= 0) & (index < size)
    if padding_mode == "border":
        return index.clamp(0, size - 1), None
    if padding_mode == "reflection":  # |1, 2, 3| -> |2, 3, 2, 1, 2, 3, 2, 1, 2|
        if size == 1:
            return torch.zeros_like(index), None
        period = 2 * (size - 1)
        folded = torch.remainder(index, period)
        return torch.where(folded >= size, period - folded, folded), None
    if padding_mode == "symmetric":  # |1, 2, 3| -> |3, 2, 1, 1, 2, 3, 3, 2, 1|
        period = 2 * size
        folded = torch.remainder(index, period)
        return torch.where(folded >= size, period - 1 - folded, folded), None
    raise ValueError(f"unknown padding_mode {padding_mode!r}")


def _sample_image(
    image: torch.Tensor,
    columns: torch.Tensor,
    rows: torch.Tensor,
    sampling_mode: str,
    padding_mode: str,
    padding_value: float,
) -> torch.Tensor:
    """image [B, C, H, W] sampled at pixel coordinates (columns, rows), each [B, H', W'], from the
    image padded by padding_mode: bilinearly from the four neighbouring pixels or from the nearest."""
    batch, _, height, width = image.shape
    if sampling_mode == "nearest":
        taps = [(torch.floor(columns + 0.5), torch.floor(rows + 0.5), None)]
    elif sampling_mode == "bilinear":
        left, top = torch.floor(columns), torch.floor(rows)
        right_weight, bottom_weight = columns - left, rows - top
        taps = [
            (left, top, (1 - right_weight) * (1 - bottom_weight)),
            (left + 1, top, right_weight * (1 - bottom_weight)),
            (left, top + 1, (1 - right_weight) * bottom_weight),
            (left + 1, top + 1, right_weight * bottom_weight),
        ]
    else:
        raise ValueError(f"unknown sampling_mode {sampling_mode!r}")
    batch_index = torch.arange(batch).reshape(batch, 1, 1)
    result = torch.zeros(batch, image.shape[1], columns.shape[1], columns.shape[2])
    for column, row, weight in taps:
        column_index, column_inside = _padded_index(column.long(), width, padding_mode)
        row_index, row_inside = _padded_index(row.long(), height, padding_mode)
        values = image[batch_index, :, row_index, column_index].permute(0, 3, 1, 2)  # [B, C, H', W']
        if padding_mode == "constant":
            values = torch.where((column_inside & row_inside).unsqueeze(1), values, torch.tensor(padding_value))
        result = result + (values if weight is None else weight.unsqueeze(1).to(torch.float32) * values)
    return result


def _pixel_coordinates(normalized: torch.Tensor, size: int, coordinates_mode: str, align_corners: bool) -> torch.Tensor:
    """Coordinates in a resample/affine coordinates_mode as pixel coordinates (pixel centres at
    0 .. size - 1). With align_corners the normalized extremes are the corner pixels' centres, without
    it their outer edges."""
    if coordinates_mode == "unnormalized":
        return normalized
    if coordinates_mode == "normalized_minus_one_to_one":
        unit = (normalized + 1) / 2
    elif coordinates_mode == "normalized_zero_to_one":
        unit = normalized
    else:
        raise ValueError(f"unknown coordinates_mode {coordinates_mode!r}")
    return unit * (size - 1) if align_corners else unit * size - 0.5


@kernel("resample")
def resample(args: OpArgs):
    """Output [b, c, h, w] samples x[b, c] at coordinates[b, h, w] = (x, y)."""
    x = _as_float(args["x"])
    coordinates = args["coordinates"].to(torch.float64)
    coordinates_mode, align_corners = args.str("coordinates_mode"), args.bool("align_corners")
    columns = _pixel_coordinates(coordinates[..., 0], x.shape[-1], coordinates_mode, align_corners)
    rows = _pixel_coordinates(coordinates[..., 1], x.shape[-2], coordinates_mode, align_corners)
    sampling_mode, padding_mode = args.str("sampling_mode").lower(), args.str("padding_mode").lower()
    return _sample_image(x, columns, rows, sampling_mode, padding_mode, args.float("padding_value"))


@kernel("affine")
def affine(args: OpArgs):
    """Output pixel (x, y), in normalized coordinates, samples the input at
    (a0 x + a1 y + a2, b0 x + b1 y + b2) (torch's affine_grid followed by grid_sample)."""
    x = _as_float(args["x"])
    batch = x.shape[0]
    matrix = args["transform_matrix"].to(torch.float64).reshape(-1, 2, 3).expand(batch, 2, 3)
    output_height, output_width = args.int("output_height"), args.int("output_width")
    coordinates_mode, align_corners = args.str("coordinates_mode"), args.bool("align_corners")

    def output_grid(size: int) -> torch.Tensor:
        """Output pixels in the coordinates_mode (a single pixel sits in the middle, as in torch)."""
        pixels = torch.arange(size, dtype=torch.float64)
        if coordinates_mode == "unnormalized":
            return pixels
        unit = pixels / (size - 1) if align_corners and size > 1 else (pixels + 0.5) / size
        return unit * 2 - 1 if coordinates_mode == "normalized_minus_one_to_one" else unit

    grid_y, grid_x = torch.meshgrid(output_grid(output_height), output_grid(output_width), indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)  # [H', W', 3]
    source = torch.einsum("bij,hwj->bhwi", matrix, points)  # [B, H', W', 2] as (x, y)
    columns = _pixel_coordinates(source[..., 0], x.shape[-1], coordinates_mode, align_corners)
    rows = _pixel_coordinates(source[..., 1], x.shape[-2], coordinates_mode, align_corners)
    sampling_mode, padding_mode = args.str("sampling_mode").lower(), args.str("padding_mode").lower()
    return _sample_image(x, columns, rows, sampling_mode, padding_mode, args.float("padding_value"))


# -- attention (iOS18 transformers.py) ------------------------------------------------------------


@kernel("scaled_dot_product_attention")
def scaled_dot_product_attention(args: OpArgs):
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask keeps where true (-inf elsewhere), a float
    mask is added."""
    query, key, value = _as_float(args["query"]), _as_float(args["key"]), _as_float(args["value"])
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    mask = args.get("attn_mask")
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + _as_float(mask)
    return torch.matmul(torch.softmax(scores, dim=-1), value)
