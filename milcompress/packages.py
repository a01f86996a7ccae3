"""Loading and saving model packages, with clear errors and nothing half-written.

`load_model(path)` opens an .mlpackage (or refuses with an `InputError` that says what is wrong:
missing, not a package, weights missing, corrupted or truncated, a neural network model).
`save_model(model, path)` writes to a temporary package next to `path`, gives its manifest
deterministic identifiers and serialises its spec in a deterministic order (so the same model
always saves to the same bytes), and renames it into place; an existing `path` is only replaced
with `force=True`, never when it is the package the model was loaded from (or holds it, or lies
inside it), and a failure leaves no partial package behind.

Every temporary file of ours sits next to its destination under one name pattern,
`.<name>.milcompress-<pid>-<random>`: `staging_directory(path)` makes one directory for a whole
run (the command line also points `tempfile`, and so coremltools' temporary packages, into it) and
removes it however the run ends; entries of that pattern left by a process that no longer runs
(killed with SIGKILL, or a machine that lost power) are removed by the next run writing there.
`check_output` and `check_report_path` refuse unusable destinations before any work starts, and
`write_text_atomically` writes reports. Output-side I/O failures are `InputError`s naming the path
and the cause.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

from milcompress.errors import InputError, ModelTypeError, OutputError
from milcompress.storage import BlobError, ScratchSpace, attach_scratch

_MANIFEST = "Manifest.json"
_NAMESPACE = uuid.UUID("9b7c6a2e-2f0c-4d4e-9a55-6d696c636f6d")  # fixed: identifiers derive from item paths
_TEMPORARY = re.compile(r"^\..+\.milcompress-(\d+)-[^.]+(\.tmp)?$")  # .<name>.milcompress-<pid>-<random>[.tmp]


def load_model(path) -> Tuple[object, object]:
    """(MLModel, its MIL program) for the package at `path`; InputError if it is unusable."""
    model, _ = _opened(path)
    return model, program_of(model)


def _opened(path) -> Tuple[object, Path]:
    """(MLModel without its program loaded, the path) for the package at `path`; InputError if it is unusable."""
    import coremltools as ct

    from milcompress._coremltools import model_type

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
        manifest = json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: corrupted package: {_MANIFEST} is not valid JSON ({_first_line(error)})") from error
    _check_items(path, manifest)
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as error:
        raise InputError(f"{path}: corrupted package: {_first_line(error)}") from error
    kind = model_type(model)
    if kind != "mlProgram":
        raise InputError(f"{path}: a {kind} model; milcompress compresses ML programs (convert_to='mlprogram')")
    return model, path


def program_of(mlmodel, at_least_ios16: bool = False):
    """A fresh copy of the MIL program inside an ML program model (ModelTypeError for other model
    kinds); `at_least_ios16`: an older model's program is loaded at the iOS16 opset.

    A model saved on disk (loaded from a package that is not coremltools' temporary one) gives a
    program whose weights are read from the package's weight file whenever they are asked for
    (`reads_weights_on_demand`), so loading takes the memory of the program's structure, not of
    its weights, and the passes keep what they make in a scratch space on disk (in `tempfile`'s
    directory, removed with the program: see `passes/streaming.py`); a model from `ct.convert` lives in a temporary package that goes with it, so its
    weights are read at once."""
    from milcompress import _coremltools as ct_private

    kind = ct_private.model_type(mlmodel)
    if kind != "mlProgram":
        raise ModelTypeError(
            f"milcompress works on ML program models; this model is a {kind} "
            "(convert with convert_to='mlprogram', or use coremltools.models.neural_network.quantization_utils)"
        )
    on_demand = reads_weights_on_demand(mlmodel)
    try:
        prog = ct_private.program_from_mlmodel(mlmodel, at_least_ios16=at_least_ios16, lazy_weights=on_demand)
    except Exception as error:  # a package truncated or damaged after it was opened
        raise unreadable_program(getattr(mlmodel, "package_path", None) or "the model's package", error) from error
    if on_demand:  # the passes keep what they make on disk too (passes/streaming.py)
        attach_scratch(prog, ScratchSpace(tempfile.gettempdir()))
        prog._milcompress_package = (str(mlmodel.package_path), bool(at_least_ios16))
        _return_freed_memory_promptly()
    return prog


def package_of(prog) -> Optional[Tuple[str, bool]]:
    """(the package path, `at_least_ios16`) that `program_of` read `prog` from on demand, or None
    for a program held in memory. The program may have been changed since (by a pass)."""
    return getattr(prog, "_milcompress_package", None)


def program_at(path, at_least_ios16: bool = False):
    """The program of the package at `path`, its weights read on demand and no scratch space: a
    read-only copy for a worker process (see `passes/sensitivity.py`); InputError as `load_model`."""
    from milcompress import _coremltools as ct_private

    model, _ = _opened(path)
    try:
        prog = ct_private.program_from_mlmodel(model, at_least_ios16=at_least_ios16, lazy_weights=True)
    except Exception as error:
        raise unreadable_program(path, error) from error
    _return_freed_memory_promptly()
    return prog


_MALLOC_MMAP_THRESHOLD = -3  # glibc's mallopt parameter M_MMAP_THRESHOLD


@functools.lru_cache(maxsize=None)
def _return_freed_memory_promptly() -> None:
    """Streaming allocates and frees one weight's arrays after another. glibc's malloc raises its
    mmap threshold as large blocks are freed (up to 32 MB), so later weights' arrays come from
    the heap and stay with the process once freed: peak resident memory then grows with the
    model even though the live arrays do not. A fixed 1 MB threshold keeps large arrays in their
    own mappings, returned to the system when freed. Nothing happens where libc is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_MALLOC_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def reads_weights_on_demand(mlmodel) -> bool:
    """Whether `program_of(mlmodel)` leaves the weights on disk: a package saved by the user."""
    return bool(getattr(mlmodel, "is_package", False)) and not getattr(mlmodel, "is_temp_package", True) and bool(getattr(mlmodel, "weights_dir", None))


def load_program(model):
    """A Program from a Program, an MLModel (an ML program), or a path to an .mlpackage."""
    from milcompress._coremltools import Program

    if isinstance(model, Program):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model)[1]
    return program_of(model)


