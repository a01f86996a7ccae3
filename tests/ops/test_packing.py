import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremltools.optimize import _utils as ct_utils
from milcompress.ops.packing import pack_bits, packed_size, unpack_bits


@given(nbits=st.integers(1, 8), count=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_round_trip_and_coremltools_bit_order(nbits, count, seed):
    values = np.random.default_rng(seed).integers(0, 1 << nbits, count).astype(np.uint8)
    packed = pack_bits(values, nbits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(count, nbits)
    np.testing.assert_array_equal(unpack_bits(packed, nbits, count), values)
    if count:
        np.testing.assert_array_equal(packed, ct_utils.pack_elements_into_bits(values, nbits))
        restored = ct_utils.restore_elements_from_packed_bits(packed, nbits, count)
        np.testing.assert_array_equal(restored, values)


def test_documented_example_of_core_ml():
    # From constexpr_lut_to_dense's docs: 2-bit indices [0, 3, 2, 1, 3] pack LSB first.
    packed = pack_bits(np.array([0b00, 0b11, 0b10, 0b01, 0b11]), 2)
    np.testing.assert_array_equal(packed, [0b01101100, 0b00000011])


def test_padding_bits_are_zero():
    packed = pack_bits(np.ones(3, dtype=np.uint8), 1)
    assert packed.tolist() == [0b00000111]


def test_out_of_range_values_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(np.zeros(1, np.uint8), 4, 3)
