"""Sub-byte packing of unsigned integers, in the bit order Core ML uses.

Core ML's iOS16 constexpr ops store palette indices and sparsity masks packed into bytes: the first
element fills the least significant bits of byte 0, the next element the bits above it, and an
element that does not fit spills its high bits into the low bits of the next byte. Padding bits at
the end are zero. (iOS18 programs hold sub-byte tensors as typed `uintN` values and coremltools
packs them when it serialises; this module is for the places that need the bytes themselves.)
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, nbits: int) -> int:
    """Bytes needed for `count` elements of `nbits` bits each."""
    return -(-count * nbits // 8)


def pack_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Pack the flattened unsigned `values` (each < 2**nbits) into uint8, least significant bit first."""
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be in 1..8, got {nbits}")
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << nbits):
        raise ValueError(f"values must lie in [0, {(1 << nbits) - 1}] to pack into {nbits} bits")
    as_bytes = flat.astype(np.uint8).reshape(-1, 1)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :nbits]
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: the first `count` elements of `nbits` bits each, as uint8."""
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be in 1..8, got {nbits}")
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed data must be uint8, got {packed.dtype}")
    if packed.size < packed_size(count, nbits):
        raise ValueError(f"{packed.size} bytes cannot hold {count} elements of {nbits} bits")
    bits = np.unpackbits(packed.reshape(-1), bitorder="little")[: count * nbits]
    bits = bits.reshape(count, nbits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, :nbits] = bits
    return np.packbits(padded, axis=1, bitorder="little").reshape(-1)