def _check_items(path: Path, manifest) -> None:
    """Every item the manifest lists (the model spec, the weights directory) must be there."""
    entries = manifest.get("itemInfoEntries") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{path}: corrupted package: {_MANIFEST} lists no items")
    for entry in entries.values():
        item = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(item, str) and not (path / "Data" / item).exists():
            what = "its weights are missing" if entry.get("name") == "weights" else "an item is missing"
            raise InputError(f"{path}: {what}: Data/{item}, listed in {_MANIFEST}, does not exist")


def unreadable_program(path, error: Exception) -> InputError:
    """The error for a package whose program or weights cannot be read: missing weight files, a
    weight file shorter than the program says (truncated), or anything else (corrupted)."""
    path = Path(path)
    weights = sorted(p for p in (path / "Data").rglob("*.bin") if p.is_file()) if path.is_dir() else []
    cause = _first_line(error)
    if isinstance(error, BlobError):  # our reader: "<weight file>: const '<name>' at offset N: <problem>"
        weight_file, _, cause = cause.partition(": ")
        if path.is_dir() and Path(weight_file).is_relative_to(path):
            weight_file = str(Path(weight_file).relative_to(path))
        if error.kind == "missing":
            return InputError(f"{path}: its weights are missing ({weight_file} does not exist; {cause.split(': ')[0]} needs it)")
        if error.kind == "corrupted":
            return InputError(f"{path}: corrupted package: {weight_file}: {cause}")
    named = [Path(word) for word in cause.split() if word.startswith("/")]
    if isinstance(error, FileNotFoundError) or any(not p.exists() for p in named):
        return InputError(f"{path}: its weights are missing ({cause})")
    if weights and ("out of bounds" in cause or "offset" in cause.lower() or isinstance(error, (EOFError, IndexError))):
        sizes = ", ".join(f"{p.relative_to(path)} {p.stat().st_size:,} bytes" for p in weights)
        return InputError(f"{path}: truncated package: the program reads weights beyond the end of its weight file ({sizes}; {cause})")
    return InputError(f"{path}: corrupted or truncated package: cannot read its program or weights ({cause})")


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


