"""milcompress: fast, accurate, accountable weight compression for Core ML programs.

Importing milcompress registers its graph passes (`milcompress::...`) and named pipelines
(`milcompress_...`) with coremltools. Three ways in:
- `ct.convert(model, pass_pipeline=milcompress.pipelines.PALETTIZE_4BIT)` (any name in
  `milcompress.pipelines.names()`), or any pipeline with `milcompress::` passes and options;
- `milcompress.palettize_weights(mlmodel, config)` and its siblings, on converted or saved models;
- the `milcompress` command line.
`milcompress.verify(original, compressed, inputs)` runs both in the reference executor
(`milcompress.reference`, torch on the CPU) and compares their outputs.
"""

from milcompress import pipelines
from milcompress.api import (
    compress_to_size,
    compress_weights,
    decompress_weights,
    get_weights_metadata,
    joint_compress_weights,
    linear_quantize_weights,
    palettize_weights,
    prune_weights,
    report_of,
)
from milcompress.config import (
    CompressionConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
)
from milcompress.errors import (
    ConfigError,
    InputError,
    MilcompressError,
    NotCompressible,
    OutputError,
    PassError,
    PreconditionError,
)
from milcompress.passes import compress_program, decompress_program, reports_of

__version__ = "0.1.0"


def verify(original, compressed, inputs=None, **options):
    """Compare two models' outputs in the reference executor (needs torch); see
    `milcompress.reference.verify`."""
    from milcompress.reference import verify as reference_verify

    return reference_verify(original, compressed, inputs, **options)


__all__ = [
    "CompressionConfig",
    "ConfigError",
    "InputError",
    "JointConfig",
    "LinearQuantizeConfig",
    "MagnitudePruneConfig",
    "MilcompressError",
    "NotCompressible",
    "OutputError",
    "PalettizeConfig",
    "PassError",
    "PreconditionError",
    "ThresholdPruneConfig",
    "__version__",
    "compress_program",
    "compress_to_size",
    "compress_weights",
    "decompress_program",
    "decompress_weights",
    "get_weights_metadata",
    "joint_compress_weights",
    "linear_quantize_weights",
    "palettize_weights",
    "pipelines",
    "prune_weights",
    "report_of",
    "reports_of",
    "verify",
]
