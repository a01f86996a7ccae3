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
    """Pack the flattened unsigned `values` (each < 2**nbits) into uint8, least significant bit first.

    Shifts and ors, no bit arrays: 1, 2 and 4 bits fill each byte from 8 / nbits values; 3, 5, 6
    and 7 bits fill nbits bytes from a little-endian 64-bit word of 8 values.
    """
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be in 1..8, got {nbits}")
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << nbits):
        raise ValueError(f"values must lie in [0, {(1 << nbits) - 1}] to pack into {nbits} bits")
    count = flat.size
    if nbits == 8:
        return flat.astype(np.uint8)
    per_word = 8 // nbits if 8 % nbits == 0 else 8  # values per output unit: a byte, or 8 values in nbits bytes
    lanes = np.zeros(-(-count // per_word) * per_word, dtype=np.uint8)
    lanes[:count] = flat
    lanes = lanes.reshape(-1, per_word)
    if 8 % nbits == 0:
        packed = lanes[:, 0].copy()
        for j in range(1, per_word):
            packed |= lanes[:, j] << np.uint8(j * nbits)
        return packed
    words = lanes[:, 0].astype("<u8")
    for j in range(1, per_word):
        words |= lanes[:, j].astype("<u8") << np.uint64(j * nbits)
    return words.view(np.uint8).reshape(-1, 8)[:, :nbits].reshape(-1)[: packed_size(count, nbits)]


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: the first `count` elements of `nbits` bits each, as uint8."""
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be in 1..8, got {nbits}")
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed data must be uint8, got {packed.dtype}")
    if packed.size < packed_size(count, nbits):
        raise ValueError(f"{packed.size} bytes cannot hold {count} elements of {nbits} bits")
    flat = packed.reshape(-1)
    if nbits == 8:
        return flat[:count].copy()
    mask = (1 << nbits) - 1
    if 8 % nbits == 0:
        per_byte = 8 // nbits
        source = flat[: -(-count // per_byte)]
        lanes = np.empty((source.size, per_byte), dtype=np.uint8)
        for j in range(per_byte):
            np.bitwise_and(source >> np.uint8(j * nbits), np.uint8(mask), out=lanes[:, j])
        return lanes.reshape(-1)[:count]
    words_needed = -(-count // 8)
    source = np.zeros((words_needed, 8), dtype=np.uint8)
    used = flat[: packed_size(count, nbits)]
    whole = min(words_needed, used.size // nbits)
    source[:whole, :nbits] = used[: whole * nbits].reshape(whole, nbits)
    if whole < words_needed:  # the last, partial word
        tail = used[whole * nbits :]
        source[whole, : tail.size] = tail
    words = source.reshape(-1).view("<u8")
    lanes = np.empty((words_needed, 8), dtype=np.uint8)
    for j in range(8):
        lanes[:, j] = (words >> np.uint64(j * nbits)) & np.uint64(mask)
    return lanes.reshape(-1)[:count]