def source_of(model) -> Optional[Path]:
    """The package on disk `model` was loaded from or derived from (None for a model that only
    exists in a temporary package): milcompress' functions record it on the models they return."""
    source = getattr(model, "_milcompress_source", None)
    if source is None and getattr(model, "is_package", False) and not getattr(model, "is_temp_package", True):
        source = getattr(model, "package_path", None)
    return None if source is None else Path(source)


def remember_source(new_model, like) -> None:
    """Record on `new_model` (made from `like`) the package `like` came from, so saving over it
    is refused."""
    source = source_of(like)
    if source is not None:
        new_model._milcompress_source = str(source)


def check_output(path, *, force: bool = False, sources: Iterable = (), force_flag: str = "force=True") -> Path:
    """Refuse `path` as an output before any work starts: it is (or holds, or lies inside) one of
    the `sources`, it exists and `force` is not set (`force_flag` says how to set it), or its
    directory does not exist."""
    path = Path(path)
    _refuse_overlap(path, sources, "output")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists (pass {force_flag} to replace it)")
    parent = path.parent
    if not parent.exists():
        raise InputError(f"{parent}: no such directory for the output {path.name}")
    if not parent.is_dir():
        raise InputError(f"{parent}: not a directory, so the output {path.name} cannot go there")
    return path


