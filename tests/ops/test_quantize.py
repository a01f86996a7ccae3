import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as ct_quantize
from milcompress.config import LinearQuantizeConfig
from milcompress.errors import NotCompressible
from milcompress.ops._arrays import expand_blocks, largest_divisor_at_most
from milcompress.ops.quantize import AffineParams, block_sizes_for, integer_range, quantize, quantize_blocks
from tests.strategies import weights

MODES = st.sampled_from(["linear_symmetric", "linear"])
DTYPES = st.sampled_from(["int8", "uint8", "int4", "uint4"])


def _assert_within_half_a_step(w: np.ndarray, params: AffineParams):
    """|w - decoded| <= scale / 2, plus half a unit in the last place of the output dtype."""
    dense = params.decompress()
    assert dense.dtype == w.dtype and dense.shape == w.shape
    scale = expand_blocks(params.scale.astype(np.float64), w.shape)
    error = np.abs(w.astype(np.float64) - dense.astype(np.float64))
    ulp = np.spacing(np.abs(dense)).astype(np.float64)
    assert (error <= scale / 2 * (1 + 1e-9) + ulp / 2).all()


def _assert_integer_ranges(params: AffineParams, mode: str):
    qmin, qmax = integer_range(params.nbits, params.signed, mode)
    assert params.data.min() >= qmin and params.data.max() <= qmax
    if params.zero_point is not None:
        assert params.zero_point.min() >= qmin and params.zero_point.max() <= qmax


@given(w=weights(min_rank=2), mode=MODES, dtype=DTYPES, granularity=st.sampled_from(["per_tensor", "per_channel"]))
def test_per_tensor_and_per_channel_error_is_at_most_half_a_step(w, mode, dtype, granularity):
    config = LinearQuantizeConfig(mode=mode, dtype=dtype, granularity=granularity)
    params = quantize(w, config)
    assert params.scale.shape == ((w.shape[0],) if granularity == "per_channel" else (1,)) + (1,) * (w.ndim - 1)
    assert params.scale.dtype == w.dtype
    _assert_within_half_a_step(w, params)
    _assert_integer_ranges(params, mode)


@given(w=weights(min_rank=2, max_side=12), mode=MODES, dtype=DTYPES, data=st.data())
def test_per_block_error_is_at_most_half_a_step(w, mode, dtype, data):
    block = data.draw(st.sampled_from([d for d in range(1, w.shape[1] + 1) if w.shape[1] % d == 0]))
    params = quantize(w, LinearQuantizeConfig(mode=mode, dtype=dtype, granularity="per_block", block_size=block))
    assert params.block_sizes == (1, block) + w.shape[2:]
    _assert_within_half_a_step(w, params)
    _assert_integer_ranges(params, mode)


@given(w=weights(min_rank=2), mode=MODES, dtype=DTYPES, data=st.data())
def test_blocks_given_per_axis(w, mode, dtype, data):
    blocks = tuple(data.draw(st.sampled_from([0] + [d for d in range(1, n + 1) if n % d == 0])) for n in w.shape)
    params = quantize(w, LinearQuantizeConfig(mode=mode, dtype=dtype, granularity="per_block", block_size=blocks))
    assert params.block_sizes == tuple(n if b == 0 else b for n, b in zip(w.shape, blocks))
    _assert_within_half_a_step(w, params)


@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 6)), mode=MODES, dtype=DTYPES)
def test_all_zero_tensors_and_channels_decode_to_exact_zeros(shape, mode, dtype):
    w = np.zeros(shape, np.float16)
    np.testing.assert_array_equal(quantize(w, LinearQuantizeConfig(mode=mode, dtype=dtype)).decompress(), w)
    w = np.random.default_rng(0).normal(size=(3,) + shape).astype(np.float32)
    w[1] = 0.0
    dense = quantize(w, LinearQuantizeConfig(mode=mode, dtype=dtype)).decompress()
    assert (dense[1] == 0).all()


def test_coremltools_divides_zero_by_zero_where_we_do_not():
    w = np.zeros((4, 8), np.float32)
    w[0] = 1.0
    with pytest.warns(RuntimeWarning, match="invalid value"):
        theirs = ct_quantize.blockwise_compress(w, 8, "LINEAR_SYMMETRIC", True, [1, 0])
    assert (theirs.scale[1:] == 0).all()  # their zero rows went through 0 / 0 and a NaN-to-int cast
    params = quantize(w, LinearQuantizeConfig())  # RuntimeWarnings are errors in this suite
    assert (params.scale[1:] == 1).all()
    np.testing.assert_array_equal(params.decompress()[1:], 0.0)
    _assert_within_half_a_step(w, params)


