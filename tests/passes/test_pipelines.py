import pytest
from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

import milcompress
from milcompress._coremltools import PASS_REGISTRY
from milcompress.errors import ConfigError
from milcompress.passes.pipelines import (
    INSERT_AFTER,
    ORDER,
    PIPELINES,
    PRESETS,
    compression_passes,
    convert_passes,
    family,
    order_passes,
)


def test_every_pipeline_is_registered_and_fresh_each_time():
    available = PassPipeline.list_available_pipelines()
    for name in PIPELINES:
        assert f"milcompress_{name.lower()}" in available
        first, second = getattr(milcompress.pipelines, name), getattr(milcompress.pipelines, name)
        assert first is not second and first.passes == second.passes
        assert PassPipeline.get_pipeline(f"milcompress_{name.lower()}").passes == first.passes
        for pass_id in compression_passes(name):
            assert pass_id in PASS_REGISTRY


def test_presets_carry_their_config():
    for pass_id, (_, config, _) in PRESETS.items():
        assert PASS_REGISTRY[pass_id].config.global_config == config


def test_our_passes_follow_coremltools_fusions_casts_and_deduplication():
    passes = convert_passes("PALETTIZE_4BIT")
    ours = passes.index("milcompress::palettize_weights_4bit")
    for earlier in INSERT_AFTER:
        assert max(i for i, p in enumerate(passes) if p == earlier) < ours
    assert "common::fuse_conv_batchnorm" in passes[:ours]
    assert passes[:ours] + passes[ours + 1 :] == list(PassPipeline.DEFAULT.passes)


@pytest.mark.parametrize("first, later, _why", ORDER)
def test_each_ordering_requirement_is_enforced(first, later, _why):
    later_id = "milcompress::palettize_weights" if later == "*" else later
    assert order_passes([later_id, first]) == [first, later_id]
    assert order_passes([first, later_id]) == [first, later_id]


def test_ordering_keeps_unconstrained_passes_in_place():
    ids = ["milcompress::palettize_weights_4bit", "milcompress::linear_quantize_weights_int8", "milcompress::prune_weights_50"]
    assert order_passes(ids) == ["milcompress::prune_weights_50", "milcompress::palettize_weights_4bit", "milcompress::linear_quantize_weights_int8"]
    assert family("milcompress::prune_weights_50") == "milcompress::prune_weights"


def test_unknown_pipeline_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown pipeline 'PALETTIZE_5BIT' \(did you mean PALETTIZE_\dBIT\?\); known pipelines: DEFAULT_PALETTIZATION, DEFAULT_PRUNING"):
        compression_passes("PALETTIZE_5BIT")
    with pytest.raises(ConfigError, match=r"unknown pipeline 'int4_blok32' \(did you mean INT4_BLOCK32\?\)"):
        compression_passes("int4_blok32")
    with pytest.raises(ConfigError, match=r"unknown pipeline 'zzz'; known"):  # nothing near: no hint
        compression_passes("zzz")
    assert compression_passes("milcompress_int8") == ["milcompress::linear_quantize_weights_int8"]
