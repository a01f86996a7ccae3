"""Parsing of pass options, which arrive as objects or as strings (from the command line, YAML, or
`PassPipeline.set_options`). Each parser validates and names the option in its error."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Tuple

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


def parse_float(name: str, value: Any, low: float, high: float) -> float:
    """A number in (low, high] (low itself allowed when it is 0 and high is inf: a duration)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    allowed_low = number >= low if (low == 0 and high == math.inf) else number > low
    if not (allowed_low and number <= high):
        interval = f"[{low:g}, inf)" if (low == 0 and high == math.inf) else f"({low:g}, {high:g}]"
        raise ConfigError(f"{name}: expected a number in {interval}, got {value!r}", field=name)
    return number


def parse_int(name: str, value: Any, minimum: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}", field=name)
    return number


def parse_path(name: str, value: Any):
    """A file path, or None for "" / None (the option unset)."""
    return None if value is None or (isinstance(value, str) and value == "") else str(value)


def optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """`parse`, with None and "" meaning the option is unset (None)."""
    return lambda name, value: None if value is None or (isinstance(value, str) and value == "") else parse(name, value)


class PassOption:
    """One option of a graph pass: an attribute that `PassPipeline.set_options` (or a caller) sets
    with an object or a string, validated by `parse(name, value)` on every assignment; reads give
    `default` until it is set.

        class MyPass(AbstractGraphPass):
            report_path = PassOption(parse_path)
            sensitivity_seconds = PassOption(lambda n, v: parse_float(n, v, 0.0, math.inf), default=0.0)
    """

    def __init__(self, parse: Callable[[str, Any], Any], default: Any = None):
        self.parse, self.default = parse, default

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.slot = name, f"_{name}_option"

    def __get__(self, instance, owner=None):
        return self if instance is None else getattr(instance, self.slot, self.default)

    def __set__(self, instance, value) -> None:
        setattr(instance, self.slot, self.parse(self.name, value))