@given(w=weights(min_rank=2, max_side=12), mode=MODES, dtype=DTYPES)
def test_never_worse_than_coremltools_on_the_largest_error(w, mode, dtype):
    assume(np.abs(w).max() > 0)
    config = LinearQuantizeConfig(mode=mode, dtype=dtype)
    ours = np.abs(quantize(w, config).decompress().astype(np.float64) - w).max()
    with np.errstate(all="ignore"):
        theirs = ct_quantize.blockwise_compress(w, config.nbits, mode.upper(), config.signed, [1] + [0] * (w.ndim - 1))
    theirs_dense = ct_quantize.decompress(theirs).astype(np.float64)
    assume(np.isfinite(theirs_dense).all())
    assert ours <= np.abs(theirs_dense - w).max() * (1 + 1e-3) + np.spacing(np.abs(w).max().astype(w.dtype))


def test_integer_ranges_follow_coremltools():
    assert integer_range(8, True, "linear_symmetric") == (-127, 127)
    assert integer_range(8, True, "linear") == (-128, 127)
    assert integer_range(8, False, "linear_symmetric") == (0, 254)
    assert integer_range(4, True, "linear_symmetric") == (-7, 7)
    assert integer_range(4, False, "linear") == (0, 15)


def test_unsigned_symmetric_zero_point_is_mid_range():
    w = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    params = quantize(w, LinearQuantizeConfig(dtype="uint8"))
    assert (params.zero_point == 127).all() and params.zero_point.dtype == np.uint8


def test_block_sizes_follow_the_op_layout():
    config = LinearQuantizeConfig(granularity="per_block", block_size=16)
    assert block_sizes_for((64, 32, 3, 3), config, 0, 1) == (1, 16, 3, 3)
    assert block_sizes_for((32, 64), config, 1, 0) == (16, 1)  # matmul y: [in, out]
    with pytest.raises(NotCompressible, match=r"dim 1 \(size 1000\) is not divisible by block size 16 .* is 10\)"):
        block_sizes_for((8, 1000), config, 0, 1)
    with pytest.raises(NotCompressible, match="rank 1"):
        block_sizes_for((64,), config, 0, 1)


def _exact_integers(w: np.ndarray, params: AffineParams, mode: str) -> np.ndarray:
    """The integers of `params`' scales and zero points, from quotients computed in float64."""
    qmin, qmax = integer_range(params.nbits, params.signed, mode)
    scale = expand_blocks(params.scale.astype(np.float64), w.shape)
    zero = 0.0 if params.zero_point is None else expand_blocks(params.zero_point.astype(np.float64), w.shape)
    return np.clip(np.rint(w.astype(np.float64) / scale) + zero, qmin, qmax)


@given(w=weights(min_rank=2), mode=MODES, dtype=DTYPES)
def test_integers_are_the_exactly_rounded_quotients(w, mode, dtype):
    params = quantize(w, LinearQuantizeConfig(mode=mode, dtype=dtype, granularity="per_channel"))
    assert np.array_equal(params.data, _exact_integers(w, params, mode))


@pytest.mark.parametrize("mode", ["linear_symmetric", "linear"])
@pytest.mark.parametrize("dtype", ["int8", "uint4"])
def test_float16_quotients_next_to_half_integers_round_as_exact_ones(mode, dtype):
    """Float16 weights are divided in float32: each row holds its peak (which fixes the row's
    scale) and, for every level, the float16 values nearest to and either side of the midpoint
    to the next level, where a rounding of the quotient could change the integer."""
    config = LinearQuantizeConfig(mode=mode, dtype=dtype, granularity="per_channel")
    peaks = np.random.default_rng(0).uniform(-7.0, 2.0, 96)
    rows = []
    for peak in (10.0 ** peaks).astype(np.float16):
        scale = float(quantize(np.array([[peak, 0.0]], np.float16), config).scale.reshape(()))
        levels = np.arange(int(peak / scale))
        middles = ((levels + 0.5) * scale).astype(np.float16)
        near = np.concatenate([middles, np.nextafter(middles, np.float16(0)), np.nextafter(middles, np.float16(np.inf))])
        rows.append(np.concatenate([[peak], np.minimum(near, peak)]))
    w = np.stack([np.resize(row, max(map(len, rows))) for row in rows]).astype(np.float16)
    params = quantize(w, config)
    assert np.array_equal(params.data, _exact_integers(w, params, mode))


