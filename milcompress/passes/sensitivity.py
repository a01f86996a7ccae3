"""End-to-end sensitivity: how much each weight alone, compressed, changes the model's outputs.

The size allocation (`passes/size.py`) weighs each weight's error by its sensitivity: the output
noise-to-signal ratio of the program with that one weight replaced by its 4-bit palette (`PROBE`;
its bias corrected, where that is on), over the weight's own noise-to-signal ratio (activation-
weighted and outlier-aware, as the allocation measures it). That takes one what-if run of the
reference executor per weight and calibration sample. `WhatIfRuns` keeps the dense program's run
of each sample, and a what-if run resumes from its snapshot where it can (`Interpreter.snapshot`),
recomputing only from the weight's first reader on.

The weights' runs are independent. They run
- here, on the interpreter the calibration ran on (`WhatIfRuns` on it, `sensitivity` per weight),
  or
- as jobs on the executor's workers (`milcompress.parallel`: local processes or a Dask cluster),
  for a program read on demand from a saved package that it still is (`package_source`: its
  structure's digest matches the package's). A job (`SensitivityJob`) carries the package's path,
  that digest, the samples and a share of the weights, each with what the calibration recorded of
  it; its worker opens the package (weights read on demand from the storage the workers share),
  checks the digest, runs the samples once and keeps those runs for the measurement's next jobs
  (`parallel.worker_state`), and returns the sensitivities (`measure_sensitivities`). The
  numbers are the same as here: the same function of the same inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from milcompress._coremltools import Operation, Program, blob_ref_of
from milcompress.config import PalettizeConfig
from milcompress.errors import NotCompressible, PassError
from milcompress.ops import compress
from milcompress.ops.kmeans import outlier_scale
from milcompress.ops.metrics import noise_to_signal
from milcompress.passes.bias import corrected_bias
from milcompress.passes.compress import fit_to_shape
from milcompress.passes.graph import walk_ops
from milcompress.passes.weights import WeightLayout

PROBE = PalettizeConfig(nbits=4, weight_threshold=0)
"""The form each weight's sensitivity is measured with."""
SNAPSHOT_BYTES = 1 << 30
"""Sensitivity runs reuse the dense run's values (`Interpreter.snapshot`) of samples holding up to
this many bytes in all; further samples are run whole."""
HELD_WEIGHT_BYTES = 768 << 20
"""While sensitivity is measured, the weights the executor reads from a saved package stay in
memory (as the executor holds them: float32) up to this many bytes in all (`Interpreter.holding`;
in each worker process that measures), so each is read and converted once rather than on every
what-if run. All of SmolLM2-135M's fit. A model whose weights do not (in float32) holds none: at
8B parameters (32 GB in float32) what a hold keeps hardly matters to the time (each what-if run
reads the weights after the probed one, all but a few of them from disk anyway), and its size
adds to the peak (data-free compress_to_size on one process: 3.25 GB with the hold, 2.69 without)."""


def held_weight_bytes(interpreter) -> int:
    """What `interpreter`'s what-if runs hold (see `HELD_WEIGHT_BYTES`)."""
    return HELD_WEIGHT_BYTES if interpreter.weight_bytes() <= HELD_WEIGHT_BYTES else 0


@contextlib.contextmanager
def single_threaded():
    """Within the block, torch runs each op on one thread. What-if runs always run so, here and
    on workers: an op's result can depend on how many threads share its sums (a what-if run of
    119M-parameter Llama-shaped decoder gave sensitivities differing in the seventh digit with one
    thread and with two), and a measurement must not depend on where it ran. It costs nothing measured:
    that decoder's 94 what-if runs took 23.1 s with one thread, 23.0 with two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class WeightProbe:
    """What one weight's sensitivity needs besides the program: the name of the const's output, its
    layout, the activation mean squares per input channel that weigh its error (None: data-free)
    and the calibration's record of the activation it multiplies (for bias correction)."""

    name: str
    output_axis: Optional[int]
    input_axis: Optional[int]
    column_weights: Optional[np.ndarray] = None
    statistics: Optional[object] = None


