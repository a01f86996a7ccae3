import warnings
from pathlib import Path

import numpy as np
import pytest

import coremltools as ct
from coremltools.optimize import coreml as cto
from milcompress._coremltools import IOS16, IOS18, program_from_mlmodel
from milcompress.config import JointConfig, LinearQuantizeConfig, MagnitudePruneConfig, PalettizeConfig
from milcompress.lowering import read_back
from milcompress.lowering.table import markdown
from milcompress.ops import compress
from tests.mil_helpers import linear_program, replace_const

W = np.random.default_rng(3).normal(0, 0.1, (64, 96)).astype(np.float16)


def test_docs_table_is_what_lowering_does():
    doc = (Path(__file__).parents[2] / "docs" / "forms.md").read_text()
    assert doc.endswith(markdown())


def _to_model(prog, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset, pass_pipeline=ct.PassPipeline.EMPTY)


def _weight_of(prog, consumer="y"):
    for op in prog.functions["main"].operations:
        if op.op_type == "linear" and op.name == consumer:
            return read_back(op.weight)
    raise KeyError(consumer)


@pytest.mark.parametrize(
    "config, opset",
    [
        (PalettizeConfig(nbits=4), IOS16),
        (LinearQuantizeConfig(mode="linear", dtype="uint8"), IOS16),
        (MagnitudePruneConfig(target_sparsity=0.5), IOS16),
        (PalettizeConfig(nbits=3, granularity="per_grouped_channel", group_size=8), IOS18),
        (PalettizeConfig(nbits=2, cluster_dim=2, enable_per_channel_scale=True), IOS18),
        (LinearQuantizeConfig(dtype="uint4", granularity="per_block", block_size=32), IOS18),
        (JointConfig(MagnitudePruneConfig(n_m_ratio=(3, 4)), PalettizeConfig(nbits=2)), IOS18),
        (JointConfig(MagnitudePruneConfig(target_sparsity=0.6), LinearQuantizeConfig(dtype="int4")), IOS18),
    ],
)
def test_saved_and_loaded_packages_hold_the_same_values(config, opset, tmp_path):
    params = compress(W, config)
    prog = linear_program(W, opset)
    replace_const(prog, "w", params)
    path = tmp_path / "model.mlpackage"
    _to_model(prog, opset).save(str(path))
    loaded = program_from_mlmodel(ct.models.MLModel(str(path), skip_model_load=True))
    back = _weight_of(loaded)
    assert type(back.form) is type(params)
    np.testing.assert_array_equal(back.dense, params.decompress())


COREMLTOOLS_CONFIGS = [
    (cto.palettize_weights, cto.OpPalettizerConfig(nbits=4, weight_threshold=100), IOS16),
    (cto.palettize_weights, cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=100), IOS18),
    (cto.palettize_weights, cto.OpPalettizerConfig(nbits=2, cluster_dim=2, weight_threshold=100), IOS18),
    (cto.palettize_weights, cto.OpPalettizerConfig(nbits=4, enable_per_channel_scale=True, weight_threshold=100), IOS18),
    (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(weight_threshold=100), IOS16),
    (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(mode="linear", dtype="uint8", weight_threshold=100), IOS16),
    (cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16, weight_threshold=100), IOS18),
    (cto.prune_weights, cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=100), IOS16),
    (cto.prune_weights, cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=100), IOS18),
]


@pytest.mark.parametrize("compress_model, op_config, opset", COREMLTOOLS_CONFIGS)
def test_reading_back_coremltools_output_matches_its_decompress_weights(compress_model, op_config, opset):
    dense = _to_model(linear_program(W, opset), opset)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        compressed = compress_model(dense, cto.OptimizationConfig(global_config=op_config))
        reference = cto.decompress_weights(compressed)
    ours = _weight_of(program_from_mlmodel(compressed))
    assert ours.form is not None and ours.is_compressed
    np.testing.assert_array_equal(ours.dense, _weight_of(program_from_mlmodel(reference)).dense)


def test_joint_chains_from_coremltools_read_back():
    opset = IOS18
    dense = _to_model(linear_program(W, opset), opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = cto.prune_weights(dense, cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=100)))
        from coremltools.optimize.coreml._quantization_passes import palettize_weights as PalettizePass
        from coremltools.models.utils import _apply_graph_pass

        joint_pass = PalettizePass(config=cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=100)))
        joint_pass.joint_compression = True
        joint = _apply_graph_pass(pruned, joint_pass)
        reference = cto.decompress_weights(joint)
    ours = _weight_of(program_from_mlmodel(joint))
    assert type(ours.form).__name__ == "SparseLutParams"
    np.testing.assert_array_equal(ours.dense, _weight_of(program_from_mlmodel(reference)).dense)
