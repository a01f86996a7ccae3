"""milcompress's graph passes, registered in coremltools' pass registry on import.

Base passes (each takes a `config` option): `milcompress::compress_weights` (any config),
`milcompress::prune_weights`, `milcompress::palettize_weights`,
`milcompress::linear_quantize_weights`, `milcompress::joint_compress_weights`; and
`milcompress::decompress_weights`; `milcompress::compress_to_size` (one form per weight, chosen
to meet a size; see size.py); `milcompress::quantize_activations` (int8 activations, calibrated:
see activations.py). Preset passes (`milcompress::palettize_weights_4bit`, ...)
come with a default config; see `catalog.py` and `pipelines.py`. This package is the only code that walks
programs.
"""

from __future__ import annotations

from typing import Dict, Type

from milcompress._coremltools import PASS_REGISTRY, register_pass
from milcompress.config import (
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
)
from milcompress.passes.activations import ActivationReport, QuantizeActivations, activation_reports_of, quantize_program_activations
from milcompress.passes.compress import CompressWeights, compress_program
from milcompress.passes.decompress import DecompressWeights, decompress_program
from milcompress.catalog import PRESETS
from milcompress.passes.pipelines import register_with_coremltools
from milcompress.passes.report import ConstRecord, Report, reports_of
from milcompress.passes.size import CompressToSize, SizeReport, compress_program_to_size


class PruneWeights(CompressWeights):
    """milcompress::prune_weights: magnitude or threshold pruning to sparse storage."""

    PASS_ID = "milcompress::prune_weights"
    ACCEPTS = (MagnitudePruneConfig, ThresholdPruneConfig)


class PalettizeWeights(CompressWeights):
    """milcompress::palettize_weights: look-up tables (k-means, uniform, unique, custom)."""

    PASS_ID = "milcompress::palettize_weights"
    ACCEPTS = (PalettizeConfig,)


class LinearQuantizeWeights(CompressWeights):
    """milcompress::linear_quantize_weights: int8/uint8/int4/uint4 with scales."""

    PASS_ID = "milcompress::linear_quantize_weights"
    ACCEPTS = (LinearQuantizeConfig,)


class JointCompressWeights(CompressWeights):
    """milcompress::joint_compress_weights: prune, then palettize or quantize the non-zeros."""

    PASS_ID = "milcompress::joint_compress_weights"
    ACCEPTS = (JointConfig,)


BASE_PASSES: Dict[str, Type] = {
    cls.PASS_ID: cls
    for cls in (CompressWeights, PruneWeights, PalettizeWeights, LinearQuantizeWeights, JointCompressWeights, DecompressWeights, CompressToSize, QuantizeActivations)
}


def _preset(pass_id: str, base_id: str, config, doc: str) -> Type:
    base = BASE_PASSES[base_id]
    name = "".join(part.title() for part in pass_id.split("::")[1].split("_"))
    return type(name, (base,), {"PASS_ID": pass_id, "DEFAULT": config, "__doc__": f"{pass_id}: {doc}."})


PRESET_PASSES: Dict[str, Type] = {pid: _preset(pid, base, config, doc) for pid, (base, config, doc) in PRESETS.items()}
ALL_PASSES: Dict[str, Type] = {**BASE_PASSES, **PRESET_PASSES}


def _register() -> None:
    for pass_id, cls in ALL_PASSES.items():
        if pass_id not in PASS_REGISTRY:
            register_pass(namespace="milcompress", name=pass_id.split("::")[1])(cls)
    register_with_coremltools()


_register()

__all__ = [
    "ALL_PASSES",
    "ActivationReport",
    "QuantizeActivations",
    "activation_reports_of",
    "quantize_program_activations",
    "CompressToSize",
    "CompressWeights",
    "ConstRecord",
    "DecompressWeights",
    "JointCompressWeights",
    "LinearQuantizeWeights",
    "PalettizeWeights",
    "PruneWeights",
    "Report",
    "SizeReport",
    "compress_program_to_size",
    "compress_program",
    "decompress_program",
    "reports_of",
]
