"""Named pipelines: data, validated when built, with ordering requirements that are tested.

`PIPELINES` (in `catalog.py`, plain data) maps a name to the milcompress pass ids that compress
(or decompress) weights.
- `pipeline(name)` gives a fresh `ct.PassPipeline` for `ct.convert(..., pass_pipeline=...)`:
  coremltools' default passes with ours inserted after its fusions, fp16 cast and const
  deduplication, so we compress the weights the model will actually store (batch norm folded,
  tied weights shared, float16 when the model is float16). coremltools' own DEFAULT_PALETTIZATION
  runs its pass first, on float32 weights not yet fused.
- `compression_passes(name)` gives just our pass ids, for programs already converted (the runner).
Each pipeline is also registered under `milcompress_<name lower-case>` in coremltools' table, so
`ct.PassPipeline.get_pipeline(...)` and `list_available_pipelines()` know it. coremltools' named
pipelines carry no options, so a pipeline's config lives in its pass: each preset (`PRESETS`) is a
pass class with a default config, registered under its own id.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import networkx as nx

from milcompress._coremltools import default_pipeline_pass_ids, new_pass_pipeline, register_named_pipeline
from milcompress.catalog import PIPELINES, PRESETS, closest
from milcompress.errors import ConfigError

# Ordering requirements among our passes, as (earlier, later) families. Each is tested.
ORDER: List[Tuple[str, str, str]] = [
    # Decompressing first lets a pipeline recompress a compressed model in one go.
    ("milcompress::decompress_weights", "*", "compress what was decompressed, not the constexpr chains"),
    # Pruning before palettizing or quantizing: the later passes see the zeros (joint forms).
    ("milcompress::prune_weights", "milcompress::palettize_weights", "palettize what pruning left"),
    ("milcompress::prune_weights", "milcompress::linear_quantize_weights", "quantize what pruning left"),
]

# Where our passes go in coremltools' default pipeline: after the last of these.
INSERT_AFTER = ("common::add_fp16_cast", "common::add_int16_cast", "common::const_deduplication")


def family(pass_id: str) -> str:
    """The base pass a preset derives from (a base pass is its own family)."""
    return PRESETS[pass_id][0] if pass_id in PRESETS else pass_id


def order_passes(pass_ids: Sequence[str]) -> List[str]:
    """`pass_ids` sorted to satisfy ORDER, otherwise keeping the given order."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(pass_ids)))
    for i, a in enumerate(pass_ids):
        for j, b in enumerate(pass_ids):
            if i != j and any(family(a) == first and (later == "*" or family(b) == later) and family(b) != first for first, later, _ in ORDER):
                graph.add_edge(i, j)
    try:
        order = list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible as error:
        raise ConfigError(f"passes {list(pass_ids)} cannot be ordered: their requirements form a cycle") from error
    return [pass_ids[i] for i in order]


def names() -> List[str]:
    return list(PIPELINES)


def describe_pipelines() -> List[Tuple[str, str]]:
    return [(name, doc) for name, (_, doc) in PIPELINES.items()]


def compression_passes(name: str) -> List[str]:
    """Our pass ids of pipeline `name` (case-insensitive; a `milcompress_` prefix is allowed)."""
    key = name.upper()
    if key.startswith("MILCOMPRESS_"):
        key = key[len("MILCOMPRESS_") :]
    if key not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}{closest(key, PIPELINES)}; known pipelines: {', '.join(PIPELINES)}", field="pipeline")
    return order_passes(list(PIPELINES[key][0]))


def convert_passes(name: str) -> List[str]:
    """coremltools' default passes with pipeline `name`'s passes inserted (see the module docstring)."""
    defaults = default_pipeline_pass_ids()
    at = max(i for i, p in enumerate(defaults) if p in INSERT_AFTER) + 1
    return defaults[:at] + compression_passes(name) + defaults[at:]


ACTIVATION_PASS = "milcompress::quantize_activations"


def pipeline(name: str, activations=None, calibration=None):
    """A fresh `ct.PassPipeline` for `ct.convert` (coremltools mutates the one it is given).

    `activations` ("int8", "uint8" or an activation config) adds activation quantization,
    calibrated on `calibration` (an .npz path or samples), as the very last pass: it measures
    the program exactly as it will be saved, weights compressed and every fusion done."""
    pass_ids = convert_passes(name)
    if activations is not None:
        if calibration is None:
            raise ConfigError("activation quantization needs calibration samples: pipeline(..., calibration=...)", field="calibration")
        pass_ids = pass_ids + [ACTIVATION_PASS]
    result = new_pass_pipeline(pass_ids, f"milcompress_{name.lower()}" + ("_a8" if activations is not None else ""))
    if activations is not None:
        result.set_options(ACTIVATION_PASS, {"config": activations, "calibration": calibration})
    return result


def register_with_coremltools() -> None:
    """Make every pipeline known to `ct.PassPipeline.get_pipeline` / `list_available_pipelines`."""
    for name in PIPELINES:
        register_named_pipeline(f"milcompress_{name.lower()}", convert_passes(name))