class WhatIfRuns:
    """The dense program's runs of some samples (index -> a sequence of calls), kept to compare
    what-if runs against: each sample's snapshot where it is one call (a stateful program's from
    zero states) and the snapshots hold at most `SNAPSHOT_BYTES`, and its outputs. Made within
    `single_threaded`, as the what-if runs are (the calibration's own outputs may differ in the
    last bits)."""

    def __init__(self, interpreter, samples: Mapping[int, list]):
        from milcompress.reference.verify import run_sequence

        self.interpreter = interpreter
        self.samples = dict(samples)
        self.snapshots = {}
        held = 0
        for index, sample in self.samples.items():
            if len(sample) != 1:
                continue
            snapshot = interpreter.snapshot(sample[0])
            if held + snapshot.nbytes > SNAPSHOT_BYTES:
                break
            held += snapshot.nbytes
            self.snapshots[index] = snapshot
        self.references = {
            index: [self.snapshots[index].outputs] if index in self.snapshots else run_sequence(interpreter, sample)
            for index, sample in self.samples.items()
        }

    def output_noise_to_signal(self, replace: Mapping[str, np.ndarray]) -> Optional[float]:
        """The outputs' noise-to-signal ratio over every sample with the consts in `replace`
        replaced (None where the outputs are all zero)."""
        from milcompress.reference.verify import run_sequence

        noise = signal = 0.0
        for index, sample in self.samples.items():
            snapshot = self.snapshots.get(index)
            rerun = [self.interpreter.resume(snapshot, replace)] if snapshot is not None else run_sequence(self.interpreter, sample, replace=replace)
            for expected, outputs in zip(self.references[index], rerun):
                for name, value in outputs.items():
                    noise += float(np.sum(np.square(value.astype(np.float64) - expected[name].astype(np.float64))))
                    signal += float(np.sum(np.square(expected[name].astype(np.float64))))
        return noise / signal if signal > 0 else None


def sensitivity(runs: WhatIfRuns, const: Operation, value: np.ndarray, probe: WeightProbe, bias_correction: bool) -> Optional[float]:
    """The output noise-to-signal ratio with `const` (dense `value`) alone compressed as `PROBE`,
    over its own weighted one, on `runs`' samples; None where the probe cannot take the weight or
    leaves it exact."""
    runs.interpreter.release(probe.name)  # replaced below: its float32 copy is not needed meanwhile
    layout = WeightLayout(probe.output_axis, probe.input_axis)
    fitted, _ = fit_to_shape(PROBE, value.shape, layout)
    importance = None if probe.column_weights is None else np.broadcast_to(probe.column_weights, value.shape)
    try:
        approximation = compress(value, fitted, output_axis=probe.output_axis, input_axis=probe.input_axis, importance=importance).decompress()
    except NotCompressible:
        return None
    own = noise_to_signal(value, approximation, probe.column_weights, outlier_scale=outlier_scale(value, probe.column_weights))
    if not own > 0:
        return None
    replace = {probe.name: approximation}
    if bias_correction:  # measure the damage the probe does once its bias is corrected, as it will be
        found = corrected_bias(const, value, approximation, {probe.name: probe.statistics} if probe.statistics is not None else {})
        if not isinstance(found, str):
            replace[found[0].name] = found[1]
    del approximation, importance
    ratio = runs.output_noise_to_signal(replace)
    return ratio / own if ratio is not None else 1.0


# -- on workers ----------------------------------------------------------------------------------


def structure_digest(prog: Program, function_name: str) -> str:
    """A digest of what a run of `function_name` depends on: every op's type, name, inputs and
    outputs, and every const's value (a weight read on demand by where it is stored; others by
    their bytes). Equal for a program read from a package and for the package read again."""
    digest = hashlib.sha256()
    function = prog.functions[function_name]
    digest.update(repr([(name, str(var.sym_type)) for name, var in function.inputs.items()]).encode())
    for op in _ops_of(prog, function_name):
        inputs = sorted((name, tuple(v.name for v in var) if isinstance(var, (list, tuple)) else var.name)
                        for name, var in op.inputs.items() if not name.startswith("_"))
        outputs = [(var.name, str(var.sym_type)) for var in op.outputs]
        digest.update(repr((op.op_type, op.name, inputs, outputs)).encode())
        if op.op_type == "const":
            var = op.outputs[0]
            ref = blob_ref_of(var)
            if ref is not None:
                digest.update(repr(("blob", ref.offset, ref.dtype, ref.shape)).encode())
            else:
                held = np.asarray(var.val)
                digest.update(repr((held.dtype.str, held.shape)).encode())
                digest.update(held.tobytes() if held.dtype != object else repr(held.tolist()).encode())
    digest.update(repr([var.name for var in function.outputs]).encode())
    return digest.hexdigest()


