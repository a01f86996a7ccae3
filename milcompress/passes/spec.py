"""Pass pipelines written as text: `pass_id{option=value,...},pass_id,...`.

The form follows MLIR's pass pipeline strings. A pass id without a namespace is taken to be
`milcompress::`; any registered pass may be named (coremltools' `common::...` passes too). Values
are strings, given to the pass's option setters, which validate them; a value containing `,` or
`}` is written in double quotes. `format_passes(parse_passes(text))` prints the text back in
canonical form, exactly as it was understood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from milcompress._coremltools import PASS_REGISTRY
from milcompress.catalog import closest
from milcompress.errors import ConfigError


@dataclass(frozen=True)
class PassSpec:
    pass_id: str
    options: Dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        if not self.options:
            return self.pass_id
        return self.pass_id + "{" + ",".join(f"{k}={_quote(v)}" for k, v in self.options.items()) + "}"

    def instantiate(self):
        """A configured pass object; ConfigError names a bad option or value."""
        graph_pass = PASS_REGISTRY[self.pass_id]
        for key, value in self.options.items():
            if not hasattr(graph_pass, key):
                known = sorted(n for n in dir(type(graph_pass)) if isinstance(getattr(type(graph_pass), n, None), property))
                raise ConfigError(f"{self.pass_id}: unknown option {key!r}; options are {', '.join(known) or 'none'}", field=key)
            try:
                setattr(graph_pass, key, value)
            except ConfigError:
                raise
            except Exception as error:
                raise ConfigError(f"{self.pass_id}: option {key}={value!r}: {error}", field=key) from error
        return graph_pass


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ',{}"') or value != value.strip() else value


def known_milcompress_passes() -> List[str]:
    return sorted(p for p in PASS_REGISTRY.passes if p.startswith("milcompress::"))


def parse_passes(text: str) -> List[PassSpec]:
    specs: List[PassSpec] = []
    i, n = 0, len(text)

    def fail(message: str) -> ConfigError:
        return ConfigError(f"--passes: {message} at character {i + 1} of {text!r}", field="passes")

    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        start = i
        while i < n and text[i] not in ",{":
            i += 1
        pass_id = text[start:i].strip()
        if not pass_id:
            raise fail("expected a pass id")
        if "::" not in pass_id:
            pass_id = f"milcompress::{pass_id}"
        if pass_id not in PASS_REGISTRY:
            raise ConfigError(
                f"--passes: unknown pass {pass_id!r}{closest(pass_id, PASS_REGISTRY.passes)}; milcompress passes are {', '.join(known_milcompress_passes())}",
                field="passes",
            )
        options: Dict[str, str] = {}
        if i < n and text[i] == "{":
            i += 1
            while True:
                while i < n and text[i] == " ":
                    i += 1
                key_start = i
                while i < n and text[i] not in "=,}":
                    i += 1
                key = text[key_start:i].strip()
                if i >= n or text[i] != "=" or not key:
                    raise fail("expected option=value")
                i += 1
                if i < n and text[i] == '"':
                    end = text.find('"', i + 1)
                    if end < 0:
                        raise fail("unterminated quoted value")
                    value, i = text[i + 1 : end], end + 1
                else:
                    value_start = i
                    while i < n and text[i] not in ",}":
                        i += 1
                    value = text[value_start:i].strip()
                if key in options:
                    raise fail(f"option {key!r} given twice")
                options[key] = value
                if i < n and text[i] == ",":
                    i += 1
                    continue
                if i < n and text[i] == "}":
                    i += 1
                    break
                raise fail("expected ',' or '}'")
        specs.append(PassSpec(pass_id, options))
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] != ",":
            raise fail("expected ',' between passes")
    if not specs:
        raise ConfigError("--passes: no passes given", field="passes")
    return specs


def format_passes(specs: List[PassSpec]) -> str:
    return ",".join(s.format() for s in specs)