def test_tiny_scales_survive_float16_rounding():
    w = np.full((2, 4), 1e-6, np.float16)
    params = quantize(w, LinearQuantizeConfig())
    assert (params.scale > 0).all()
    _assert_within_half_a_step(w, params)


def test_nbytes_counts_packed_integers_scales_and_zero_points():
    w = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float16)
    params = quantize_blocks(w, 4, False, "linear", (1, 16))
    assert params.nbytes == 8 * 32 // 2 + 16 * 2 + 16 // 2


@given(seed=st.integers(0, 10_000), mode=MODES, dtype=DTYPES)
def test_weights_already_on_a_grid_come_back_exactly(seed, mode, dtype):
    """As after quantization-aware training: weights = scale * integers, spanning the range."""
    config = LinearQuantizeConfig(mode=mode, dtype=dtype)
    qmin, qmax = integer_range(config.nbits, config.signed, mode)
    rng = np.random.default_rng(seed)
    if mode == "linear_symmetric":
        half = (qmax - qmin) // 2
        q = rng.integers(-half, half + 1, (6, 16))
        q[:, 0] = half
    else:
        q = rng.integers(qmin, qmax + 1, (6, 16)) - qmin + min(qmin, 0)
        q[:, 0], q[:, 1] = min(qmin, 0) + 0, min(qmin, 0) + (qmax - qmin)
        q = q - q.min(1, keepdims=True) * (q.min(1, keepdims=True) > 0)
    step = 2.0 ** rng.integers(-12, -4, (6, 1))
    w = (q * step).astype(np.float32)
    np.testing.assert_array_equal(quantize(w, config).decompress(), w)


