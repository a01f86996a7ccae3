"""Core ML's weight blob storage (`weights/weight.bin` of an .mlpackage), read and written by us.

The file format (coremltools' `MILBlob/Blob/StorageFormat.hpp`, version 2): a 64-byte header
(uint32 blob count, uint32 version = 2, 56 zero bytes), then one entry per blob, each starting at
a multiple of 64 bytes: 64 bytes of metadata (uint32 sentinel 0xDEADBEEF, uint32 data type,
uint64 data size in bytes, uint64 file offset of the data, uint64 padding bits of the last byte
for sub-byte types, 32 zero bytes) followed at once by the data. Between entries the file is
padded with zero bytes up to the next multiple of 64. The program refers to a blob by the offset
of its metadata (the MIL proto's `BlobFileValue{fileName, offset}`).

Sub-byte types (uint1/2/3/4/6, int4: the indices and integers of constexpr ops) are packed
little-end first: element i takes bits [i*n, (i+1)*n) of the byte string, counting from the
least significant bit of byte 0 (as coremltools' `pack_elements_into_bits` packs them).

`BlobRef(path, offset, dtype, shape)` names one blob; it is small and picklable, and `load()`
memory-maps the file, checks the entry and returns the array (a read-only view of the mapping
for whole-byte types: pages are read on demand and released when the array is dropped; a new
array for sub-byte types). `BlobWriter(path)` appends blobs and returns their offsets, writing
the same bytes coremltools' writer writes. `BlobFile(path)` lists a file's entries.

Errors are `BlobError`s (an `InputError`) naming the file, the offset and what is wrong; callers
that know which weight a blob holds say so (`BlobRef.load(what=...)`). Pure numpy: this module
never imports coremltools, so a worker process can read weights with it alone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from milcompress.errors import InputError, OutputError

ALIGNMENT = 64
SENTINEL = 0xDEADBEEF
VERSION = 2
HEADER = struct.Struct("<II56x")  # count, version, reserved
METADATA = struct.Struct("<IIQQQ32x")  # sentinel, dtype, size in bytes, data offset, padding bits, reserved

# MIL dtype name -> (blob data type code, bits per element, numpy dtype of the unpacked values).
DTYPES: Dict[str, Tuple[int, int, np.dtype]] = {
    "fp16": (1, 16, np.dtype(np.float16)),
    "fp32": (2, 32, np.dtype(np.float32)),
    "uint8": (3, 8, np.dtype(np.uint8)),
    "int8": (4, 8, np.dtype(np.int8)),
    "int16": (6, 16, np.dtype(np.int16)),
    "uint16": (7, 16, np.dtype(np.uint16)),
    "int4": (8, 4, np.dtype(np.int8)),
    "uint1": (9, 1, np.dtype(np.uint8)),
    "uint2": (10, 2, np.dtype(np.uint8)),
    "uint4": (11, 4, np.dtype(np.uint8)),
    "uint3": (12, 3, np.dtype(np.uint8)),
    "uint6": (13, 6, np.dtype(np.uint8)),
    "int32": (14, 32, np.dtype(np.int32)),
    "uint32": (15, 32, np.dtype(np.uint32)),
}
_NAME_OF_CODE = {code: name for name, (code, _, _) in DTYPES.items()}
# Names numpy gives the whole-byte types, for callers holding arrays.
_NAME_OF_NUMPY = {"float16": "fp16", "float32": "fp32", "uint8": "uint8", "int8": "int8", "int16": "int16", "uint16": "uint16",
                  "int32": "int32", "uint32": "uint32"}


class BlobError(InputError):
    """A weight blob file that cannot be read as the program says: missing, truncated, a wrong
    header or sentinel, an offset out of range, a data type or size that disagrees. `kind`:
    "missing", "truncated" (the file ends before what is asked for) or "corrupted"."""

    def __init__(self, message: str, kind: str = "corrupted"):
        super().__init__(message)
        self.kind = kind


def dtype_name(dtype) -> str:
    """The MIL dtype name ("fp16", "int4", ...) of a name or a numpy dtype of a whole-byte type."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    name = np.dtype(dtype).name
    if name not in _NAME_OF_NUMPY:
        raise ValueError(f"no weight blob data type for numpy dtype {name}")
    return _NAME_OF_NUMPY[name]


