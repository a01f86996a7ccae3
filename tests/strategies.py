"""Hypothesis strategies for weight tensors, including the adversarial ones.

A weight is drawn as a base array (normal, heavy-tailed, lattice or uniform values, at a random
scale) and then, maybe, damaged: all-zero rows, a constant tensor, one huge outlier, subnormal
values, signed zeros. Shapes are small and odd; dtypes float16 and float32.
"""

import numpy as np
from hypothesis import strategies as st

DTYPES = st.sampled_from([np.float16, np.float32])


@st.composite
def shapes(draw, min_rank=1, max_rank=4, max_side=9):
    rank = draw(st.integers(min_rank, max_rank))
    return tuple(draw(st.integers(1, max_side)) for _ in range(rank))


@st.composite
def weights(draw, shape=None, dtype=None, min_rank=1, max_rank=4, max_side=9):
    shape = draw(shapes(min_rank, max_rank, max_side)) if shape is None else shape
    dtype = draw(DTYPES) if dtype is None else dtype
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "student", "lattice", "uniform"]))
    scale = 10.0 ** draw(st.integers(-4, 1))
    if kind == "normal":
        x = rng.normal(0.0, scale, shape)
    elif kind == "student":
        x = rng.standard_t(1.5, shape) * scale
    elif kind == "lattice":
        x = rng.integers(-3, 4, shape) * scale
    else:
        x = rng.uniform(-scale, scale, shape)
    damage = draw(st.sampled_from(["none", "zero_rows", "constant", "outlier", "subnormal", "signed_zeros"]))
    if damage == "zero_rows" and x.ndim >= 1:
        x[rng.random(shape[0]) < 0.5] = 0.0
    elif damage == "constant":
        x[...] = draw(st.sampled_from([0.0, 1.0, -0.25, 3e-5]))
    elif damage == "outlier":
        x.reshape(-1)[rng.integers(x.size)] = draw(st.sampled_from([1e3, -5e3, 60000.0]))
    elif damage == "subnormal":
        x = x * 1e-7 if dtype == np.float16 else x * 1e-40
    elif damage == "signed_zeros":
        x.reshape(-1)[::2] = -0.0
    return x.astype(dtype)