@pytest.mark.parametrize("granularity,block", [("per_tensor", 0), ("per_channel", 0), ("per_block", 4)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_large_tensors_quantize_and_decompress_slice_by_slice_alike(monkeypatch, granularity, block, dtype):
    """Beyond WORK_ELEMENTS, quantization and decompression go slice by slice: the same result."""
    from milcompress.ops import _arrays

    w = (np.random.default_rng(3).standard_t(3, (24, 16, 3)) * 0.02).astype(dtype)
    config = LinearQuantizeConfig(mode="linear", dtype="int4", granularity=granularity, block_size=block or 32)
    whole = quantize(w, config)
    dense = whole.decompress()
    for limit in (100, 40, 7):  # whole blocks of rows, then slices of rows within a block
        monkeypatch.setattr(_arrays, "WORK_ELEMENTS", limit)
        sliced = quantize(w, config)
        for field in ("data", "scale", "zero_point"):
            np.testing.assert_array_equal(getattr(sliced, field), getattr(whole, field))
        np.testing.assert_array_equal(sliced.decompress(), dense)


# linear_float_offset: a scale and a float minimum per block (llama.cpp's Q4_1), Core ML's iOS18
# constexpr_blockwise_shift_scale with a float offset.


def _assert_float_offset_bound(w: np.ndarray, params: AffineParams):
    """Within half a step of the original, plus the float rounding of the offset and of
    (q - offset): a few units in the last place of the block's largest magnitude."""
    dense = params.decompress().astype(np.float64)
    scale = expand_blocks(params.scale.astype(np.float64), w.shape)
    largest = expand_blocks(_block_max_abs(w, params), w.shape)
    slack = 4 * np.spacing(largest.astype(w.dtype)).astype(np.float64) + np.spacing(np.abs(dense).astype(w.dtype)).astype(np.float64)
    error = np.abs(w.astype(np.float64) - dense)
    assert (error <= scale / 2 * (1 + 1e-9) + slack).all(), float((error - scale / 2 - slack).max())


def _block_max_abs(w: np.ndarray, params: AffineParams) -> np.ndarray:
    split = []
    for dim, count in zip(w.shape, params.scale.shape):
        split += [count, dim // count]
    return np.abs(w.astype(np.float64)).reshape(split).max(axis=tuple(range(1, 2 * w.ndim, 2)))


@given(w=weights(min_rank=2, max_side=12), dtype=DTYPES, data=st.data())
def test_float_offset_blocks_decode_within_half_a_step(w, dtype, data):
    block = data.draw(st.sampled_from([d for d in range(1, w.shape[1] + 1) if w.shape[1] % d == 0]))
    params = quantize(w, LinearQuantizeConfig(mode="linear_float_offset", dtype=dtype, granularity="per_block", block_size=block))
    assert params.zero_point.dtype == w.dtype and params.scale.dtype == w.dtype
    assert params.block_sizes == (1, block) + w.shape[2:]
    qmin, qmax = integer_range(params.nbits, params.signed, "linear")
    assert params.data.min() >= qmin and params.data.max() <= qmax
    _assert_float_offset_bound(w, params)


@given(w=weights(min_rank=2, max_side=12), dtype=DTYPES, granularity=st.sampled_from(["per_tensor", "per_channel", "per_block"]))
def test_float_offsets_decode_as_coremltools_does(w, dtype, granularity):
    """coremltools' value inference of constexpr_blockwise_shift_scale rounds (data - offset) to the
    dtype before the product; ours gives the same values bit for bit."""
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale

    block = largest_divisor_at_most(w.shape[1], 4)
    params = quantize(w, LinearQuantizeConfig(mode="linear_float_offset", dtype=dtype, granularity=granularity, block_size=block))
    theirs = constexpr_blockwise_shift_scale.decompress(params.data, params.scale, params.zero_point)
    np.testing.assert_array_equal(params.decompress(), theirs)


@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float16, np.float32]), nbits=st.just(4))
def test_weights_stored_as_scale_and_minimum_blocks_come_back(seed, dtype, nbits):
    """A checkpoint shipped as Q4_1 (per block of 32: 4-bit integers, a float16 scale d and minimum
    m, w = d q + m) comes back to within 1/32 of its step (a float16 weight itself is rounded by up to 1/100); `linear`, whose zero point is an integer,
    loses up to half a step. (At 8 bits a float16 weight far from zero has too few bits for 255
    levels to begin with.)"""
    rng = np.random.default_rng(seed)
    levels = (1 << nbits) - 1
    d = rng.uniform(0.002, 0.05, (16, 4, 1)).astype(np.float16).astype(np.float64)
    m = (-rng.uniform(0.2, 0.8, (16, 4, 1)) * levels * d).astype(np.float16).astype(np.float64)
    q = rng.integers(0, levels + 1, (16, 4, 32))
    q[..., 0], q[..., 1] = 0, levels
    w = (d * q + m).reshape(16, 128).astype(dtype)
    step = np.repeat(d.reshape(16, 4), 32, axis=1)
    dtype_name = "uint4" if nbits == 4 else "uint8"
    config = LinearQuantizeConfig(mode="linear_float_offset", dtype=dtype_name, granularity="per_block", block_size=32)
    ours = np.abs(quantize(w, config).decompress().astype(np.float64) - w) / step
    assert ours.max() <= 1 / 32
    integer = LinearQuantizeConfig(mode="linear", dtype=dtype_name, granularity="per_block", block_size=32)
    assert (np.abs(quantize(w, integer).decompress().astype(np.float64) - w) / step).max() > 0.1


@pytest.mark.parametrize("value", [0.0, 1.0, -0.25, 3e-5, -6.0e-8])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float_offset_constant_blocks_decode_exactly(value, dtype):
    w = np.full((3, 8), value, dtype)
    config = LinearQuantizeConfig(mode="linear_float_offset", dtype="uint4", granularity="per_block", block_size=4)
    np.testing.assert_array_equal(quantize(w, config).decompress(), w)


def test_float_offset_blocks_whose_values_barely_differ_keep_their_offset_in_range():
    """A block [1, 1 + ulp] would need an offset of about -15 * 2**10 / 15 steps of its span at 8
    bits (beyond float16's range); the step is floored at max|w| / 2**14 instead."""
    w = np.array([[1.0, 1.0009765625, 1.0, 1.0009765625]], np.float16)
    params = quantize(w, LinearQuantizeConfig(mode="linear_float_offset", dtype="uint8", granularity="per_channel"))
    assert np.isfinite(params.zero_point.astype(np.float32)).all()
    _assert_float_offset_bound(w, params)


def test_nbytes_counts_float_offsets_in_their_dtype():
    w = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float16)
    params = quantize_blocks(w, 4, False, "linear_float_offset", (1, 16))
    assert params.float_offset
    assert params.nbytes == 8 * 32 // 2 + 16 * 2 + 16 * 2
