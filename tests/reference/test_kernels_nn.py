"""Tests of the neural-network kernels (milcompress/reference/kernels/nn.py).

Ops with coremltools value inference (linear, matmul, einsum, l2_norm, layer_norm,
scaled_dot_product_attention) are compared with it over random cases. The others are compared with
torch.nn.functional written from the op's documented semantics (padding computed with Core ML's
SamePadding formula, torch's grid_sample/affine_grid as coremltools' torch frontend maps them), and
with small hand-computed examples, many of them the expected values of coremltools' own op tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from milcompress._coremltools import IOS15, IOS16, IOS17, IOS18, mb
from tests.reference.helpers import infer_op, run_op

FEW = settings(max_examples=settings.default.max_examples // 3)  # a third of the profile's: 20 under "ci"
SEEDS = st.integers(0, 2**32 - 1)


def random(seed: int, *shape, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def assert_close(actual, expected, tolerance: float = 1e-5) -> None:
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


def run_one(build, inputs, opset=IOS15) -> np.ndarray:
    return run_op(build, inputs, opset=opset)[0]


def torch_pad(x: torch.Tensor, pads, value: float = 0.0) -> torch.Tensor:
    """x padded by (before, after) on each trailing spatial axis, in axis order."""
    return F.pad(x, [amount for pair in reversed(pads) for amount in pair], value=value)


def same_padding(input_size: int, kernel_size: int, stride: int, lower: bool):
    """Core ML's SamePadding (NeuralNetwork.proto): total = max(0, (out - 1) * stride + kernel - in)
    with out = ceil(in / stride); BOTTOM_RIGHT_HEAVY puts floor(total / 2) before, TOP_LEFT_HEAVY
    puts floor(total / 2) after."""
    output_size = -(-input_size // stride)
    total = max(0, (output_size - 1) * stride + kernel_size - input_size)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# -- conv -----------------------------------------------------------------------------------------


@st.composite
def convolutions(draw):
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    sizes = [(k - 1) * d + 1 + draw(st.integers(0, 3)) for k, d in zip(kernel, dilations)]
    return dict(
        rank=rank,
        groups=groups,
        in_channels=groups * draw(st.integers(1, 2)),
        out_channels=groups * draw(st.integers(1, 2)),
        batch=draw(st.integers(1, 2)),
        kernel=kernel,
        dilations=dilations,
        strides=strides,
        sizes=sizes,
        pad_type=draw(st.sampled_from(["valid", "custom", "same", "same_lower"])),
        pad=[draw(st.integers(0, 2)) for _ in range(2 * rank)],
        has_bias=draw(st.booleans()),
        fp16_weights=draw(st.booleans()),
        seed=draw(SEEDS),
    )


@FEW
@given(convolutions())
def test_conv_matches_torch_on_padding_from_the_same_padding_formula(case):
    rank, seed = case["rank"], case["seed"]
    x = random(seed, case["batch"], case["in_channels"], *case["sizes"])
    weight = random(seed + 1, case["out_channels"], case["in_channels"] // case["groups"], *case["kernel"])
    bias = random(seed + 2, case["out_channels"]) if case["has_bias"] else None
    opset = IOS17 if case["pad_type"] == "same_lower" or case["fp16_weights"] else IOS15
    if case["fp16_weights"]:  # iOS17 lets weight and bias be fp16 under an fp32 input
        weight, bias = weight.astype(np.float16), None if bias is None else bias.astype(np.float16)

    def build(x):
        extra = {"bias": bias} if bias is not None else {}
        if case["pad_type"] == "custom":
            extra["pad"] = case["pad"]
        return mb.conv(
            x=x, weight=weight, strides=case["strides"], dilations=case["dilations"], groups=case["groups"],
            pad_type=case["pad_type"], **extra,
        )

    if case["pad_type"] == "custom":
        pads = [(case["pad"][2 * i], case["pad"][2 * i + 1]) for i in range(rank)]
    elif case["pad_type"] == "valid":
        pads = [(0, 0)] * rank
    else:
        pads = [
            same_padding(size, (k - 1) * d + 1, s, lower=case["pad_type"] == "same_lower")
            for size, k, d, s in zip(case["sizes"], case["kernel"], case["dilations"], case["strides"])
        ]
    expected = TORCH_CONV[rank](
        torch_pad(torch.from_numpy(x), pads),
        torch.from_numpy(weight.astype(np.float32)),
        None if bias is None else torch.from_numpy(bias.astype(np.float32)),
        stride=case["strides"], dilation=case["dilations"], groups=case["groups"],
    )
    assert_close(run_one(build, {"x": x}, opset), expected, 1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_same_at_stride_one_is_torch_same_and_same_lower_its_mirror_image(rank):
    # torch's padding="same" puts the odd extra row/column last, as Core ML's "same" does; "same_lower"
    # is that convolution on the input and kernel flipped in every spatial axis, flipped back.
    x = random(1, 1, 2, *([5, 4, 3][:rank]))
    weight = random(2, 3, 2, *([2, 4, 2][:rank]))
    dilations = [1, 2, 1][:rank]
    spatial = tuple(range(2, 2 + rank))
    same = run_one(lambda x: mb.conv(x=x, weight=weight, dilations=dilations, pad_type="same"), {"x": x})
    same_lower = run_one(lambda x: mb.conv(x=x, weight=weight, dilations=dilations, pad_type="same_lower"), {"x": x}, IOS17)
    conv = TORCH_CONV[rank]
    assert_close(same, conv(torch.from_numpy(x), torch.from_numpy(weight), padding="same", dilation=dilations), 1e-4)
    flipped = conv(torch.from_numpy(x).flip(spatial), torch.from_numpy(weight).flip(spatial), padding="same", dilation=dilations)
    assert_close(same_lower, flipped.flip(spatial), 1e-4)


@pytest.mark.parametrize(
    "x, weight, stride, pad_type, expected",
    [
        # Kernel 2 needs one padded element: "same" adds it after, "same_lower" before.
        ([1, 2, 3, 4], [1, 10], 1, "same", [21, 32, 43, 4]),
        ([1, 2, 3, 4], [1, 10], 1, "same_lower", [10, 21, 32, 43]),
        ([1, 2, 3, 4], [1, 10], 1, "valid", [21, 32, 43]),
        # Stride 2: ceil(5 / 2) = 3 outputs need (3 - 1) * 2 + 2 - 5 = 1 padded element.
        ([1, 2, 3, 4, 5], [1, 10], 2, "same", [21, 43, 5]),
        ([1, 2, 3, 4, 5], [1, 10], 2, "same_lower", [10, 32, 54]),
        ([1, 2, 3, 4], [1, 10, 100], 2, "same", [321, 43]),
        ([1, 2, 3, 4], [1, 10, 100], 2, "same_lower", [210, 432]),
    ],
)
def test_conv_1d_hand_computed_padding(x, weight, stride, pad_type, expected):
    x = np.array(x, dtype=np.float32).reshape(1, 1, -1)
    weight = np.array(weight, dtype=np.float32).reshape(1, 1, -1)
    result = run_one(lambda x: mb.conv(x=x, weight=weight, strides=[stride], pad_type=pad_type), {"x": x}, IOS17)
    assert_close(result, np.array(expected, dtype=np.float32).reshape(1, 1, -1))


def test_conv_with_runtime_weight():
    x, weight = random(3, 2, 4, 5, 5), random(4, 6, 2, 3, 3)
    result = run_one(lambda x, w: mb.conv(x=x, weight=w, groups=2, pad_type="same"), {"x": x, "w": weight})
    assert_close(result, F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), groups=2, padding=1), 1e-4)


def test_conv_quantized_dequantizes_linearly_per_output_channel():
    x = random(5, 1, 2, 4, 4)
    codes = np.random.default_rng(6).integers(0, 256, size=(3, 2, 2, 2)).astype(np.uint8)
    scale = np.array([0.01, 0.02, -0.03], dtype=np.float32)
    offset = np.array([-1.0, 0.5, 0.0], dtype=np.float32)
    result = run_one(
        lambda x: mb.conv_quantized(
            x=x, weight=codes, quantization_type="linear", quant_scale=scale, quant_bias=offset, pad_type="valid"
        ),
        {"x": x},
    )
    weight = codes.astype(np.float32) * scale.reshape(3, 1, 1, 1) + offset.reshape(3, 1, 1, 1)
    assert_close(result, F.conv2d(torch.from_numpy(x), torch.from_numpy(weight)), 1e-4)


# -- conv_transpose -------------------------------------------------------------------------------


def conv_transpose_as_conv_gradient(x, weight, bias, strides, dilations, groups, output_sizes, befores):
    """conv_transpose is the adjoint of conv: the gradient, with respect to a y of the output size, of
    <conv(y padded by `befores` and whatever makes the result x-sized), x>."""
    x = torch.from_numpy(x)
    rank = x.dim() - 2
    kernel = weight.shape[2:]
    y = torch.zeros([x.shape[0], weight.shape[1] * groups] + list(output_sizes), requires_grad=True)
    pads = []
    for axis in range(rank):
        full = (x.shape[2 + axis] - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1
        pads.append((befores[axis], full - befores[axis] - output_sizes[axis]))
    convolved = TORCH_CONV[rank](torch_pad(y, pads), torch.from_numpy(weight), stride=strides, dilation=dilations, groups=groups)
    (convolved * x).sum().backward()
    gradient = y.grad
    return gradient if bias is None else gradient + torch.from_numpy(bias).reshape([1, -1] + [1] * rank)


@FEW
@given(convolutions(), st.booleans(), st.data())
def test_conv_transpose_is_the_adjoint_of_conv(case, give_output_shape, data):
    rank, seed, groups = case["rank"], case["seed"], case["groups"]
    pad_type = "same" if case["pad_type"] == "same_lower" else case["pad_type"]  # same_lower has no output shape
    sizes = [max(1, size - 2) for size in case["sizes"]]
    x = random(seed, case["batch"], case["in_channels"], *sizes)
    weight = random(seed + 1, case["in_channels"], case["out_channels"] // groups, *case["kernel"])
    bias = random(seed + 2, case["out_channels"]) if case["has_bias"] else None
    strides, dilations, pad = case["strides"], case["dilations"], case["pad"]
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(sizes, strides, case["kernel"], dilations)]
    if pad_type == "custom":
        pad = [min(p, f // 2) for p, f in zip(pad, [f for f in full for _ in (0, 1)])]
        befores = [pad[2 * i] for i in range(rank)]
        output_sizes = [f - pad[2 * i] - pad[2 * i + 1] for i, f in enumerate(full)]
    elif pad_type == "valid":
        befores, output_sizes = [0] * rank, list(full)
    else:
        output_sizes = [d * s for d, s in zip(sizes, strides)]
    if give_output_shape:  # sizes the op cannot infer: cropped (all types) or grown (valid, custom)
        shrink = [data.draw(st.integers(0, s - 1)) for s in strides]
        grow = [data.draw(st.integers(0, 2)) if pad_type != "same" else 0 for _ in range(rank)]
        output_sizes = [max(1, size - a + b) for size, a, b in zip(output_sizes, shrink, grow)]
    if pad_type == "same":  # TensorFlow's conv2d_transpose: the "same" padding of the conv back
        befores = [
            same_padding(size, (k - 1) * dl + 1, s, lower=False)[0]
            for size, k, dl, s in zip(output_sizes, case["kernel"], dilations, strides)
        ]

    def build(x):
        extra = {"bias": bias} if bias is not None else {}
        if pad_type == "custom":
            extra["pad"] = pad
        if give_output_shape:
            extra["output_shape"] = [case["batch"], case["out_channels"]] + output_sizes
        return mb.conv_transpose(
            x=x, weight=weight, strides=strides, dilations=dilations, groups=groups, pad_type=pad_type, **extra
        )

    expected = conv_transpose_as_conv_gradient(x, weight, bias, strides, dilations, groups, output_sizes, befores)
    opset = IOS17 if give_output_shape else IOS15  # both opsets' conv_transpose, whichever the sizes
    assert_close(run_one(build, {"x": x}, opset), expected, 1e-4)


def test_conv_transpose_matches_torch_with_symmetric_padding():
    x, weight, bias = random(7, 2, 4, 3, 4), random(8, 4, 3, 3, 2), random(9, 6)
    result = run_one(
        lambda x: mb.conv_transpose(x=x, weight=weight, bias=bias, strides=[2, 1], groups=2, pad_type="custom", pad=[1, 1, 0, 0]),
        {"x": x},
    )
    expected = F.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride=[2, 1], padding=[1, 0], groups=2
    )
    assert_close(result, expected, 1e-4)


@pytest.mark.parametrize(
    "weight, pad_type, extra, expected",
    [
        # x = [1, 2], stride 2: the kernel copies [1, 10, 100] land at 0 and 2 and overlap.
        ([1, 10], "valid", {}, [1, 10, 2, 20]),
        ([1, 10], "same", {}, [1, 10, 2, 20]),
        ([1, 10, 100], "valid", {}, [1, 10, 102, 20, 200]),
        ([1, 10, 100], "same", {}, [1, 10, 102, 20]),  # one too many: cut after
        ([1, 10, 100], "custom", {"pad": [1, 0]}, [10, 102, 20, 200]),
        ([1, 10, 100], "valid", {"output_shape": [1, 1, 6]}, [1, 10, 102, 20, 200, 0]),
        ([1, 10, 100, 1000], "same", {}, [10, 102, 1020, 200]),  # two too many: one cut each side
    ],
)
def test_conv_transpose_1d_hand_computed(weight, pad_type, extra, expected):
    x = np.array([1, 2], dtype=np.float32).reshape(1, 1, 2)
    weight = np.array(weight, dtype=np.float32).reshape(1, 1, -1)
    result = run_one(lambda x: mb.conv_transpose(x=x, weight=weight, strides=[2], pad_type=pad_type, **extra), {"x": x})
    assert_close(result, np.array(expected, dtype=np.float32).reshape(1, 1, -1))


# -- linear, matmul, einsum ---------------------------------------------------------------------


@FEW
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.booleans(), SEEDS)
def test_linear_matches_value_inference(rank, in_features, out_features, has_bias, seed):
    x = random(seed, *([2, 3][: rank - 1] + [in_features]))
    weight = random(seed + 1, out_features, in_features)
    bias = random(seed + 2, out_features)

    def build(x):
        return mb.linear(x=x, weight=weight, bias=bias) if has_bias else mb.linear(x=x, weight=weight)

    assert_close(run_one(build, {"x": x}), infer_op(build, {"x": x})[0])


def test_linear_with_fp16_weights_and_with_integers():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    weight = np.array([[0.5, -1.0, 2.0]], dtype=np.float16)
    assert_close(run_one(lambda x: mb.linear(x=x, weight=weight), {"x": x}, IOS17), [[3.0], [7.5]])
    integers = np.arange(6, dtype=np.int32).reshape(2, 3)
    integer_weight = np.array([[1, -2, 3]], dtype=np.int32)
    result = run_one(lambda x: mb.linear(x=x, weight=integer_weight), {"x": integers})
    assert result.dtype.kind == "i" and result.tolist() == [[4], [10]]


@st.composite
def matmul_cases(draw):
    x_rank = draw(st.integers(1, 4))
    # coremltools' type inference drops the wrong axis for a 1-D x and a batched y: keep y 2-D then
    y_rank = 2 if x_rank == 1 else draw(st.integers(2, 4))
    batch = [draw(st.integers(1, 3)) for _ in range(2)]
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    x_batch = [draw(st.sampled_from([b, 1])) for b in batch][4 - x_rank :] if x_rank > 2 else []
    y_batch = [draw(st.sampled_from([b, 1])) for b in batch][4 - y_rank :] if y_rank > 2 else []
    transpose_x = x_rank > 1 and draw(st.booleans())
    transpose_y = draw(st.booleans())
    x_shape = [k] if x_rank == 1 else x_batch + ([k, m] if transpose_x else [m, k])
    y_shape = y_batch + ([n, k] if transpose_y else [k, n])
    return x_shape, y_shape, transpose_x, transpose_y, draw(st.sampled_from([np.float32, np.int32])), draw(SEEDS)


@FEW
@given(matmul_cases())
def test_matmul_matches_value_inference(case):
    x_shape, y_shape, transpose_x, transpose_y, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-5, 6, size=x_shape).astype(dtype) if dtype == np.int32 else random(seed, *x_shape)
    y = rng.integers(-5, 6, size=y_shape).astype(dtype) if dtype == np.int32 else random(seed + 1, *y_shape)

    def build(x, y):
        return mb.matmul(x=x, y=y, transpose_x=transpose_x, transpose_y=transpose_y)

    result = run_one(build, {"x": x, "y": y})
    expected = infer_op(build, {"x": x, "y": y})[0]
    assert result.dtype.kind == expected.dtype.kind
    assert_close(result, expected)


def test_matmul_iOS17_mixes_a_const_fp16_operand_with_fp32():
    x = random(10, 2, 3, 4)
    y = random(11, 4, 5).astype(np.float16)
    result = run_one(lambda x: mb.matmul(x=x, y=y), {"x": x}, IOS17)
    assert_close(result, np.matmul(x, y.astype(np.float32)), 1e-5)


@FEW
@given(st.booleans(), st.data(), SEEDS)
def test_einsum_matches_value_inference(rank_four, data, seed):
    batch, channels, height, inner, out = (data.draw(st.integers(1, 3)) for _ in range(5))
    x_height, y_height = data.draw(st.sampled_from([(height, height), (1, height), (height, 1)]))
    if rank_four:
        x_batch, y_batch = data.draw(st.sampled_from([(batch, batch), (1, batch), (batch, 1)]))
        x_shape, y_shape, equation = [x_batch, channels, x_height, inner], [y_batch, inner, y_height, out], "nchw,nwhu->nchu"
    else:
        x_shape, y_shape, equation = [channels, x_height, inner], [inner, y_height, out], "abc,cbd->abd"
    x, y = random(seed, *x_shape), random(seed + 1, *y_shape)

    def build(x, y):
        return mb.einsum(values=(x, y), equation=equation)

    assert_close(run_one(build, {"x": x, "y": y}), infer_op(build, {"x": x, "y": y})[0])


# -- pooling --------------------------------------------------------------------------------------


TORCH_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TORCH_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@st.composite
def poolings(draw):
    rank = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    return dict(
        rank=rank,
        kernel=kernel,
        strides=strides,
        sizes=[k + draw(st.integers(0, 4)) for k in kernel],
        symmetric_pad=[draw(st.integers(0, k // 2)) for k in kernel],
        ceil_mode=rank < 3 and draw(st.booleans()),
        exclude_padding=draw(st.booleans()),
        seed=draw(SEEDS),
    )


@FEW
@given(poolings(), st.sampled_from(["max_pool", "avg_pool"]))
def test_pooling_with_custom_padding_and_ceil_mode_matches_torch(case, op_type):
    rank, kernel, strides, pad_each = case["rank"], case["kernel"], case["strides"], case["symmetric_pad"]
    x = random(case["seed"], 2, 3, *case["sizes"], low=-5, high=-1)  # all negative: padding must never win a max
    pad = [p for p in pad_each for _ in (0, 1)]
    ceil_mode = case["ceil_mode"]
    if op_type == "max_pool":
        expected = TORCH_MAX_POOL[rank](torch.from_numpy(x), kernel, strides, padding=pad_each, ceil_mode=ceil_mode)

        def build(x):
            return mb.max_pool(x=x, kernel_sizes=kernel, strides=strides, pad_type="custom", pad=pad, ceil_mode=ceil_mode)

    else:
        exclude = case["exclude_padding"]
        expected = TORCH_AVG_POOL[rank](
            torch.from_numpy(x), kernel, strides, padding=pad_each, ceil_mode=ceil_mode, count_include_pad=not exclude
        )

        def build(x):
            return mb.avg_pool(
                x=x, kernel_sizes=kernel, strides=strides, pad_type="custom", pad=pad, ceil_mode=ceil_mode,
                exclude_padding_from_average=exclude,
            )

    # torch drops a ceil-mode window starting past the input even on an axis without padding; Core ML
    # only on a padded axis (such a window exists only when the stride exceeds the kernel)
    assume(not ceil_mode or all(p > 0 or k >= s for p, k, s in zip(pad_each, kernel, strides)))
    assert_close(run_one(build, {"x": x}), expected)


@FEW
@given(poolings(), st.sampled_from(["same", "same_lower", "valid"]), st.sampled_from(["max_pool", "avg_pool", "l2_pool"]))
def test_pooling_with_same_padding_matches_torch_on_explicitly_padded_input(case, pad_type, op_type):
    rank, kernel, strides = case["rank"], case["kernel"], case["strides"]
    assume(op_type != "l2_pool" or rank < 3)
    x = torch.from_numpy(random(case["seed"], 1, 2, *case["sizes"], low=-5, high=-1))
    if pad_type == "valid":
        pads = [(0, 0)] * rank
    else:
        pads = [same_padding(size, k, s, pad_type == "same_lower") for size, k, s in zip(case["sizes"], kernel, strides)]
    exclude = case["exclude_padding"]
    if op_type == "max_pool":
        expected = TORCH_MAX_POOL[rank](torch_pad(x, pads, float("-inf")), kernel, strides)
    elif op_type == "l2_pool":
        lp_pool = F.lp_pool1d if rank == 1 else F.lp_pool2d
        expected = lp_pool(torch_pad(x, pads), 2, kernel if rank > 1 else kernel[0], strides if rank > 1 else strides[0])
    else:
        sums = TORCH_AVG_POOL[rank](torch_pad(x, pads), kernel, strides) * math.prod(kernel)
        counted = torch_pad(torch.ones_like(x), pads, 0.0 if exclude else 1.0)
        expected = sums / (TORCH_AVG_POOL[rank](counted, kernel, strides) * math.prod(kernel))

    def build(x):
        extra = {"exclude_padding_from_average": exclude} if op_type == "avg_pool" else {}
        return getattr(mb, op_type)(x=x, kernel_sizes=kernel, strides=strides, pad_type=pad_type, **extra)

    assert_close(run_one(build, {"x": x.numpy()}, IOS17), expected, 1e-5)


@pytest.mark.parametrize(
    "op_type, kernel, stride, pad_type, pad, ceil_mode, exclude, x, expected",
    [
        # "same" with kernel 2 pads one element after, "same_lower" before; max never picks padding.
        ("max_pool", 2, 1, "same", None, False, False, [1, 2, 3, 4], [2, 3, 4, 4]),
        ("max_pool", 2, 1, "same_lower", None, False, False, [1, 2, 3, 4], [1, 2, 3, 4]),
        ("max_pool", 2, 1, "same", None, False, False, [-1, -2, -3, -4], [-1, -2, -3, -4]),
        ("avg_pool", 2, 1, "same", None, False, False, [1, 2, 3, 4], [1.5, 2.5, 3.5, 2]),
        ("avg_pool", 2, 1, "same", None, False, True, [1, 2, 3, 4], [1.5, 2.5, 3.5, 4]),
        ("avg_pool", 2, 1, "same_lower", None, False, False, [1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5]),
        ("avg_pool", 2, 1, "same_lower", None, False, True, [1, 2, 3, 4], [1, 1.5, 2.5, 3.5]),
        ("avg_pool", 3, 1, "same", None, False, False, [1, 2, 3, 4], [1, 2, 3, 7 / 3]),
        ("avg_pool", 3, 1, "same", None, False, True, [1, 2, 3, 4], [1.5, 2, 3, 3.5]),
        # ceil mode: a last, partial window; it counts its elements inside the padded input only.
        ("max_pool", 3, 2, "valid", None, True, False, [1, 2, 3, 4, 5, 6], [3, 5, 6]),
        ("avg_pool", 3, 2, "valid", None, True, False, [1, 2, 3, 4, 5, 6], [2, 4, 5.5]),
        ("avg_pool", 3, 2, "custom", [1, 1], True, False, [1, 2, 3, 4, 5, 6], [1, 3, 5, 3]),
        ("avg_pool", 3, 2, "custom", [1, 1], True, True, [1, 2, 3, 4, 5, 6], [1.5, 3, 5, 6]),
        ("avg_pool", 3, 2, "custom", [1, 1], False, False, [1, 2, 3, 4, 5, 6], [1, 3, 5]),
        # ...and is dropped when it would start past the input and its leading padding.
        ("max_pool", 2, 2, "custom", [1, 1], True, False, [1, 2, 3, 4, 5], [1, 3, 5]),
        ("l2_pool", 2, 2, "valid", None, False, False, [3, 4, 6, 8], [5, 10]),
    ],
)
def test_pooling_1d_hand_computed(op_type, kernel, stride, pad_type, pad, ceil_mode, exclude, x, expected):
    x = np.array(x, dtype=np.float32).reshape(1, 1, -1)
    extra = {"pad": pad} if pad is not None else {}
    if op_type == "avg_pool":
        extra["exclude_padding_from_average"] = exclude
    if ceil_mode:
        extra["ceil_mode"] = True

    def build(x):
        return getattr(mb, op_type)(x=x, kernel_sizes=[kernel], strides=[stride], pad_type=pad_type, **extra)

    assert_close(run_one(build, {"x": x}, IOS17), np.array(expected, dtype=np.float32).reshape(1, 1, -1))


def test_ceil_mode_keeps_a_window_starting_past_an_unpadded_input_as_coremltools_sizes_it():
    # Core ML drops such a window only on a padded axis; torch would give one output here.
    x = np.array([1, 2], dtype=np.float32).reshape(1, 1, 2)
    result = run_one(lambda x: mb.avg_pool(x=x, kernel_sizes=[1], strides=[2], pad_type="valid", ceil_mode=True), {"x": x})
    assert result.shape == (1, 1, 2) and result[0, 0, 0] == 1


# -- normalization --------------------------------------------------------------------------------


@FEW
@given(st.integers(3, 5), st.booleans(), st.sampled_from([IOS15, IOS17]), SEEDS)
def test_batch_norm_matches_torch(rank, affine, opset, seed):
    x = random(seed, *[2, 3, 4, 3, 2][:rank], low=-3, high=3)
    mean, variance = random(seed + 1, 3), random(seed + 2, 3, low=0.1, high=2)
    gamma, beta = random(seed + 3, 3), random(seed + 4, 3)
    parameter_dtype = np.float16 if opset == IOS17 else np.float32  # iOS17: parameters may be fp16
    mean, variance, gamma, beta = (v.astype(parameter_dtype) for v in (mean, variance, gamma, beta))
    extra = {"gamma": gamma, "beta": beta} if affine else {}
    epsilon = parameter_dtype(1e-3)
    result = run_one(lambda x: mb.batch_norm(x=x, mean=mean, variance=variance, epsilon=epsilon, **extra), {"x": x}, opset)
    as_tensor = lambda v: torch.from_numpy(v.astype(np.float32))  # noqa: E731
    expected = F.batch_norm(
        torch.from_numpy(x), as_tensor(mean), as_tensor(variance),
        as_tensor(gamma) if affine else None, as_tensor(beta) if affine else None,
        training=False, eps=float(epsilon),
    )
    assert_close(result, expected, 1e-4)


@FEW
@given(st.integers(3, 4), st.booleans(), SEEDS)
def test_instance_norm_matches_torch(rank, affine, seed):
    x = random(seed, *[2, 3, 5, 4][:rank], low=-3, high=3)
    gamma, beta = random(seed + 1, 3), random(seed + 2, 3)
    extra = {"gamma": gamma, "beta": beta} if affine else {}
    result = run_one(lambda x: mb.instance_norm(x=x, epsilon=1e-3, **extra), {"x": x})
    weight, bias = (torch.from_numpy(gamma), torch.from_numpy(beta)) if affine else (None, None)
    expected = F.instance_norm(torch.from_numpy(x), weight=weight, bias=bias, eps=1e-3)
    assert_close(result, expected, 1e-4)


@FEW
@given(st.integers(3, 5), st.sampled_from([1e-6, 0.5]), SEEDS)
def test_l2_norm_matches_value_inference(rank, epsilon, seed):
    x = random(seed, *[2, 3, 2, 3, 2][:rank])

    def build(x):
        return mb.l2_norm(x=x, epsilon=epsilon)

    assert_close(run_one(build, {"x": x}), infer_op(build, {"x": x})[0])


@FEW
@given(st.integers(1, 4), st.data(), st.booleans(), SEEDS)
def test_layer_norm_matches_value_inference(rank, data, affine, seed):
    shape = [2, 3, 4, 2][:rank]
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique_by=lambda a: a % rank))
    normalized_shape = [shape[i] for i in range(rank) if i in {a % rank for a in axes}]
    x = random(seed, *shape, low=-3, high=3)
    gamma, beta = random(seed + 1, *normalized_shape), random(seed + 2, *normalized_shape)

    def build(x):
        extra = {"gamma": gamma, "beta": beta} if affine else {}
        return mb.layer_norm(x=x, axes=axes, epsilon=1e-4, **extra)

    assert_close(run_one(build, {"x": x}), infer_op(build, {"x": x})[0], 1e-4)


def test_layer_norm_on_trailing_axes_matches_torch():
    x, gamma, beta = random(12, 2, 3, 4, low=-3, high=3), random(13, 3, 4), random(14, 3, 4)
    result = run_one(lambda x: mb.layer_norm(x=x, axes=[-2, -1], gamma=gamma, beta=beta), {"x": x}, IOS17)
    expected = F.layer_norm(torch.from_numpy(x), [3, 4], torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5)
    assert_close(result, expected, 1e-4)


@FEW
@given(st.integers(1, 5), st.floats(1e-4, 2.0), st.floats(0.1, 1.0), st.floats(0.5, 2.0), SEEDS)
def test_local_response_norm_on_rank_four_matches_torch(size, alpha, beta, k, seed):
    x = random(seed, 2, 5, 3, 2, low=-3, high=3)
    alpha, beta, k = np.float32(alpha), np.float32(beta), np.float32(k)
    result = run_one(lambda x: mb.local_response_norm(x=x, size=size, alpha=alpha, beta=beta, k=k), {"x": x})
    expected = F.local_response_norm(torch.from_numpy(x), size, alpha=float(alpha), beta=float(beta), k=float(k))
    assert_close(result, expected, 1e-4)


def test_local_response_norm_normalizes_across_axis_minus_three():
    # coremltools' test expects its rank-3 example [1, 3, 2] to be normalized across the size-1 axis
    # -3 (each value by itself), as Core ML's LRN layer does, not across axis 1.
    x = np.array([[[1.0, -7.0], [5.0, -6.0], [-3.0, -5.0]]], dtype=np.float32)
    size_two, size_three = run_op(
        lambda x: [mb.local_response_norm(x=x, size=2), mb.local_response_norm(x=x, size=3, alpha=0.0001, beta=0.75, k=1.0)],
        {"x": x},
    )
    assert_close(size_two, [[[0.99996257, -6.98716545], [4.99531746, -5.99191284], [-2.99898791, -4.99531746]]])
    assert_close(size_three, [[[0.99997497, -6.99143696], [4.99687672, -5.99460602], [-2.99932504, -4.99687672]]])
    rank_five = random(18, 2, 2, 4, 3, 2, low=-3, high=3)
    result = run_one(lambda x: mb.local_response_norm(x=x, size=3, alpha=np.float32(0.5)), {"x": rank_five})
    expected = F.local_response_norm(torch.from_numpy(rank_five).reshape(4, 4, 3, 2), 3, alpha=0.5).reshape(rank_five.shape)
    assert_close(result, expected, 1e-4)


# -- upsampling and resizing ----------------------------------------------------------------------

SCALES = st.sampled_from([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])


@FEW
@given(st.integers(2, 5), st.integers(2, 5), SCALES, SCALES, SEEDS)
def test_upsample_nearest_neighbor_matches_torch_nearest_at_the_output_size(height, width, scale_height, scale_width, seed):
    x = random(seed, 1, 2, height, width)
    integer_scales = scale_height.is_integer() and scale_width.is_integer()
    scales = (int(scale_height), int(scale_width)) if integer_scales else (np.float32(scale_height), np.float32(scale_width))
    result = run_one(
        lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=scales[0], scale_factor_width=scales[1]), {"x": x}
    )
    # torch's nearest with the scale recomputed from the sizes
    output_size = (math.floor(height * scale_height), math.floor(width * scale_width))
    assert_close(result, F.interpolate(torch.from_numpy(x), size=output_size, mode="nearest"))


def test_upsample_nearest_neighbor_hand_values_from_coremltools_tests():
    x = np.array([1.5, -2.5, 3.5], dtype=np.float32).reshape(1, 1, 1, 3)
    doubled, shrunk, stretched = run_op(
        lambda x: [
            mb.upsample_nearest_neighbor(x=x, scale_factor_height=1, scale_factor_width=2),
            mb.upsample_nearest_neighbor(x=x, scale_factor_height=3.17, scale_factor_width=0.67),
            mb.upsample_nearest_neighbor(x=x, scale_factor_height=2.0, scale_factor_width=1.12),
        ],
        {"x": x},
    )
    assert_close(doubled, np.array([1.5, 1.5, -2.5, -2.5, 3.5, 3.5]).reshape(1, 1, 1, 6))
    assert_close(shrunk, np.array([1.5, -2.5, 1.5, -2.5, 1.5, -2.5]).reshape(1, 1, 3, 2))
    assert_close(stretched, np.array([1.5, -2.5, 3.5, 1.5, -2.5, 3.5]).reshape(1, 1, 2, 3))


@FEW
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), SEEDS)
def test_resize_nearest_neighbor_matches_torch_nearest_exact(height, width, target_height, target_width, seed):
    x = random(seed, 2, 1, height, width)
    result = run_one(
        lambda x: mb.resize_nearest_neighbor(x=x, target_size_height=target_height, target_size_width=target_width), {"x": x}
    )
    assert_close(result, F.interpolate(torch.from_numpy(x), size=(target_height, target_width), mode="nearest-exact"))


def test_resize_nearest_neighbor_hand_values_from_coremltools_tests():
    x = np.array([0.37, 6.17], dtype=np.float32).reshape(1, 1, 2, 1)
    same, wider = run_op(
        lambda x: [
            mb.resize_nearest_neighbor(x=x, target_size_height=2, target_size_width=1),
            mb.resize_nearest_neighbor(x=x, target_size_height=2, target_size_width=3),
        ],
        {"x": x},
    )
    assert_close(same, x)
    assert_close(wider, np.array([0.37, 0.37, 0.37, 6.17, 6.17, 6.17]).reshape(1, 1, 2, 3))


@FEW
@given(st.integers(1, 5), st.integers(1, 5), SCALES, SCALES, st.booleans(), st.sampled_from([IOS15, IOS16]), SEEDS)
def test_upsample_bilinear_matches_torch(height, width, scale_height, scale_width, align_corners, opset, seed):
    x = random(seed, 1, 2, height, width)
    output_size = (int(height * scale_height), int(width * scale_width))
    assume(min(output_size) >= 1)
    result = run_one(
        lambda x: mb.upsample_bilinear(
            x=x, scale_factor_height=np.float32(scale_height), scale_factor_width=np.float32(scale_width),
            align_corners=align_corners,
        ),
        {"x": x},
        opset,
    )
    # The scale is recomputed from the sizes (torch's recompute_scale_factor=True); without
    # align_corners, half-pixel centres (iOS16's default for half_pixel_centers).
    expected = F.interpolate(torch.from_numpy(x), size=output_size, mode="bilinear", align_corners=align_corners)
    assert_close(result, expected)


@pytest.mark.parametrize(
    "align_corners, half_pixel_centers, expected",
    [
        (True, False, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]),
        (False, True, [1.0, 1.0, 4 / 3, 5 / 3, 2.0, 2.0]),
        (False, None, [1.0, 1.0, 4 / 3, 5 / 3, 2.0, 2.0]),
        (False, False, [1.0, 4 / 3, 5 / 3, 2.0, 2.0, 2.0]),
    ],
)
def test_upsample_bilinear_iOS16_half_pixel_centers_hand_values(align_corners, half_pixel_centers, expected):
    x = np.array([1, 2], dtype=np.float32).reshape(1, 1, 1, 2)
    extra = {} if half_pixel_centers is None else {"half_pixel_centers": half_pixel_centers}
    result = run_one(
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=3, align_corners=align_corners, **extra),
        {"x": x},
        IOS16,
    )
    assert_close(result, np.array(expected + expected, dtype=np.float32).reshape(1, 1, 2, 6))


def test_upsample_bilinear_iOS15_fractional_scale_recomputes_it_from_the_sizes():
    x = np.array([0, 1], dtype=np.float32).reshape(1, 1, 2)
    result = run_one(
        lambda x: mb.upsample_bilinear(x=x, scale_factor_height=1.0, scale_factor_width=2.6, align_corners=False), {"x": x}
    )
    assert_close(result, np.array([0, 0.1, 0.5, 0.9, 1], dtype=np.float32).reshape(1, 1, 5))


# The grid points resize_bilinear's documentation lists for an input [0, 1] (so output = grid point).
DOCUMENTED_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
    ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
    ("STRICT_ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
    ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
    # One output point: ALIGN_CORNERS takes the middle, STRICT_ALIGN_CORNERS and DEFAULT the start.
    ("ALIGN_CORNERS", 1): [0.5],
    ("STRICT_ALIGN_CORNERS", 1): [0.0],
    ("DEFAULT", 1): [0.0],
    ("OFFSET_CORNERS", 1): [0.5],
    ("UNALIGN_CORNERS", 1): [0.5],
}


SAMPLING_MODES = sorted({mode for mode, _ in DOCUMENTED_GRIDS})


@pytest.mark.parametrize("sampling_mode, size", sorted(DOCUMENTED_GRIDS))
def test_resize_bilinear_samples_the_documented_grid(sampling_mode, size):
    x = np.array([0, 1], dtype=np.float32).reshape(1, 1, 2)
    result = run_one(
        lambda x: mb.resize_bilinear(x=x, target_size_height=1, target_size_width=size, sampling_mode=sampling_mode), {"x": x}
    )
    assert_close(result, np.array(DOCUMENTED_GRIDS[sampling_mode, size], dtype=np.float32).reshape(1, 1, size))


@FEW
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), st.booleans(), SEEDS)
def test_resize_bilinear_aligned_and_unaligned_modes_match_torch(height, width, target_height, target_width, aligned, seed):
    x = random(seed, 2, 1, height, width)
    sampling_mode = "STRICT_ALIGN_CORNERS" if aligned else "UNALIGN_CORNERS"
    result = run_one(
        lambda x: mb.resize_bilinear(
            x=x, target_size_height=target_height, target_size_width=target_width, sampling_mode=sampling_mode
        ),
        {"x": x},
    )
    expected = F.interpolate(torch.from_numpy(x), size=(target_height, target_width), mode="bilinear", align_corners=aligned)
    assert_close(result, expected)


def test_resize_iOS17_hand_values_from_coremltools_tests():
    x = np.array([-6.174, 9.371], dtype=np.float32).reshape(1, 1, 1, 2, 1)
    nearest = run_one(
        lambda x: mb.resize(x=x, shape=[1, 1, 3, 2], resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR"),
        {"x": x},
        IOS17,
    )
    assert_close(nearest, np.array([-6.174, -6.174, 9.371, 9.371, 9.371, 9.371]).reshape(1, 1, 1, 3, 2))
    line = np.array([0, 1], dtype=np.float32).reshape(1, 1, 2)
    linear = run_one(lambda x: mb.resize(x=x, shape=[1, 1, 5], resized_dims=np.uint32(2)), {"x": line}, IOS17)
    assert_close(linear, np.array([0, 0.4, 0.8, 1, 1], dtype=np.float32).reshape(1, 1, 5))


@FEW
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 6), st.sampled_from(SAMPLING_MODES), SEEDS)
def test_resize_linear_is_resize_bilinear_and_a_zero_keeps_the_size(
    height, width, target_height, target_width, sampling_mode, seed
):
    x = random(seed, 2, 3, height, width)
    result = run_one(
        lambda x: mb.resize(x=x, shape=[target_height, target_width], resized_dims=np.uint32(2), sampling_mode=sampling_mode),
        {"x": x},
        IOS17,
    )
    kept_width = target_width or width
    expected = run_one(
        lambda x: mb.resize_bilinear(
            x=x, target_size_height=target_height, target_size_width=kept_width, sampling_mode=sampling_mode
        ),
        {"x": x},
    )
    assert_close(result, expected)


@FEW
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(1, 8), SEEDS)
def test_resize_nearest_with_unaligned_corners_is_torch_nearest_exact(height, width, target_height, target_width, seed):
    # Half-pixel positions rounded half up: TensorFlow's (and torch's nearest-exact) floor((i + 0.5) * in / out).
    x = random(seed, 1, 2, height, width)
    result = run_one(
        lambda x: mb.resize(
            x=x, shape=[target_height, target_width], resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR",
            sampling_mode="UNALIGN_CORNERS",
        ),
        {"x": x},
        IOS17,
    )
    assert_close(result, F.interpolate(torch.from_numpy(x), size=(target_height, target_width), mode="nearest-exact"))


def test_resize_with_three_resized_dims_and_a_runtime_shape_is_trilinear():
    x = random(15, 1, 2, 2, 3, 4)
    shape = np.array([3, 5, 2], dtype=np.int32)
    result = run_one(
        lambda x, shape: mb.resize(x=x, shape=shape, resized_dims=np.uint32(3), sampling_mode="STRICT_ALIGN_CORNERS"),
        {"x": x, "shape": shape},
        IOS17,
    )
    assert_close(result, F.interpolate(torch.from_numpy(x), size=(3, 5, 2), mode="trilinear", align_corners=True))


@FEW
@given(st.integers(1, 6), st.integers(1, 6), st.data(), SEEDS)
def test_crop_slices_the_last_two_axes(height, width, data, seed):
    top = data.draw(st.integers(0, height - 1))
    bottom = data.draw(st.integers(0, height - 1 - top))
    left = data.draw(st.integers(0, width - 1))
    right = data.draw(st.integers(0, width - 1 - left))
    x = random(seed, 2, 3, height, width)
    result = run_one(lambda x: mb.crop(x=x, crop_height=[top, bottom], crop_width=[left, right]), {"x": x})
    assert_close(result, x[..., top : height - bottom, left : width - right])


# -- crop_resize ----------------------------------------------------------------------------------

IMAGE = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)  # pixel (h, w) holds 4 h + w + 1


@pytest.mark.parametrize(
    "roi, size, normalized, expected",
    [
        # The expected values of coremltools' iOS14/iOS15 crop_resize tests (ALIGN_CORNERS).
        ([1, 1, 2, 2], 2, False, [[6, 7], [10, 11]]),
        ([1, 1, 2, 2], 4, False, np.arange(18, 34).reshape(4, 4) / 3),  # rows and columns 1, 4/3, 5/3, 2
        ([1, 1, 2, 2], 1, False, [[8.5]]),  # one point: the box centre
        ([0, 0, 0, 1 / 3, 1 / 3], 2, True, [[1, 2], [5, 6]]),  # image index, then a box scaled by (H - 1, W - 1)
        ([2, 2, 1, 1], 2, False, [[11, 10], [7, 6]]),  # an inverted box flips the crop
    ],
)
def test_crop_resize_iOS15_hand_values_from_coremltools_tests(roi, size, normalized, expected):
    roi = np.array(roi, dtype=np.float32).reshape(1, 1, -1, 1, 1)
    result = run_one(
        lambda x: mb.crop_resize(
            x=x, roi=roi, target_height=size, target_width=size, normalized_coordinates=normalized, sampling_mode="ALIGN_CORNERS"
        ),
        {"x": IMAGE},
    )
    assert_close(result, np.array(expected, dtype=np.float32).reshape(1, 1, 1, size, size))


def test_crop_resize_offset_corners_spaces_points_at_least_a_pixel_apart_within_the_box():
    # ROI_ALIGN_MODE: spacing = max(1, box length) / N from start + spacing / 2, clamped to the box end:
    # a box 0.5 long sampled at 2 points reads 1.25 and 1.5 (pixel (h, w) holds 4 h + w + 1).
    roi = np.array([1, 1, 1.5, 1.5], dtype=np.float32).reshape(1, 1, 4, 1, 1)
    result = run_one(
        lambda x: mb.crop_resize(x=x, roi=roi, target_height=2, target_width=2, sampling_mode="OFFSET_CORNERS"), {"x": IMAGE}
    )
    assert_close(result, np.array([[7.25, 7.5], [8.25, 8.5]], dtype=np.float32).reshape(1, 1, 1, 2, 2))


# Boxes partly outside the image: points outside read pad_value (coremltools' iOS16/iOS17 tests).
OUTSIDE_BOXES = np.array([[0.1, 0.3, 1.3, 1.0], [0.5, 1.8, 1.0, 0.3], [0.0, 0.4, 0.6, 0.7]], dtype=np.float32)


def outside_boxes_expected(pad_value: float) -> np.ndarray:
    p = pad_value
    return np.array([[3.1, 5.2], [p, p], [p, 7.9], [p, 13.9], [2.2, 3.1], [9.4, 10.3]], dtype=np.float32).reshape(3, 2, 2)


@pytest.mark.parametrize("pad_value", [0.0, 10.0])
def test_crop_resize_iOS16_pads_points_outside_the_image(pad_value):
    roi = np.concatenate([np.zeros((3, 1), np.float32), OUTSIDE_BOXES], axis=1).reshape(3, 1, 5, 1, 1)
    result = run_one(
        lambda x: mb.crop_resize(
            x=x, roi=roi, target_height=2, target_width=2, normalized_coordinates=True, sampling_mode="ALIGN_CORNERS",
            pad_value=np.float32(pad_value),
        ),
        {"x": IMAGE},
        IOS16,
    )
    assert_close(result, outside_boxes_expected(pad_value).reshape(3, 1, 1, 2, 2), 1e-4)


def test_crop_resize_iOS17_boxes_and_box_indices():
    images = np.concatenate([IMAGE, IMAGE + 100])
    result = run_one(
        lambda x: mb.crop_resize(
            x=x, boxes=OUTSIDE_BOXES, box_indices=np.array([0, 0, 1], dtype=np.int32), target_height=2, target_width=2,
            normalized_coordinates=True, sampling_mode="ALIGN_CORNERS", pad_value=np.float32(10.0),
        ),
        {"x": images},
        IOS17,
    )
    expected = outside_boxes_expected(10.0)
    expected[2] += 100
    assert_close(result, expected.reshape(3, 1, 2, 2), 1e-4)
    default_indices = run_one(lambda x: mb.crop_resize(x=x, boxes=np.array([[1, 1, 2, 2]] * 2, np.float32)), {"x": images}, IOS17)
    assert_close(default_indices, np.array([[[[6]]], [[[106]]]], dtype=np.float32))  # DEFAULT, one point: the start


def test_crop_resize_box_coordinate_modes_and_spatial_scale_describe_the_same_box():
    x = random(16, 2, 3, 5, 6)
    h_start, w_start, h_end, w_end = 0.5, 1.0, 3.5, 5.0
    boxes = {
        "CORNERS_HEIGHT_FIRST": [h_start, w_start, h_end, w_end],
        "CORNERS_WIDTH_FIRST": [w_start, h_start, w_end, h_end],
        "CENTER_SIZE_HEIGHT_FIRST": [2.0, 3.0, 3.0, 4.0],
        "CENTER_SIZE_WIDTH_FIRST": [3.0, 2.0, 4.0, 3.0],
    }
    results = []
    for mode, box in boxes.items():
        roi = np.array(box, dtype=np.float32).reshape(1, 1, 4, 1, 1) * 2  # halved back by spatial_scale
        results.append(
            run_one(
                lambda x: mb.crop_resize(
                    x=x, roi=roi, target_height=3, target_width=4, box_coordinate_mode=mode, spatial_scale=0.5,
                    sampling_mode="OFFSET_CORNERS",
                ),
                {"x": x},
            )
        )
    assert results[0].shape == (1, 2, 3, 3, 4)
    for result in results[1:]:
        assert_close(result, results[0])


@pytest.mark.parametrize("sampling_mode", SAMPLING_MODES)
def test_crop_resize_of_the_whole_image_is_resize_bilinear(sampling_mode):
    x = random(17, 1, 2, 4, 5)
    roi = np.array([0, 0, 3, 4], dtype=np.float32).reshape(1, 1, 4, 1, 1)
    cropped = run_one(
        lambda x: mb.crop_resize(x=x, roi=roi, target_height=3, target_width=7, sampling_mode=sampling_mode), {"x": x}
    )
    resized = run_one(
        lambda x: mb.resize_bilinear(x=x, target_size_height=3, target_size_width=7, sampling_mode=sampling_mode), {"x": x}
    )
    assert_close(cropped[0], resized)


# -- resample and affine --------------------------------------------------------------------------


def pixel_coordinates(coordinates: np.ndarray, size: int, coordinates_mode: str, align_corners: bool) -> np.ndarray:
    """resample's documented coordinate conventions, as pixel coordinates (centres at integers)."""
    if coordinates_mode == "unnormalized":
        return coordinates
    unit = (coordinates + 1) / 2 if coordinates_mode == "normalized_minus_one_to_one" else coordinates
    return unit * (size - 1) if align_corners else unit * size - 0.5