def package_source(prog: Program, function_name: str) -> Optional[Tuple[str, bool, str]]:
    """(package path, `at_least_ios16`, structure digest) where `prog` is read on demand from a
    saved package and still is what the package holds, so workers can open the package instead
    of being sent the program; None otherwise (a program held in memory, or changed by a pass)."""
    from milcompress.packages import package_of, program_at

    source = package_of(prog)
    if source is None:
        return None
    path, at_least_ios16 = source
    digest = structure_digest(prog, function_name)
    try:
        again = structure_digest(program_at(path, at_least_ios16), function_name)
    except Exception:  # the package moved or changed on disk: measured here
        return None
    return (path, at_least_ios16, digest) if again == digest else None


@dataclass(frozen=True)
class SensitivityJob:
    """Some weights' sensitivities, measured on a worker (`measure_sensitivities`): the program is
    the package at `package` (read as `packages.program_at(package, at_least_ios16)`), whose
    function `function_name` has structure `digest`; `measurement` names the measurement the job
    belongs to (its worker keeps the dense runs of `samples` for the measurement's other jobs);
    no weight is started after `deadline` (`time.time()`); the executor holds `held_bytes` of
    weights."""

    package: str
    at_least_ios16: bool
    function_name: str
    digest: str
    measurement: str
    samples: Dict[int, list]
    weights: Tuple[WeightProbe, ...]
    bias_correction: bool
    held_bytes: int
    deadline: float


_STATE_KEY = "milcompress.passes.sensitivity"


class _Kept(NamedTuple):
    """What a worker keeps of one measurement between its jobs."""

    key: tuple
    runs: WhatIfRuns
    consts: Dict[str, Operation]  # the program's consts by output name
    holding: contextlib.ExitStack  # the executor's weight hold, let go with the measurement


def _worker_runs(job: SensitivityJob) -> Tuple[WhatIfRuns, Dict[str, Operation]]:
    """The dense runs of `job`'s measurement in this process, and its program's consts by output
    name: made by its first job here, kept (`parallel.worker_state`) for the others."""
    from milcompress.packages import program_at
    from milcompress.parallel import worker_state
    from milcompress.reference import Interpreter

    key = (job.package, job.at_least_ios16, job.function_name, job.digest, job.measurement)
    kept = worker_state.get(_STATE_KEY)
    if kept is not None and kept.key == key:
        return kept.runs, kept.consts
    if kept is not None:  # another measurement's: let it go before this one's is made
        del worker_state[_STATE_KEY]
        kept.holding.close()
    prog = program_at(job.package, job.at_least_ios16)
    if structure_digest(prog, job.function_name) != job.digest:
        raise PassError(f"{job.package}: the package changed on disk while its weights' sensitivity was being measured")
    interpreter = Interpreter(prog, function_name=job.function_name)
    holding = contextlib.ExitStack()
    holding.enter_context(interpreter.holding(job.held_bytes))
    kept = _Kept(key, WhatIfRuns(interpreter, job.samples), {op.outputs[0].name: op for op in _ops_of(prog, job.function_name) if op.op_type == "const"}, holding)
    worker_state[_STATE_KEY] = kept
    return kept.runs, kept.consts


def _ops_of(prog: Program, function_name: str):
    """Every op of function `function_name`, nested blocks included, in program order."""
    return (op for op, function in walk_ops(prog) if function == function_name)


def measure_sensitivities(job: SensitivityJob) -> List[Optional[float]]:
    """The sensitivity of each of `job`'s weights in order (None where it cannot be measured), up
    to the first one the deadline left no time for: the list may be shorter than the weights."""
    found: List[Optional[float]] = []
    with single_threaded():
        runs, consts = _worker_runs(job)
        for probe in job.weights:
            if time.time() > job.deadline:
                break
            const = consts[probe.name]
            found.append(sensitivity(runs, const, np.asarray(const.outputs[0].val), probe, job.bias_correction))
    return found
