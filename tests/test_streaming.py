"""Streaming compression of saved packages: weights read on demand from the package, what the
passes make kept on disk, and output byte-identical to the in-memory path."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import milcompress
from milcompress import _coremltools as ct_private
from milcompress import packages
from milcompress.api import compress_to_size, decompress_weights, run_passes
from milcompress.config import LinearQuantizeConfig
from milcompress.errors import InputError
from milcompress.packages import load_model, save_model
from milcompress.passes.compress import compress_program
from milcompress.passes.graph import walk_ops
from milcompress.pipelines import compression_passes
from milcompress.reference import Interpreter
from milcompress.storage import scratch_of

from benchmarks.models.llama import LlamaConfig, causal_mask
from benchmarks.models.llama_package import write_llama_package

TINY = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2)
INPUTS = {"input_ids": (np.arange(8, dtype=np.int32) * 7 % 256)[None], "causal_mask": causal_mask(8).astype(np.float16)}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return write_llama_package(TINY, tmp_path_factory.mktemp("llama") / "tiny.mlpackage")


@pytest.fixture
def in_memory(monkeypatch):
    """Load saved packages as coremltools does: every weight read at once, nothing streamed."""
    monkeypatch.setattr(packages, "reads_weights_on_demand", lambda model: False)


def _files(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _weights(prog) -> list:
    return [op for op, _ in walk_ops(prog) if op.op_type == "const" and np.size(op.outputs[0].val) >= 10]


def test_a_saved_package_loads_with_every_weight_left_on_disk(package):
    model, prog = load_model(package)
    assert scratch_of(prog) is not None
    weights = _weights(prog)  # every const stored in the weight file
    named = [op for op in weights if op.name.endswith("_weight")]
    assert len(named) == 1 + TINY.num_layers * 9 + 1  # embedding, per layer 7 matrices and 2 norms, the final norm
    assert all(ct_private.blob_ref_of(op.outputs[0]) is not None for op in weights)
    eager = {op.name: op.outputs[0].val for op in _weights(ct_private.program_from_mlmodel(model))}
    for op in weights:
        value = op.outputs[0].val
        assert value.dtype == eager[op.name].dtype and np.array_equal(value, eager[op.name]) and not value.flags.writeable


STREAMED = ["INT8", "INT4_BLOCK32", "PALETTIZE_4BIT", "PALETTIZE_4BIT_GROUPED", "PRUNE_75_PALETTIZE_4BIT", "PRUNE_2_4"]


def _compress_both_ways(package, tmp_path, compress, monkeypatch):
    outputs = {}
    for mode in ("streamed", "in memory"):
        if mode == "in memory":
            monkeypatch.setattr(packages, "reads_weights_on_demand", lambda model: False)
        model, _ = load_model(package)
        result = compress(model)
        if mode == "streamed":  # no weight is held: every emitted matrix reads its value from disk (corrected biases stay)
            held = [op.name for op in _weights(ct_private.attached_program(result)) if ct_private.blob_ref_of(op.outputs[0]) is None]
            assert [name for name in held if not name.endswith("_corrected")] == []
        save_model(result, tmp_path / f"{mode}.mlpackage")
        outputs[mode] = _files(tmp_path / f"{mode}.mlpackage")
    return outputs


@pytest.mark.parametrize("pipeline", STREAMED)
def test_streaming_writes_the_bytes_of_the_in_memory_path(package, tmp_path, monkeypatch, pipeline):
    outputs = _compress_both_ways(package, tmp_path, lambda m: run_passes(m, compression_passes(pipeline))[0], monkeypatch)
    assert outputs["streamed"] == outputs["in memory"]


def test_compress_to_size_and_decompress_stream_to_the_same_bytes(package, tmp_path, monkeypatch):
    outputs = _compress_both_ways(package, tmp_path, lambda m: compress_to_size(m, 4.0), monkeypatch)
    assert outputs["streamed"] == outputs["in memory"]
    compressed = tmp_path / "in memory.mlpackage"
    monkeypatch.undo()
    streamed = decompress_weights(load_model(compressed)[0])
    monkeypatch.setattr(packages, "reads_weights_on_demand", lambda model: False)
    held = decompress_weights(load_model(compressed)[0])
    save_model(streamed, tmp_path / "a.mlpackage")
    save_model(held, tmp_path / "b.mlpackage")
    assert _files(tmp_path / "a.mlpackage") == _files(tmp_path / "b.mlpackage")


def test_the_executor_reads_weights_on_demand_and_gets_the_same_outputs(package, tmp_path):
    model, prog = load_model(package)
    small = run_passes(model, compression_passes("PALETTIZE_4BIT"))[0]
    save_model(small, tmp_path / "small.mlpackage")
    for path in (package, tmp_path / "small.mlpackage"):
        streamed = Interpreter(load_program_on_demand(path))
        assert not streamed._static._hold_all
        held = Interpreter(ct_private.program_from_mlmodel(load_model(path)[0]))
        assert held._static._hold_all
        np.testing.assert_array_equal(streamed.run(INPUTS)["logits"], held.run(INPUTS)["logits"])
    report = milcompress.verify(package, tmp_path / "small.mlpackage", INPUTS)
    assert 0.5 < report.outputs[0].cosine < 1


def load_program_on_demand(path):
    return load_model(path)[1]


def test_a_weight_file_damaged_after_loading_names_the_weight(package, tmp_path):
    copy = tmp_path / "copy.mlpackage"
    shutil.copytree(package, copy)
    _, prog = load_model(copy)
    weight_file = copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    os.truncate(weight_file, weight_file.stat().st_size // 2)
    with pytest.raises(InputError, match=r"weight\.bin: const 'model_\w+' at offset [\d,]+: (truncated weight file|offset out of range)"):
        compress_program(prog, LinearQuantizeConfig())


def test_a_weight_file_damaged_before_loading_is_refused_at_once(package, tmp_path):
    copy = tmp_path / "copy.mlpackage"
    shutil.copytree(package, copy)
    weight_file = copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weight_file.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first blob's sentinel
    weight_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"copy\.mlpackage: corrupted package: Data/com\.apple\.CoreML/weights/weight\.bin: const '\w+' at offset 64: no blob there"):
        load_model(copy)


@pytest.mark.parametrize("pipeline", ["PRUNE_75", "PRUNE_75_PALETTIZE_4BIT", "INT4_BLOCK32"])
def test_a_compressed_package_loads_on_demand_with_the_values_coremltools_reads(package, tmp_path, pipeline):
    """Sparse masks are counted by coremltools while it builds the op reading them: the loader
    must see the real values then, not placeholders."""
    save_model(run_passes(load_model(package)[0], compression_passes(pipeline))[0], tmp_path / "small.mlpackage")
    model, prog = load_model(tmp_path / "small.mlpackage")
    eager = [op.outputs[0].val for op in _weights(ct_private.program_from_mlmodel(model))]  # in program order (the
    streamed = _weights(prog)  # names of consts an iOS16-form op holds inline come from a counter, so differ between loads)
    assert len(streamed) == len(eager)
    assert any(ct_private.blob_ref_of(op.outputs[0]) is not None for op in streamed)
    for op, expected in zip(streamed, eager):
        value = op.outputs[0].val
        assert value.dtype == expected.dtype and np.array_equal(value, expected), op.name
