"""Error feedback (GPTQ): the re-encoded form keeps its tables and scales, holds only values the
form can hold, is plain rounding when inputs are uncorrelated, and lowers the layer's output error
when they are correlated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress.config import LinearQuantizeConfig, PalettizeConfig
from milcompress.ops import compress
from milcompress.ops.feedback import feedback

FORMS = {
    "palette 4-bit": PalettizeConfig(nbits=4),
    "palette 3-bit groups of 4": PalettizeConfig(nbits=3, granularity="per_grouped_channel", group_size=4),
    "int8 per channel": LinearQuantizeConfig(dtype="int8", granularity="per_channel"),
    "int4 per block 8": LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=8),
    "uint4 linear per block 8": LinearQuantizeConfig(dtype="uint4", mode="linear", granularity="per_block", block_size=8),
    "uint4 float offset per block 8": LinearQuantizeConfig(dtype="uint4", mode="linear_float_offset", granularity="per_block", block_size=8),
}


def correlated_inputs(inputs: int, samples: int, seed: int) -> np.ndarray:
    """Samples of strongly correlated inputs, as a layer's activations are."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((inputs, inputs)) / np.sqrt(inputs) + 0.7 * np.eye(inputs)
    return rng.standard_normal((samples, 4)) @ rng.standard_normal((4, inputs)) + rng.standard_normal((samples, inputs)) @ mixing


def output_error(weight: np.ndarray, approximation: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.square(x @ (approximation.astype(np.float64) - weight.astype(np.float64)).T)))


@pytest.mark.parametrize("form", FORMS)
def test_feedback_lowers_the_output_error_keeping_tables_scales_and_size(form):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 32)).astype(np.float16)
    x = correlated_inputs(32, 2000, seed=2)
    plain = compress(weight, FORMS[form], output_axis=0, input_axis=1)
    better = feedback(plain, weight, x.T @ x / len(x), output_axis=0, input_axis=1)
    assert type(better) is type(plain) and better.nbytes == plain.nbytes
    for name in ("lut", "scale", "zero_point"):
        if getattr(plain, name, None) is not None:
            np.testing.assert_array_equal(getattr(better, name), getattr(plain, name))
    before, after = output_error(weight, plain.decompress(), x), output_error(weight, better.decompress(), x)
    assert after < 0.8 * before, (before, after)


@settings(max_examples=25, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), scale=st.floats(0.01, 100), seed=st.integers(0, 2**16))
def test_uncorrelated_inputs_of_equal_power_make_feedback_plain_rounding(form, scale, seed):
    weight = np.random.default_rng(seed).standard_normal((8, 16)).astype(np.float16)
    plain = compress(weight, FORMS[form], output_axis=0, input_axis=1)
    same = feedback(plain, weight, scale * np.eye(16), output_axis=0, input_axis=1)
    np.testing.assert_array_equal(same.decompress(), plain.decompress())


@pytest.mark.parametrize("form", ["palette 3-bit groups of 4", "int4 per block 8"])
def test_layouts_other_than_output_then_input_and_1x1_kernels_round_trip(form):
    """A matmul weight [input, output] and a 1x1 conv weight [output, input, 1, 1] give the same
    codes as the [output, input] matrix."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 16)).astype(np.float16)
    x = correlated_inputs(16, 500, seed=4)
    hessian = x.T @ x / len(x)
    config = FORMS[form]
    reference = feedback(compress(weight, config, output_axis=0, input_axis=1), weight, hessian, output_axis=0, input_axis=1).decompress()
    transposed = weight.T.copy()
    got = feedback(compress(transposed, config, output_axis=1, input_axis=0), transposed, hessian, output_axis=1, input_axis=0)
    np.testing.assert_array_equal(got.decompress(), reference.T)
    kernel = weight[:, :, None, None]
    got = feedback(compress(kernel, config, output_axis=0, input_axis=1), kernel, hessian, output_axis=0, input_axis=1)
    np.testing.assert_array_equal(got.decompress()[:, :, 0, 0], reference)


def test_what_it_does_not_handle_is_none():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((8, 4, 3, 3)).astype(np.float16)  # a 3x3 convolution: not a matrix
    plain = compress(kernel, PalettizeConfig(nbits=4), output_axis=0, input_axis=1)
    assert feedback(plain, kernel, np.eye(4), output_axis=0, input_axis=1) is None
    weight = rng.standard_normal((8, 16)).astype(np.float16)
    vectors = compress(weight, PalettizeConfig(nbits=2, cluster_dim=2), output_axis=0, input_axis=1)
    assert feedback(vectors, weight, np.eye(16), output_axis=0, input_axis=1) is None
    scaled = compress(weight, PalettizeConfig(nbits=2, enable_per_channel_scale=True), output_axis=0, input_axis=1)
    assert feedback(scaled, weight, np.eye(16), output_axis=0, input_axis=1) is None
    plain = compress(weight, PalettizeConfig(nbits=2), output_axis=0, input_axis=1)
    assert feedback(plain, weight, np.eye(15), output_axis=0, input_axis=1) is None  # wrong size


def test_inputs_calibration_never_excited_round_to_nearest():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((8, 16)).astype(np.float16)
    x = correlated_inputs(16, 1000, seed=6)
    x[:, 3] = 0.0
    plain = compress(weight, FORMS["int4 per block 8"], output_axis=0, input_axis=1)
    better = feedback(plain, weight, x.T @ x / len(x), output_axis=0, input_axis=1)
    # Column 3 meets no input: it is rounded to nearest (as plain does), not bent by the others' errors.
    np.testing.assert_array_equal(better.data[:, 3], plain.data[:, 3])
