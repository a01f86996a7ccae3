"""milcompress: fast, accurate, accountable weight compression for Core ML programs.

Importing milcompress registers its graph passes (`milcompress::...`) and named pipelines
(`milcompress_...`) with coremltools: at once when coremltools is already imported (import it
first, as `ct.convert` users do), otherwise with the first use of anything below. So `import
milcompress` alone stays instant for the command line, which imports coremltools and torch only
for the commands that need them. Three ways in:
- `ct.convert(model, pass_pipeline=milcompress.pipelines.PALETTIZE_4BIT)` (any name in
  `milcompress.pipelines.names()`), or any pipeline with `milcompress::` passes and options;
- `milcompress.palettize_weights(mlmodel, config)` and its siblings, on converted or saved models
  (`progress=True` draws a progress bar per stage); `milcompress.linear_quantize_activations(
  mlmodel, config, sample_data)` (W8A8 with `linear_quantize_weights`), calibrated on Linux;
- the `milcompress` command line.
`milcompress.verify(original, compressed, inputs)` runs both in the reference executor
(`milcompress.reference`, torch on the CPU) and compares their outputs.
"""

import importlib
import sys

from milcompress.errors import (
    ConfigError,
    InputError,
    MilcompressError,
    ModelTypeError,
    NotCompressible,
    OutputError,
    PassError,
    PreconditionError,
    UnsupportedError,
)

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use (PEP 562).
_LAZY = {
    **dict.fromkeys(
        [
            "activation_report_of",
            "compress_to_size",
            "compress_weights",
            "decompress_weights",
            "get_weights_metadata",
            "joint_compress_weights",
            "linear_quantize_activations",
            "linear_quantize_weights",
            "palettize_weights",
            "prune_weights",
            "report_of",
        ],
        "milcompress.api",
    ),
    **dict.fromkeys(
        ["CompressionConfig", "JointConfig", "LinearQuantizeConfig", "MagnitudePruneConfig", "PalettizeConfig", "ThresholdPruneConfig"],
        "milcompress.config",
    ),
    **dict.fromkeys(["compress_program", "decompress_program", "reports_of"], "milcompress.passes"),
}
_SUBMODULES = ("pipelines", "progress", "sweep")


def _register_passes() -> None:
    importlib.import_module("milcompress.passes")  # registers with coremltools on import


def __getattr__(name: str):
    if name in _LAZY:
        _register_passes()
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"milcompress.{name}")
    else:
        raise AttributeError(f"module 'milcompress' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


def verify(original, compressed, inputs=None, **options):
    """Compare two models' outputs in the reference executor (needs torch); see
    `milcompress.reference.verify`."""
    from milcompress.reference import verify as reference_verify

    return reference_verify(original, compressed, inputs, **options)


if "coremltools" in sys.modules:
    _register_passes()

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "InputError",
    "JointConfig",
    "LinearQuantizeConfig",
    "MagnitudePruneConfig",
    "MilcompressError",
    "ModelTypeError",
    "NotCompressible",
    "OutputError",
    "PalettizeConfig",
    "PassError",
    "PreconditionError",
    "ThresholdPruneConfig",
    "UnsupportedError",
    "__version__",
    "activation_report_of",
    "compress_program",
    "compress_to_size",
    "compress_weights",
    "decompress_program",
    "decompress_weights",
    "get_weights_metadata",
    "joint_compress_weights",
    "linear_quantize_activations",
    "linear_quantize_weights",
    "palettize_weights",
    "pipelines",
    "prune_weights",
    "report_of",
    "reports_of",
    "verify",
]
