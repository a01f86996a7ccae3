"""The exception types of milcompress.

One base class, `MilcompressError`, so a caller can catch everything we raise on purpose. Each
subclass names a kind of failure the command line maps to an exit code: bad configuration and bad
input (2), a precondition such as an opset too old (2), a pass that broke (3). Where coremltools
raises a built-in exception for the same case, ours subclasses it too (config, input and
precondition errors are `ValueError`s; `UnsupportedError` is also a `NotImplementedError`), so a
caller's `except` clause written for coremltools keeps working.

`NotCompressible` is different in kind: it is how a numeric kernel in `ops/` says "this tensor
cannot take the form you asked for" (an all-unique tensor for `unique` palettization, a shape a
block size does not divide). Passes catch it and record its reason as a skip; it never escapes a
pass.
"""

from __future__ import annotations

from typing import Optional


class MilcompressError(Exception):
    """Base class of every error milcompress raises on purpose."""


class ConfigError(MilcompressError, ValueError):
    """A configuration is invalid. `field` names the offending field where there is one."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class InputError(MilcompressError, ValueError):
    """An input (a model, a path, an array) is unusable."""


class ModelTypeError(InputError, TypeError):
    """The model is not an ML program (coremltools raises TypeError for it: so is this)."""


class PreconditionError(MilcompressError, ValueError):
    """The program cannot hold what was asked for, for example a form needing a newer opset.

    A `ValueError`, as coremltools raises for the same cases ("... is only supported since iOS18"),
    so `except ValueError` written for coremltools catches it too. `minimum_deployment_target`
    names the target that would make the request possible, when one would.
    """

    def __init__(self, message: str, minimum_deployment_target: Optional[str] = None):
        super().__init__(message)
        self.minimum_deployment_target = minimum_deployment_target


class UnsupportedError(ConfigError, NotImplementedError):
    """A valid config asks for something with no Core ML form here, where coremltools raises
    `NotImplementedError` (for example quantizing a palette's table other than per tensor)."""


class PassError(MilcompressError):
    """A graph pass failed part-way; the program it was given is left as it was."""


class NotCompressible(MilcompressError):
    """A tensor cannot take the requested compressed form; `reason` says why, in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OutputError(InputError):
    """Writing an output failed (a read-only or full disk, a path that cannot be a file): `path`
    names what was being written and `cause` why it failed, in a few words."""

    def __init__(self, path, cause: str):
        super().__init__(f"{path}: cannot write: {cause}")
        self.path, self.cause = path, cause
