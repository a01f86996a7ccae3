import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from milcompress.config import (
    CompressionConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
)
from milcompress.errors import ConfigError

palettize = st.builds(
    PalettizeConfig,
    nbits=st.sampled_from([1, 2, 3, 4, 6, 8]),
    granularity=st.sampled_from(["per_tensor", "per_grouped_channel"]),
    group_size=st.sampled_from([4, 8, 16, 32]),
    enable_per_channel_scale=st.booleans(),
    weight_threshold=st.integers(0, 10_000),
)
quantize = st.builds(
    LinearQuantizeConfig,
    mode=st.sampled_from(["linear", "linear_symmetric"]),
    dtype=st.sampled_from(["int8", "uint8", "int4", "uint4"]),
    granularity=st.sampled_from(["per_tensor", "per_channel", "per_block"]),
    block_size=st.one_of(st.integers(1, 64), st.tuples(st.integers(0, 4), st.integers(0, 64))),
)
prune = st.one_of(
    st.builds(MagnitudePruneConfig, target_sparsity=st.floats(0, 1)),
    st.builds(MagnitudePruneConfig, n_m_ratio=st.tuples(st.integers(0, 4), st.just(4))),
    st.builds(ThresholdPruneConfig, threshold=st.floats(0, 1), minimum_sparsity_percentile=st.floats(0, 1)),
)
algorithm = st.one_of(palettize, quantize, prune, st.builds(JointConfig, prune=prune, then=st.one_of(palettize.filter(lambda c: c.cluster_dim == 1), quantize)))
configs = st.builds(
    CompressionConfig,
    global_config=st.one_of(st.none(), algorithm),
    op_type_configs=st.dictionaries(st.sampled_from(["conv", "linear", "matmul", "gather"]), st.one_of(st.none(), algorithm), max_size=3),
    op_name_configs=st.dictionaries(st.text("abcdef_0123", min_size=1, max_size=8), st.one_of(st.none(), algorithm), max_size=3),
)


@given(configs)
def test_dict_and_yaml_round_trips(config):
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert CompressionConfig.from_yaml(config.to_yaml()) == config


def test_yaml_from_a_file_and_a_stream(tmp_path):
    text = "config_type: PalettizeConfig\nglobal_config:\n  nbits: 4\nop_type_configs:\n  linear: null\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    expected = CompressionConfig(PalettizeConfig(nbits=4), {"linear": None})
    assert CompressionConfig.from_yaml(str(path)) == expected
    assert CompressionConfig.from_yaml(io.StringIO(text)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("config_type: PalettizeConfig\nglobal_config:\n  nbit: 4\n", r"global_config\.nbit: unknown key; known keys are nbits, mode"),
        ("config_type: PalettizeConfig\nglobal_config:\n  nbits: '4'\n", r"global_config\.nbits: must be an integer, got '4'"),
        ("config_type: PalettizeConfig\nglobal_confg: {}\n", r"config\.global_confg: unknown key"),
        ("global_config:\n  nbits: 4\n", r"global_config\.config_type: is required"),
        ("config_type: Palettize\nglobal_config: {}\n", r"global_config\.config_type: unknown config type 'Palettize'"),
        ("config_type: JointConfig\nglobal_config:\n  prune: {config_type: MagnitudePruneConfig, target_sparsity: 0.5}\n", "needs both 'prune' and 'then'"),
        ("op_name_configs:\n  conv_1:\n    config_type: LinearQuantizeConfig\n    dtype: int3\n", r"op_name_configs\.conv_1\.dtype"),
        ("config_type: PalettizeConfig\nglobal_config:\n  nbits: 4\n  lut_function: f\n", "lut_function: cannot come from a file"),
        ("[1, 2]", "expected a mapping"),
        ("config_type: PalettizeConfig\nglobal_config: [\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        CompressionConfig.from_yaml(text)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        CompressionConfig.from_yaml(str(tmp_path / "missing.yaml"))


@given(
    field=st.sampled_from(["nbits", "group_size", "cluster_dim", "weight_threshold", "num_kmeans_workers"]),
    value=st.one_of(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not float(v).is_integer()), st.text(max_size=3), st.booleans()),
)
def test_coremltools_layout_rejects_what_coremltools_would_convert(field, value):
    """coremltools' own parser turns 4.5 into 4, "4" into 4 and true into 1: a file saying so is
    a mistake, named like ours."""
    entry = {"nbits": 4, field: value}
    with pytest.raises(ConfigError, match=f"global_config.{field}: must be an integer"):
        CompressionConfig.from_dict({"config_type": "OpPalettizerConfig", "global_config": entry})


@pytest.mark.parametrize(
    "type_name, entry, message",
    [
        ("OpPalettizerConfig", {"nbits": 4, "enable_per_channel_scale": "no"}, "enable_per_channel_scale: must be true or false, got 'no'"),
        ("OpMagnitudePrunerConfig", {"target_sparsity": "0.5"}, "target_sparsity: must be a number or null, got '0.5'"),
        ("OpMagnitudePrunerConfig", {"n_m_ratio": [2.5, 4]}, "n_m_ratio: must be a list of integers or null, got \\[2.5, 4\\]"),
        ("OpLinearQuantizerConfig", {"block_size": [1, 32.5]}, "block_size: must be an integer or a list of integers"),
        ("OpThresholdPrunerConfig", {"threshold": True}, "threshold: must be a number, got True"),
    ],
)
def test_coremltools_layout_checks_every_field_type(type_name, entry, message):
    with pytest.raises(ConfigError, match=f"op_type_configs.conv.{message}"):
        CompressionConfig.from_dict({"config_type": type_name, "op_type_configs": {"conv": entry}})


@given(nbits=st.sampled_from([1, 2, 3, 4, 6, 8]), group_size=st.integers(1, 64), threshold=st.integers(0, 10_000))
def test_coremltools_layout_values_of_the_right_types_mean_what_they_say(nbits, group_size, threshold):
    config = CompressionConfig.from_dict(
        {"config_type": "OpPalettizerConfig", "global_config": {"nbits": nbits, "granularity": "per_grouped_channel", "group_size": group_size,
                                                                "weight_threshold": threshold, "enable_per_channel_scale": False}}
    )
    assert config.global_config == PalettizeConfig(nbits=nbits, granularity="per_grouped_channel", group_size=group_size, weight_threshold=threshold)


def test_a_config_file_name_that_names_no_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="config: x: no such config file"):
        CompressionConfig.from_yaml("x")
    with pytest.raises(ConfigError, match=f"config: cannot read {tmp_path}/missing.yaml: No such file or directory"):
        CompressionConfig.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="config: expected a mapping, got list"):  # one line of YAML text still parses as YAML
        CompressionConfig.from_yaml("[1, 2]")
    single = tmp_path / "one-line"
    single.write_text("x")  # a file that exists is read, whatever it holds
    with pytest.raises(ConfigError, match="config: expected a mapping, got str"):
        CompressionConfig.from_yaml(str(single))
