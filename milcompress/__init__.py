"""milcompress: fast, accurate, accountable weight compression for Core ML programs."""

from milcompress.config import (
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

__version__ = "0.1.0"

__all__ = [
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
]
