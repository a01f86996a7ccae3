"""The floor benchmark: its least-work kernels, and one small run of it end to end."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import floor
from milcompress.ops.packing import packed_size, unpack_bits


@given(nbits=st.sampled_from([1, 2, 3, 4, 6, 8]), groups=st.integers(1, 4), seed=st.integers(0, 999))
@settings(max_examples=25)
def test_floor_palette_packs_one_index_per_value_from_a_monotone_table(nbits, groups, seed):
    weight = (np.random.default_rng(seed).standard_normal((16 * groups, 5, 3)) * 0.05).astype(np.float16)
    for group_size in (None, 16):
        packed = floor.floor_palette(weight, nbits, group_size)
        assert packed.dtype == np.uint8 and packed.size == packed_size(weight.size, nbits)
        indices = unpack_bits(packed, nbits, weight.size).reshape(weight.shape[0], -1)
        assert indices.max() < 1 << nbits
        # Within a table, a code counted later never gets a lower entry.
        codes = weight.reshape(weight.shape[0], -1).view(np.uint16)
        rows = indices.reshape(-1, 16 * 15) if group_size else indices.reshape(1, -1)
        keys = codes.reshape(rows.shape)
        for row, key in zip(rows, keys):
            order = np.argsort(key, kind="stable")
            assert (np.diff(row[order].astype(int)) >= 0).all()


@pytest.mark.parametrize("nbits, block", [(8, None), (4, 32)])
def test_floor_quantize_rounds_within_half_a_step(nbits, block):
    weight = (np.random.default_rng(0).standard_normal((8, 64, 3)) * 0.05).astype(np.float16)
    data, scale = floor.floor_quantize(weight, nbits, block)
    limit = (1 << (nbits - 1)) - 1
    if nbits == 4:
        data = unpack_bits(data, 4, weight.size).astype(np.int8)
        data = np.where(data > 7, data - 16, data)
    blocks = 1 if block is None else 64 // block
    q = data.reshape(8, blocks, -1).astype(np.float64)
    assert np.abs(q).max() <= limit
    s = scale.astype(np.float64).reshape(8, blocks, 1)
    error = np.abs(q * s - weight.astype(np.float64).reshape(8, blocks, -1))
    assert (error <= s * 0.5 * (1 + 1e-3)).all()


def test_a_small_run_reports_every_config_against_the_floor_and_coremltools(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    weights = {"conv": (rng.standard_normal((32, 64, 3, 3)) * 0.05).astype(np.float16),
               "linear": (rng.standard_t(3, (48, 96)) * 0.02).astype(np.float16),
               "odd": (rng.standard_normal((10, 33)) * 0.05).astype(np.float16)}  # no group of 16, no block of 32
    monkeypatch.setattr(floor, "model_weights", lambda name, quick: weights)
    labels = ["palettize 2-bit per tensor", "palettize 4-bit groups of 16", "palettize 4-bit vectors of 2", "int4 per block 32"]
    assert floor.main(["--models", "resnet50_normal", "--configs", *labels, "--size-models", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "floor_partial_resnet50_normal.json").read_text())
    (model,) = result["models"]
    assert model["weights"] == 3 and result["compress_to_size"] == []
    configs = model["configs"]
    assert list(configs) == labels
    assert configs["palettize 2-bit per tensor"]["milcompress_weights"] == 3
    assert configs["palettize 4-bit groups of 16"]["milcompress_weights"] == 2
    assert configs["int4 per block 32"]["milcompress_weights"] == 2
    for label in labels:
        r = configs[label]
        assert r["milcompress_seconds"] > 0 and r["coremltools_seconds"] > 0
        assert r["speedup_over_coremltools"] == pytest.approx(r["coremltools_seconds"] / r["milcompress_seconds"])
        assert r["milcompress_snr_db"] > 5 and r["coremltools_snr_db"] > 5
        if label.endswith("vectors of 2"):
            assert r["floor_seconds"] is None and r["ours_over_floor"] is None
        else:
            assert r["ours_over_floor"] == pytest.approx(r["milcompress_seconds"] / r["floor_seconds"])
    table = (tmp_path / "floor_partial_resnet50_normal.md").read_text()
    assert "## resnet50_normal: 3 weights" in table and "ours/floor" in table
    assert all(label in table for label in labels)
