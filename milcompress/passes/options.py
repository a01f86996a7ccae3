"""Parsing of pass options, which arrive as objects or as strings (from the command line, YAML, or
`PassPipeline.set_options`). Each parser validates and names the option in its error."""

from __future__ import annotations

import os
from typing import Any, Tuple

from milcompress.config import CompressionConfig
from milcompress.errors import ConfigError


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ConfigError(f"{name}: expected true or false, got {value!r}", field=name)


def parse_choice(name: str, value: Any, choices: Tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}", field=name)


def parse_compression_config(value: Any) -> CompressionConfig:
    """A config object, or a string naming a YAML file or holding YAML text."""
    if isinstance(value, (str, os.PathLike)):
        return CompressionConfig.from_yaml(os.fspath(value))
    return CompressionConfig.of(value)