def stored_size(dtype: str, count: int) -> int:
    """Bytes the data of `count` elements of `dtype` take in the file (sub-byte types packed)."""
    return -(-count * DTYPES[dtype][1] // 8)


@dataclass(frozen=True)
class BlobEntry:
    """One blob as its metadata describes it; `offset` is the metadata's (what programs hold)."""

    offset: int
    dtype: str
    data_offset: int
    nbytes: int
    padding_bits: int


@dataclass(frozen=True)
class BlobRef:
    """One weight in a blob file: `load()` returns it as an array of `shape` (read on demand)."""

    path: str
    offset: int
    dtype: str
    shape: Tuple[int, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown weight blob dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of its data in the file."""
        return stored_size(self.dtype, self.size)

    def check(self, what: Optional[str] = None) -> BlobEntry:
        """The blob's entry, read from the file (its metadata, not its data); BlobError naming the
        file, the offset (and `what`, the weight) if the file does not hold it as described."""
        with _open(self.path, self._where(what)) as (handle, file_size):
            return self._entry(handle, file_size, what)

    def load(self, what: Optional[str] = None) -> np.ndarray:
        """The array (see the module docstring); BlobError as `check` says."""
        _, bits, numpy_dtype = DTYPES[self.dtype]
        with _open(self.path, self._where(what)) as (handle, file_size):
            entry = self._entry(handle, file_size, what)
            if self.nbytes == 0:
                return np.zeros(self.shape, numpy_dtype)
            data = _map(handle, entry.data_offset, entry.nbytes)
        raw = np.frombuffer(data, np.uint8, count=entry.nbytes, offset=entry.data_offset % mmap.ALLOCATIONGRANULARITY)
        if bits % 8 == 0:
            return raw.view(numpy_dtype).reshape(self.shape)
        return unpack_bits(raw, bits, self.size, signed=self.dtype == "int4").reshape(self.shape)

    def _where(self, what: Optional[str]) -> str:
        return f"{self.path}: {what + ' at ' if what else ''}offset {self.offset:,}"

    def _entry(self, handle, file_size: int, what: Optional[str]) -> BlobEntry:
        where = self._where(what)
        entry = _read_entry(handle, file_size, self.offset, where)
        if entry.dtype != self.dtype:
            raise BlobError(f"{where}: the blob holds {entry.dtype}, the program says {self.dtype}")
        if entry.nbytes != self.nbytes:
            raise BlobError(
                f"{where}: the blob holds {entry.nbytes:,} bytes, the program's shape {list(self.shape)} of {self.dtype} needs {self.nbytes:,}"
            )
        return entry


@contextlib.contextmanager
def _open(path, where: str) -> Iterator[Tuple[object, int]]:
    try:
        handle = open(path, "rb")
    except FileNotFoundError as error:
        raise BlobError(f"{where}: the weight file does not exist", "missing") from error
    except OSError as error:
        raise BlobError(f"{where}: cannot read the weight file ({error.strerror})") from error
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size


def _read_entry(handle, file_size: int, offset: int, where: str) -> BlobEntry:
    if file_size < HEADER.size:
        raise BlobError(f"{where}: truncated weight file: {file_size:,} bytes, shorter than its {HEADER.size}-byte header", "truncated")
    handle.seek(0)
    _, version = HEADER.unpack(handle.read(HEADER.size))
    if version != VERSION:
        raise BlobError(f"{where}: not a weight blob file of version {VERSION} (its header says version {version})")
    if offset < HEADER.size or offset % ALIGNMENT:
        raise BlobError(f"{where}: not a blob offset (blobs start at multiples of {ALIGNMENT} after the {HEADER.size}-byte header)")
    if offset + METADATA.size > file_size:
        raise BlobError(f"{where}: offset out of range: the weight file has {file_size:,} bytes", "truncated")
    handle.seek(offset)
    sentinel, code, nbytes, data_offset, padding = METADATA.unpack(handle.read(METADATA.size))
    if sentinel != SENTINEL:
        raise BlobError(f"{where}: no blob there (wrong sentinel 0x{sentinel:08X}; a corrupted file or a wrong offset)")
    if code not in _NAME_OF_CODE:
        raise BlobError(f"{where}: unknown blob data type {code}")
    if data_offset != offset + METADATA.size:
        raise BlobError(f"{where}: corrupted blob metadata: data at {data_offset:,}, expected {offset + METADATA.size:,}")
    if data_offset + nbytes > file_size:
        raise BlobError(
            f"{where}: truncated weight file: the blob needs bytes up to {data_offset + nbytes:,}, the file has {file_size:,}", "truncated"
        )
    return BlobEntry(offset, _NAME_OF_CODE[code], data_offset, nbytes, padding)


def _map(handle, start: int, length: int) -> mmap.mmap:
    """A read-only mapping of [start, start + length) (from the page boundary below `start`)."""
    base = start - start % mmap.ALLOCATIONGRANULARITY
    return mmap.mmap(handle.fileno(), start + length - base, access=mmap.ACCESS_READ, offset=base)


_CHUNK = 1 << 20  # elements per step of the bit-serial path (a multiple of 8, so chunks end on bytes)


def unpack_bits(packed: np.ndarray, bits: int, count: int, signed: bool = False) -> np.ndarray:
    """`count` elements of `bits` bits each from a packed uint8 array (least significant bit
    first); two's complement when `signed` (int8 out), else uint8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    mask = (1 << bits) - 1
    if 8 % bits == 0:  # 1, 2, 4, 8 bits: no element straddles a byte
        per_byte = 8 // bits
        used = packed[: -(-count // per_byte)]
        values = np.empty(used.size * per_byte, np.uint8)
        for lane in range(per_byte):
            values[lane::per_byte] = (used >> np.uint8(lane * bits)) & np.uint8(mask)
        values = values[:count]
    else:  # 3 and 6 bits: through a bit stream, a chunk at a time
        values = np.empty(count, np.uint8)
        weights = (1 << np.arange(bits)).astype(np.uint8)
        for start in range(0, count, _CHUNK):
            stop = min(count, start + _CHUNK)
            chunk = packed[start * bits // 8 : -(-stop * bits // 8)]
            stream = np.unpackbits(chunk, bitorder="little")[: (stop - start) * bits].reshape(-1, bits)
            values[start:stop] = (stream * weights).sum(axis=1, dtype=np.uint8)
    if not signed:
        return values.astype(np.uint8, copy=False)
    sign = np.uint8(1 << (bits - 1))  # sign extension: (v xor sign) - sign, in 8-bit two's complement
    return ((values ^ sign) - sign).view(np.int8)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `unpack_bits`: integers (their low `bits` bits) packed into uint8."""
    flat = np.asarray(values).reshape(-1)
    count = flat.size
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per_byte = 8 // bits
        padded = np.zeros(-(-count // per_byte) * per_byte, np.uint8)
        padded[:count] = flat.astype(np.uint8) & mask  # two's complement bits of signed values
        lanes = padded.reshape(-1, per_byte)
        packed = np.zeros(lanes.shape[0], np.uint8)
        for lane in range(per_byte):
            packed |= lanes[:, lane] << np.uint8(lane * bits)
        return packed
    packed = np.empty(-(-count * bits // 8), np.uint8)
    shifts = np.arange(bits).astype(np.uint8)
    for start in range(0, count, _CHUNK):
        stop = min(count, start + _CHUNK)
        chunk = flat[start:stop].astype(np.uint8) & mask
        stream = ((chunk[:, None] >> shifts) & 1).reshape(-1)
        packed[start * bits // 8 : -(-stop * bits // 8)] = np.packbits(stream, bitorder="little")
    return packed


class BlobWriter:
    """Appends blobs to a new weight file, as coremltools' writer does (same bytes for the same
    blobs in the same order). `write(array, dtype)` returns the blob's offset; `close()` (or the
    `with` block's end) finishes the file. Write errors are `OutputError`s naming the file."""

    def __init__(self, path):
        self.path = Path(path)
        self._count = 0
        self._end = HEADER.size
        try:
            self._handle = open(self.path, "wb")
            self._handle.write(HEADER.pack(0, VERSION))
        except OSError as error:
            raise OutputError(self.path, error.strerror or str(error)) from error

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, array, dtype: Optional[str] = None) -> int:
        """Append `array` (flattened, C order) as `dtype` (its own for whole-byte numpy types;
        name sub-byte types: "uint4", "int4", ...); return the offset of its metadata."""
        array = np.asarray(array)
        dtype = dtype_name(array.dtype) if dtype is None else dtype_name(dtype)
        code, bits, numpy_dtype = DTYPES[dtype]
        if bits % 8 == 0:
            data = np.ascontiguousarray(array.reshape(-1), dtype=numpy_dtype).view(np.uint8)
            padding = 0
        else:
            data = pack_bits(array, bits)
            padding = (-array.size * bits) % 8
        offset = -(-self._end // ALIGNMENT) * ALIGNMENT
        try:
            if offset > self._end:
                self._handle.write(bytes(offset - self._end))
            self._handle.write(METADATA.pack(SENTINEL, code, data.nbytes, offset + METADATA.size, padding))
            self._handle.write(memoryview(data))
            self._count += 1
        except OSError as error:
            raise OutputError(self.path, error.strerror or str(error)) from error
        self._end = offset + METADATA.size + data.nbytes
        return offset

    def flush(self) -> None:
        """Make what was written readable through the file (header count aside)."""
        try:
            self._handle.flush()
        except OSError as error:
            raise OutputError(self.path, error.strerror or str(error)) from error

    def close(self) -> None:
        if self._handle.closed:
            return
        try:
            self._handle.seek(0)
            self._handle.write(HEADER.pack(self._count, VERSION))
            self._handle.close()
        except OSError as error:
            raise OutputError(self.path, error.strerror or str(error)) from error


class BlobFile:
    """The entries of a weight blob file, in file order (for inspection and checks)."""

    def __init__(self, path):
        self.path = Path(path)

    def entries(self) -> List[BlobEntry]:
        found = []
        with _open(self.path, str(self.path)) as (handle, file_size):
            handle.seek(0)
            if file_size < HEADER.size:
                raise BlobError(f"{self.path}: truncated weight file: {file_size:,} bytes, shorter than its header", "truncated")
            count, _ = HEADER.unpack(handle.read(HEADER.size))
            offset = HEADER.size
            for _ in range(count):
                entry = _read_entry(handle, file_size, offset, f"{self.path}: offset {offset:,}")
                found.append(entry)
                offset = -(-(entry.data_offset + entry.nbytes) // ALIGNMENT) * ALIGNMENT
        return found


class ScratchSpace:
    """A private directory for what a streaming run would otherwise hold in memory: arrays (in a
    weight blob file of its own, read back as `BlobRef`s) and other objects (pickled, read back
    with `Kept.restore()`). Removed by `close()`, or when the object it is attached to goes."""

    def __init__(self, parent=None):
        self._parent = parent  # the directory is made when something is first kept
        self._directory: Optional[Path] = None
        self._blobs: Optional[BlobWriter] = None
        self._objects = None
        self._finalizer = None

    @property
    def directory(self) -> Path:
        if self._directory is None:
            try:
                self._directory = Path(tempfile.mkdtemp(prefix="milcompress-scratch-", dir=self._parent))
            except OSError as error:
                raise OutputError(self._parent or tempfile.gettempdir(), error.strerror or str(error)) from error
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._directory), True)
        return self._directory

    def keep_array(self, values: np.ndarray, dtype: Optional[str] = None) -> BlobRef:
        """`values` written to the scratch blob file (as `dtype`, a MIL dtype name, or its own)."""
        if self._blobs is None:
            self._blobs = BlobWriter(self.directory / "weight.bin")
        values = np.asarray(values)
        dtype = dtype_name(values.dtype) if dtype is None else dtype
        offset = self._blobs.write(values, dtype)
        self._blobs.flush()
        return BlobRef(self._blobs.path, offset, dtype, values.shape)

    def keep_object(self, value) -> "Kept":
        """`value` pickled to the scratch directory; `restore()` reads it back."""
        if self._objects is None:
            try:
                self._objects = open(self.directory / "objects.pickle", "wb")
            except OSError as error:
                raise OutputError(self.directory, error.strerror or str(error)) from error
        start = self._objects.tell()
        try:
            pickle.dump(value, self._objects, protocol=pickle.HIGHEST_PROTOCOL)
            self._objects.flush()
        except OSError as error:
            raise OutputError(self._objects.name, error.strerror or str(error)) from error
        return Kept(self._objects.name, start, self._objects.tell() - start)

    def close(self) -> None:
        for stream in (self._blobs, self._objects):
            if stream is not None:
                stream.close()
        if self._finalizer is not None:
            self._finalizer()


@dataclass(frozen=True)
class Kept:
    """An object a `ScratchSpace` holds on disk."""

    path: str
    offset: int
    nbytes: int

    def restore(self):
        with open(self.path, "rb") as stream:
            stream.seek(self.offset)
            return pickle.loads(stream.read(self.nbytes))


def restored(value):
    """`value` itself, or what it stands for if a `ScratchSpace` kept it (`Kept`)."""
    return value.restore() if isinstance(value, Kept) else value


_SCRATCH_ATTRIBUTE = "_milcompress_scratch"


def attach_scratch(owner, scratch: ScratchSpace) -> None:
    """Give `owner` (a program read on demand) a scratch space that lives as long as it does."""
    setattr(owner, _SCRATCH_ATTRIBUTE, scratch)


def scratch_of(owner) -> Optional[ScratchSpace]:
    """The scratch space of `owner`, or None: it is not streamed, and keeps everything in memory."""
    return getattr(owner, _SCRATCH_ATTRIBUTE, None)