def check_report_path(path, sources: Iterable = ()) -> Path:
    """Refuse `path` as a report before any work starts: a directory, one of the `sources` (paths
    of inputs, or (path, "input" / "output") pairs) or inside or around one, or in a directory that
    is missing or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the report")
    _refuse_overlap(path, sources, "report")
    parent = path.parent
    if not parent.exists():
        raise InputError(f"{parent}: no such directory for the report {path.name}")
    if not parent.is_dir():
        raise InputError(f"{parent}: not a directory, so the report {path.name} cannot go there")
    handle, probe = _temporary_file(path)  # the same kind of file write_text_atomically makes
    os.close(handle)
    os.unlink(probe)
    return path


def _refuse_overlap(path: Path, sources: Iterable, what: str) -> None:
    """`sources`: paths of the input, or (path, "input" / "output") pairs."""
    target = path.resolve()
    for source in sources:
        source, role = source if isinstance(source, tuple) else (source, "input")
        if source is None:
            continue
        source_path = Path(source)
        resolved = source_path.resolve()
        if target == resolved:
            relation = "is"
        elif resolved in target.parents:
            relation = "lies inside"
        elif target in resolved.parents:
            relation = "holds"
        else:
            continue
        why = "; milcompress never modifies its input" if role == "input" else ""
        raise InputError(f"{path}: the {what} {relation} the {role} {source_path}{why}: choose another {what} path")


def write_text_atomically(path, text: str) -> None:
    """Write `text` to a temporary file next to `path`, then rename it into place: a reader (or a
    failure: a full disk, a signal) never sees a partial file."""
    path = Path(path)
    handle, temporary = _temporary_file(path)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        with open(temporary, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        raise output_error(path, error) from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_file(path: Path) -> Tuple[int, str]:
    remove_stale_temporaries(path.parent)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.milcompress-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise output_error(path, error) from error


@contextlib.contextmanager
def staging_directory(path, *, redirect_tempfile: bool = False) -> Iterator[Path]:
    """A new directory next to the output `path`, removed on exit whatever happens (an error, an
    interrupt). With `redirect_tempfile`, `tempfile` (and so coremltools' temporary packages)
    writes there meanwhile, so nothing of the run is left in $TMPDIR."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.milcompress-{os.getpid()}-", dir=path.parent))
    except OSError as error:
        raise output_error(path, error) from error
    previous = tempfile.tempdir
    if redirect_tempfile:
        tempfile.tempdir = str(staging)
    try:
        yield staging
    finally:
        if redirect_tempfile:
            tempfile.tempdir = previous
        with _signals_deferred():  # a signal arriving now is handled once the directory is gone
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(directory) -> List[Path]:
    """Remove the temporaries of our naming in `directory` whose process no longer runs; return them."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _process_runs(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_model(model, path, force: bool = False, *, sources: Iterable = (), staging: Optional[Path] = None) -> None:
    """Write `model` to `path` atomically (see the module docstring). `sources`: input packages the
    output must not overwrite, besides the one `model` came from; `staging`: a directory of
    `staging_directory(path)` to write in (a new one by default)."""
    path = check_output(path, force=force, sources=[*sources, source_of(model)])
    if staging is None:
        with staging_directory(path) as new_staging:
            _save_in(model, path, new_staging)
    else:
        _save_in(model, path, Path(staging))


def _save_in(model, path: Path, staging: Path) -> None:
    package = Path(tempfile.mkdtemp(prefix="package-", dir=staging)) / path.name
    try:
        model.save(str(package))
        _deterministic_manifest(package)
        _deterministic_spec(package)
        with _signals_deferred():  # the old output is never moved away without the new one in place
            if path.exists():
                os.replace(path, package.parent / "previous")
            try:
                os.replace(package, path)
            except OSError:
                if (package.parent / "previous").exists():
                    os.replace(package.parent / "previous", path)
                raise
    except (OSError, shutil.Error, RuntimeError) as error:  # RuntimeError: coremltools' C++ writers
        if write_failure(error) is None:
            raise
        raise output_error(path, error) from error


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then reach the handlers they would have
    reached. Python-level, since in a process with other threads (torch's) blocking a signal in
    one thread only sends it to another. Only the main thread can set handlers; elsewhere no wait."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {each: signal.signal(each, lambda signum, frame: pending.append(signum)) for each in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for each, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be set back
                signal.signal(each, handler)
        for signum in pending:
            signal.raise_signal(signum)


def output_error(path, error: BaseException) -> OutputError:
    """An output-side I/O failure as one line: the path and the cause (a read-only or full disk)."""
    return OutputError(path, write_failure(error) or _first_line(error))


def write_failure(error: BaseException, directory=None) -> Optional[str]:
    """The cause, in a few words, if `error` says a file could not be written: an OSError,
    shutil's copytree error, or what coremltools' C++ writers raise as a RuntimeError: its package
    writer's "filesystem error: cannot copy: No space left on device [from] [to]", or its weight
    file writer's "[MIL FileWriter]: Unknown error ...", which says no more, so the free space of
    `directory` (where it was writing) is given instead."""
    if isinstance(error, shutil.Error):  # copytree: a list of (source, destination, why)
        details = error.args[0] if error.args and isinstance(error.args[0], list) else []
        return str(details[0][2]) if details and len(details[0]) == 3 else _first_line(error)
    if isinstance(error, OSError):
        return error.strerror or _first_line(error)
    if isinstance(error, RuntimeError) and str(error).startswith("filesystem error:"):
        return str(error).split(" [", 1)[0].rsplit(": ", 1)[-1]
    if isinstance(error, RuntimeError) and str(error).startswith("[MIL FileWriter]") and directory is not None:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            return "coremltools could not write the weight file"
        return f"coremltools could not write the weight file ({free:,} bytes free on that disk)"
    return None


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
