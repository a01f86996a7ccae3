"""The plain-data catalog the command line lists without coremltools: it must say what the passes
and pipelines really are."""

import numpy as np
import pytest

from milcompress.catalog import BASE_PASSES, LOSSLESS, PIPELINES, PRESETS, SYNTHETIC_SHAPE, closest, expected_bits_per_weight
from milcompress.ops import compress


def test_every_registered_pass_is_in_the_catalog_with_its_docstring():
    from milcompress.passes import ALL_PASSES

    catalog = {**BASE_PASSES, **{pass_id: doc for pass_id, (_, _, doc) in PRESETS.items()}}
    assert list(catalog) == list(ALL_PASSES)
    for pass_id, cls in ALL_PASSES.items():
        first_line = cls.__doc__.strip().splitlines()[0]
        assert first_line == f"{pass_id}: {catalog[pass_id]}."


@pytest.mark.parametrize("name", list(PIPELINES))
def test_expected_bits_per_weight_is_what_the_pipeline_stores(name):
    """Measured with uniform tables for speed: the same size as the k-means tables really built."""
    expected = expected_bits_per_weight(name)
    (pass_id,) = PIPELINES[name][0]
    if name in LOSSLESS or pass_id not in PRESETS:
        assert expected is None
        return
    weight = np.random.default_rng(0).standard_normal(SYNTHETIC_SHAPE).astype(np.float16)
    built = compress(weight, PRESETS[pass_id][1])
    assert expected == 8.0 * built.nbytes / weight.size


def test_expected_bits_per_weight_by_hand():
    assert expected_bits_per_weight("PALETTIZE_4BIT") == 4 + 16 * 16 / 65536  # indices + one 16-entry fp16 table
    assert expected_bits_per_weight("INT4_BLOCK32") == 4 + 16 / 32  # + one fp16 scale per 32 values
    assert expected_bits_per_weight("PRUNE_75") == 1 + 16 / 4  # mask bit + a quarter of the values kept


def test_closest_suggests_only_near_names():
    assert closest("palettize_4bits", PIPELINES) == " (did you mean PALETTIZE_4BIT?)"
    assert closest("INT4_BLOK32", PIPELINES) == " (did you mean INT4_BLOCK32?)"
    assert closest("milcompress::prune_weight_50", PRESETS) == " (did you mean milcompress::prune_weights_50?)"
    assert closest("something else", PIPELINES) == ""