@FEW
@given(
    st.sampled_from(["bilinear", "nearest"]),
    st.sampled_from(["constant", "border", "reflection", "symmetric"]),
    st.sampled_from(["unnormalized", "normalized_minus_one_to_one", "normalized_zero_to_one"]),
    st.booleans(),
    st.integers(2, 5),
    st.integers(2, 5),
    SEEDS,
)
def test_resample_matches_torch_grid_sample(sampling_mode, padding_mode, coordinates_mode, align_corners, height, width, seed):
    x = random(seed, 2, 3, height, width)
    low, high = {
        "unnormalized": (-3, max(height, width) + 2),
        "normalized_minus_one_to_one": (-2.5, 2.5),
        "normalized_zero_to_one": (-1, 2),
    }[coordinates_mode]
    coordinates = random(seed + 1, 2, 3, 4, 2, low=low, high=high)
    result = run_one(
        lambda x, c: mb.resample(
            x=x, coordinates=c, sampling_mode=sampling_mode, padding_mode=padding_mode, padding_value=0.0,
            coordinates_mode=coordinates_mode, align_corners=align_corners,
        ),
        {"x": x, "c": coordinates},
    )
    # torch's grid_sample as coremltools' torch frontend maps it: zeros is constant 0, and reflection
    # about the corner pixels' centres (align_corners=True) or outer edges (False) is Core ML's
    # reflection or symmetric padding.
    columns = pixel_coordinates(coordinates[..., 0].astype(np.float64), width, coordinates_mode, align_corners)
    rows = pixel_coordinates(coordinates[..., 1].astype(np.float64), height, coordinates_mode, align_corners)
    torch_align = padding_mode != "symmetric"
    if torch_align:
        grid = np.stack([columns / (width - 1), rows / (height - 1)], axis=-1) * 2 - 1
    else:
        grid = np.stack([(columns + 0.5) / width, (rows + 0.5) / height], axis=-1) * 2 - 1
    torch_padding = {"constant": "zeros", "border": "border", "reflection": "reflection", "symmetric": "reflection"}[padding_mode]
    expected = F.grid_sample(
        torch.from_numpy(x).double(), torch.from_numpy(grid), mode=sampling_mode, padding_mode=torch_padding,
        align_corners=torch_align,
    )
    assert_close(result, expected.float(), 1e-4)


