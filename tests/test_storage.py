"""Our weight blob reader and writer against coremltools' own (libmilstoragepython), and what
they say about broken files."""

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress import _coremltools as ct_private
from milcompress.storage import DTYPES, BlobError, BlobFile, BlobRef, BlobWriter, pack_bits, unpack_bits

SUB_BYTE = ("uint1", "uint2", "uint3", "uint4", "uint6", "int4")


def _values(dtype: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, bits, numpy_dtype = DTYPES[dtype]
    if numpy_dtype.kind == "f":
        return rng.standard_normal(size).astype(numpy_dtype)
    if dtype == "int4":
        return rng.integers(-8, 8, size).astype(np.int8)
    info = np.iinfo(numpy_dtype)
    low, high = (0, 1 << bits) if bits < 8 else (max(info.min, -1000), min(info.max, 1000) + 1)
    return rng.integers(low, high, size).astype(numpy_dtype)


def _write_with_coremltools(path, items):
    writer = ct_private.blob_storage_writer(str(path))
    offsets = [ct_private.write_blob(writer, values, dtype) for dtype, values in items]
    del writer  # its destructor finishes the file
    return offsets


entries = st.lists(st.tuples(st.sampled_from(sorted(DTYPES)), st.integers(0, 200), st.integers(0, 2**16)), min_size=1, max_size=8)


@given(entries)
def test_writes_the_bytes_coremltools_writes_and_reads_back_both(tmp_path_factory, spec):
    directory = tmp_path_factory.mktemp("blobs")
    items = [(dtype, _values(dtype, max(size, 1), seed)) for dtype, size, seed in spec]
    theirs = _write_with_coremltools(directory / "theirs.bin", items)
    with BlobWriter(directory / "ours.bin") as writer:
        ours = [writer.write(values, dtype) for dtype, values in items]
    assert ours == theirs
    assert (directory / "ours.bin").read_bytes() == (directory / "theirs.bin").read_bytes()
    reader = ct_private.blob_storage_reader(str(directory / "theirs.bin"))
    for (dtype, values), offset in zip(items, ours):
        back = BlobRef(directory / "theirs.bin", offset, dtype, values.shape).load()
        assert back.dtype == values.dtype and np.array_equal(back, values)
        assert np.array_equal(ct_private.read_blob(reader, offset, dtype).reshape(-1).astype(values.dtype), values)
    assert [e.offset for e in BlobFile(directory / "ours.bin").entries()] == ours


@given(st.sampled_from(SUB_BYTE), st.integers(0, 3000), st.integers(0, 2**16))
def test_pack_and_unpack_bits_are_inverse(dtype, size, seed):
    values = _values(dtype, size, seed)
    bits = DTYPES[dtype][1]
    packed = pack_bits(values, bits)
    assert packed.size == -(-size * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, size, signed=dtype == "int4"), values)


def test_a_reference_pickles_and_loads_on_demand_read_only(tmp_path):
    values = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    with BlobWriter(tmp_path / "w.bin") as writer:
        writer.write(np.zeros(5, np.float32))
        offset = writer.write(values)
    ref = pickle.loads(pickle.dumps(BlobRef(tmp_path / "w.bin", offset, "fp16", (2, 3, 4))))
    loaded = ref.load()
    assert np.array_equal(loaded, values) and not loaded.flags.writeable
    assert ref.nbytes == 48 and ref.size == 24


def _one_blob(tmp_path, values=np.arange(100, dtype=np.float16)):
    path = tmp_path / "weight.bin"
    with BlobWriter(path) as writer:
        offset = writer.write(values)
    return path, offset


def test_a_truncated_file_names_the_file_weight_and_offset(tmp_path):
    path, offset = _one_blob(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BlobError, match=r"weight\.bin: w1 at offset 64: truncated weight file: .*needs bytes up to 328, the file has 318"):
        BlobRef(path, offset, "fp16", (100,)).load("w1")


def test_an_offset_out_of_range_or_between_blobs_is_refused(tmp_path):
    path, _ = _one_blob(tmp_path)
    with pytest.raises(BlobError, match="offset 4,096: offset out of range: the weight file has 328 bytes"):
        BlobRef(path, 4096, "fp16", (100,)).load()
    with pytest.raises(BlobError, match="not a blob offset"):
        BlobRef(path, 70, "fp16", (100,)).load()
    with pytest.raises(BlobError, match="wrong sentinel"):
        BlobRef(path, 192, "fp16", (100,)).load()


def test_a_wrong_header_dtype_or_size_is_refused(tmp_path):
    path, offset = _one_blob(tmp_path)
    with pytest.raises(BlobError, match="holds fp16, the program says fp32"):
        BlobRef(path, offset, "fp32", (50,)).load()
    with pytest.raises(BlobError, match=r"holds 200 bytes, the program's shape \[10, 11\] of fp16 needs 220"):
        BlobRef(path, offset, "fp16", (10, 11)).load()
    data = bytearray(path.read_bytes())
    data[4] = 1  # version 1: espresso's old format
    path.write_bytes(bytes(data))
    with pytest.raises(BlobError, match="version 1"):
        BlobRef(path, offset, "fp16", (100,)).load()
    with pytest.raises(BlobError, match="does not exist"):
        BlobRef(tmp_path / "missing.bin", offset, "fp16", (100,)).load()


def test_a_scratch_space_keeps_arrays_and_objects_and_is_removed_with_its_owner(tmp_path):
    import gc

    from milcompress.storage import ScratchSpace, attach_scratch, restored, scratch_of

    class Owner:
        pass

    owner = Owner()
    attach_scratch(owner, ScratchSpace(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing made until something is kept
    scratch = scratch_of(owner)
    ref = scratch.keep_array(np.arange(30, dtype=np.int8).reshape(5, 6))
    kept = scratch.keep_object({"form": np.ones(3)})
    assert np.array_equal(ref.load(), np.arange(30, dtype=np.int8).reshape(5, 6))
    assert np.array_equal(restored(kept)["form"], np.ones(3)) and restored(7) == 7
    assert len(list(tmp_path.iterdir())) == 1
    del owner, scratch
    gc.collect()
    assert list(tmp_path.iterdir()) == []
