"""output_shift: the mean output change of a conv / linear layer whose weight changed by delta."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from milcompress.ops.bias import output_shift


@settings(max_examples=40, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.sampled_from([(1, 1), (3, 3), (1, 3)]),
    seed=st.integers(0, 2**16),
)
def test_conv_shift_equals_the_mean_of_the_delta_convolution(groups, per_group_in, per_group_out, kernel, seed):
    """With inputs constant over space (so every kernel tap sees the same channel values), the mean
    of conv(x, delta) over batch and positions is exactly delta's shift at the inputs' mean."""
    rng = np.random.default_rng(seed)
    channels_in, channels_out = groups * per_group_in, groups * per_group_out
    delta = rng.standard_normal((channels_out, per_group_in, *kernel))
    per_sample = rng.standard_normal((5, channels_in)) + rng.standard_normal(channels_in)  # a mean far from zero
    x = np.broadcast_to(per_sample[:, :, None, None], (5, channels_in, 4, 5)).copy()
    direct = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(delta), groups=groups).mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(output_shift(delta, per_sample.mean(axis=0), "conv", groups), direct, rtol=1e-9, atol=1e-12)


def test_linear_shift_is_delta_times_the_mean():
    rng = np.random.default_rng(0)
    delta, x = rng.standard_normal((6, 4)), rng.standard_normal((50, 4)) + 2.0
    np.testing.assert_allclose(output_shift(delta, x.mean(axis=0), "linear"), (x @ delta.T).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    "shape, mean, kind, groups, message",
    [
        ((6, 4), 5, "linear", 1, "does not read 5 input channels"),
        ((6, 2, 3, 3), 5, "conv", 2, "with 2 groups does not read 5"),
        ((6, 4), 4, "matmul", 1, "no bias correction for layer kind 'matmul'"),
    ],
)
def test_shapes_that_do_not_fit_are_refused(shape, mean, kind, groups, message):
    with pytest.raises(ValueError, match=message):
        output_shift(np.zeros(shape), np.zeros(mean), kind, groups)