@pytest.mark.parametrize("integer_coordinates", [False, True])
def test_resample_hand_values_from_coremltools_tests(integer_coordinates):
    x = np.array([11.0, 22.0, 33.0, 44.0], dtype=np.float32).reshape(1, 1, 2, 2)
    if integer_coordinates:
        coordinates = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int32).reshape(1, 2, 2, 2)
    else:
        coordinates = np.array([-1.0, -2.0, -3.7, -1.0, 0.0, 0.0, 3.5, 1.2], dtype=np.float32).reshape(1, 2, 2, 2)
    settings_and_expected = [
        (("bilinear", "constant", 6.17, "normalized_minus_one_to_one", True), [8.585, 6.17, 27.5, 6.17], [27.5, 44, 27.5, 44]),
        (("nearest", "border", -1.0, "unnormalized", False), [11, 11, 11, 44], [11, 44, 11, 44]),
        (("bilinear", "reflection", -1.0, "normalized_zero_to_one", True), [22, 36.3, 11, 34.1], [11, 44, 11, 44]),
        (("nearest", "symmetric", -1.0, "normalized_zero_to_one", False), [22, 33, 11, 33], [11, 44, 11, 44]),
    ]
    for (sampling, padding, value, mode, align), float_expected, integer_expected in settings_and_expected:
        result = run_one(
            lambda x, c: mb.resample(
                x=x, coordinates=c, sampling_mode=sampling, padding_mode=padding, padding_value=value,
                coordinates_mode=mode, align_corners=align,
            ),
            {"x": x, "c": coordinates},
        )
        expected = integer_expected if integer_coordinates else float_expected
        assert_close(result, np.array(expected, dtype=np.float32).reshape(1, 1, 2, 2), 1e-4)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")  # a single output pixel is the centre
