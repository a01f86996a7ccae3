"""milcompress: fast, accurate, accountable weight compression for Core ML programs.

Importing milcompress registers its graph passes (`milcompress::...`) and named pipelines
(`milcompress_...`) with coremltools. Three ways in:
- `ct.convert(model, pass_pipeline=milcompress.pipelines.PALETTIZE_4BIT)` (any name in
  `milcompress.pipelines.names()`), or any pipeline with `milcompress::` passes and options;
- `milcompress.palettize_weights(mlmodel, config)` and its siblings, on converted or saved models;
- the `milcompress` command line.
"""

from milcompress import pipelines
from milcompress.api import (
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
    PassError,
    PreconditionError,
)
from milcompress.passes import compress_program, decompress_program, reports_of

__version__ = "0.1.0"

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "InputError",
    "JointConfig",
    "LinearQuantizeConfig",
    "MagnitudePruneConfig",
    "MilcompressError",
    "NotCompressible",
    "PalettizeConfig",
    "PassError",
    "PreconditionError",
    "ThresholdPruneConfig",
    "__version__",
    "compress_program",
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
]
