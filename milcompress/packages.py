"""Loading and saving model packages, with clear errors and nothing half-written.

`load_model(path)` opens an .mlpackage (or refuses with an `InputError` that says what is wrong:
missing, not a package, corrupted or truncated, a neural network model). `save_model(model, path)`
writes to a temporary package next to `path`, gives its manifest deterministic identifiers and
serialises its spec in a deterministic order (so the same model always saves to the same bytes),
and renames it into place; an existing `path` is only
replaced with `force=True`, and a failure leaves no partial package behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Tuple

from milcompress.errors import InputError

_MANIFEST = "Manifest.json"
_NAMESPACE = uuid.UUID("9b7c6a2e-2f0c-4d4e-9a55-6d696c636f6d")  # fixed: identifiers derive from item paths


def load_model(path) -> Tuple[object, object]:
    """(MLModel, its MIL program) for the package at `path`; InputError if it is unusable."""
    import coremltools as ct

    from milcompress._coremltools import model_type, program_from_mlmodel

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        try:
            spec = ct.utils.load_spec(str(path))
        except Exception as error:
            raise InputError(f"{path}: not a Core ML model file ({_first_line(error)})") from error
        kind = spec.WhichOneof("Type")
        if kind != "mlProgram":
            raise InputError(
                f"{path}: a {kind} model; milcompress compresses ML programs (.mlpackage). "
                "Reconvert with convert_to='mlprogram'"
            )
        raise InputError(f"{path}: an ML program must be an .mlpackage directory, not a single file")
    if not (path / _MANIFEST).is_file():
        raise InputError(f"{path}: a directory without {_MANIFEST}, so not an .mlpackage")
    try:
        json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: corrupted package: {_MANIFEST} is not valid JSON ({_first_line(error)})") from error
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as error:
        raise InputError(f"{path}: corrupted package: {_first_line(error)}") from error
    kind = model_type(model)
    if kind != "mlProgram":
        raise InputError(f"{path}: a {kind} model; milcompress compresses ML programs (convert_to='mlprogram')")
    try:
        prog = program_from_mlmodel(model)
    except Exception as error:
        raise InputError(f"{path}: corrupted or truncated package: cannot read its program or weights ({_first_line(error)})") from error
    return model, prog


def load_arrays(path) -> dict:
    """Arrays by name from an .npz file (model inputs: several samples stacked along a new first
    axis); InputError if it is missing or not an archive of arrays."""
    import numpy as np

    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not an .npz archive of arrays ({_first_line(error)})") from error


def save_model(model, path, force: bool = False) -> None:
    """Write `model` to `path` atomically (see the module docstring)."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: already exists (pass --force / force=True to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: no such directory for the output")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    package = staging / path.name
    try:
        model.save(str(package))
        _deterministic_manifest(package)
        _deterministic_spec(package)
        if path.exists():
            old = staging / "previous"
            os.replace(path, old)
        os.replace(package, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def package_size(path) -> int:
    """Bytes of all files in a package."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _deterministic_manifest(package: Path) -> None:
    manifest_path = package / _MANIFEST
    manifest = json.loads(manifest_path.read_text())
    renamed = {}
    entries = {}
    for identifier, entry in manifest.get("itemInfoEntries", {}).items():
        new = str(uuid.uuid5(_NAMESPACE, f"{entry.get('author')}/{entry.get('path')}"))
        renamed[identifier] = new
        entries[new] = entry
    manifest["itemInfoEntries"] = dict(sorted(entries.items()))
    if "rootModelIdentifier" in manifest:
        manifest["rootModelIdentifier"] = renamed.get(manifest["rootModelIdentifier"], manifest["rootModelIdentifier"])
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _deterministic_spec(package: Path) -> None:
    """Re-serialise the model spec with protobuf's deterministic map order (coremltools does not
    ask for it, so map fields land in hash order and equal models differ byte for byte)."""
    from coremltools.proto import Model_pb2

    manifest = json.loads((package / _MANIFEST).read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec_path = package / "Data" / root
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