@FEW
@given(st.booleans(), st.booleans(), st.integers(1, 4), st.integers(1, 4), SEEDS)
def test_affine_matches_torch_affine_grid_and_grid_sample(align_corners, one_matrix, output_height, output_width, seed):
    x = random(seed, 2, 3, 4, 5)
    matrix = random(seed + 1, 1 if one_matrix else 2, 6, low=-1.5, high=1.5)
    result = run_one(
        lambda x, m: mb.affine(
            x=x, transform_matrix=m, output_height=output_height, output_width=output_width, sampling_mode="bilinear",
            padding_mode="constant", padding_value=0.0, coordinates_mode="normalized_minus_one_to_one", align_corners=align_corners,
        ),
        {"x": x, "m": matrix},
    )
    theta = torch.from_numpy(matrix).double().reshape(-1, 2, 3).expand(2, 2, 3)
    grid = F.affine_grid(theta, [2, 3, output_height, output_width], align_corners=align_corners)
    expected = F.grid_sample(torch.from_numpy(x).double(), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    assert_close(result, expected.float(), 1e-4)


def test_affine_hand_values_from_coremltools_tests():
    x = np.array([11.0, 22.0, 33.0, 44.0], dtype=np.float32).reshape(1, 1, 2, 2)
    matrix = np.array([-1.0, -2.0, -3.7, -1.0, 3.5, 1.2], dtype=np.float32).reshape(1, 6)
    square, wide = run_op(
        lambda x, m: [
            mb.affine(
                x=x, transform_matrix=m, output_height=height, output_width=width, sampling_mode="bilinear",
                padding_mode="constant", padding_value=0.0, coordinates_mode="normalized_minus_one_to_one", align_corners=True,
            )
            for height, width in ((3, 3), (2, 5))
        ],
        {"x": x, "m": matrix},
    )
    assert_close(square, np.array([10.752501, 2.5025, 0, 1.98, 0, 0, 0, 0, 0]).reshape(1, 1, 3, 3), 1e-4)
    assert_close(wide, np.array([10.752501, 5.94, 2.5025, 0.44, 0, 0, 0, 0, 0, 0]).reshape(1, 1, 2, 5), 1e-4)


# -- scaled_dot_product_attention -----------------------------------------------------------------


@FEW
@given(st.integers(3, 4), st.integers(1, 4), st.integers(1, 4), st.sampled_from([None, "bool", "float"]), SEEDS)
def test_scaled_dot_product_attention_matches_value_inference_and_torch(rank, target_length, source_length, mask_kind, seed):
    batch = [2, 3][: rank - 2]
    query = random(seed, *batch, target_length, 4)
    key, value = random(seed + 1, *batch, source_length, 4), random(seed + 2, *batch, source_length, 3)
    inputs = {"q": query, "k": key, "v": value}
    mask = None
    if mask_kind == "bool":
        mask = np.random.default_rng(seed).random((target_length, source_length)) < 0.7
        mask[:, 0] = True  # every query attends somewhere
        inputs["mask"] = mask
    elif mask_kind == "float":
        mask = random(seed + 3, target_length, source_length, low=-2, high=2)
        inputs["mask"] = mask

    def build(q, k, v, mask=None):
        extra = {} if mask is None else {"attn_mask": mask}
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, **extra)

    result = run_one(build, inputs, IOS18)
    assert_close(result, infer_op(build, inputs, IOS18)[0], 1e-5)
    expected = F.scaled_dot_product_attention(
        torch.from_numpy(query), torch.from_numpy(key), torch.from_numpy(value),
        attn_mask=None if mask is None else torch.from_numpy(mask),
    )
    assert_close(result, expected, 1e-5)
