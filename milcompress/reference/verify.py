"""What compression did to a model's outputs: `verify(original, compressed, inputs)`.

Both models run in the reference executor on the same inputs; each output is compared over all
samples:
- `snr_db`: 10 log10(sum ref^2 / sum (ref - out)^2), pooled over samples;
- `psnr_db`: 20 log10(max |ref| / rms(ref - out));
- `cosine` (mean over samples) and `min_cosine`, of each sample's output flattened;
- `max_abs_error`;
- `top1_agreement`: for outputs that look like class scores (float, last dimension at least 2,
  at most one leading dimension besides it), the fraction of rows whose arg-max agrees;
- `kl_divergence`: for the same outputs, the mean over rows of KL(softmax(original) ||
  softmax(compressed)), in float64, as the benchmarks measure it.
An output holding NaN or infinite values in either model is counted (`nonfinite_original`,
`nonfinite_compressed`) instead of measured: its metrics are NaN and its top-1 agreement (and KL
divergence) None, and the report's `problems` name it, so a model that overflows never passes as
"agreeing". On random inputs (`random=N`, the report's `random_inputs`) a model's class scores
are often nearly flat and their arg-max says little about real inputs: top-1 agreement there is
a smoke test, not an accuracy.

Inputs: one sample as {name: array of the declared shape}, several as {name: array with one more
leading dimension} (as an .npz written with `np.savez` holds them) or a list of dicts; or
`random=N` samples drawn from each input's declared type. Random integer inputs that index a
`gather` (token ids) are drawn below the gathered axis' size; other integers are 0 or 1 (masks).

Precision: "float32" by default, so the comparison isolates what compression did to the weights;
"float16" emulates Core ML's GPU / Neural Engine activations in both models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from milcompress._coremltools import Program, Var
from milcompress.errors import InputError
from milcompress.progress import Progress, as_progress
from milcompress.reference.interpreter import Interpreter

Sample = Dict[str, np.ndarray]
_INDEX_PASSTHROUGH = ("cast", "identity", "reshape", "expand_dims", "squeeze", "transpose")


def load_program(model) -> Program:
    """A Program from a Program, an MLModel (an ML program), or a path to an .mlpackage."""
    if isinstance(model, Program):
        return model
    if isinstance(model, (str, Path)):
        from milcompress.packages import load_model

        return load_model(model)[1]
    from milcompress.api import program_of

    return program_of(model)


@dataclass(frozen=True)
class OutputComparison:
    name: str
    samples: int
    snr_db: float
    psnr_db: float
    cosine: float
    min_cosine: float
    max_abs_error: float
    top1_agreement: Optional[float]
    nonfinite_original: int = 0  # NaN or infinite values over all samples
    nonfinite_compressed: int = 0
    kl_divergence: Optional[float] = None

    @property
    def problems(self) -> List[str]:
        found = []
        for model, count in (("original", self.nonfinite_original), ("compressed", self.nonfinite_compressed)):
            if count:
                found.append(f"output '{self.name}' of the {model} model has {count:,} NaN or infinite values")
        return found


@dataclass(frozen=True)
class VerifyReport:
    precision: str
    samples: int
    outputs: Tuple[OutputComparison, ...]
    random_inputs: bool = False  # drawn at random, not given: top-1 agreement says little

    @property
    def problems(self) -> List[str]:
        """What makes the comparison fail whatever its thresholds: non-finite outputs."""
        return [problem for output in self.outputs for problem in output.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        """JSON-ready: non-finite numbers as the strings "inf", "-inf", "nan" (JSON has none)."""
        outputs = [{key: _json_number(value) for key, value in asdict(o).items()} for o in self.outputs]
        return {"precision": self.precision, "samples": self.samples, "random_inputs": self.random_inputs, "outputs": outputs,
                "problems": self.problems}

    def __getitem__(self, name: str) -> OutputComparison:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(name)


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def samples_of(inputs: Union[Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]], interpreter: Interpreter) -> List[Sample]:
    """`inputs` as a list of samples, each {name: array of the declared shape}."""
    if not isinstance(inputs, Mapping):
        return [dict(sample) for sample in inputs]
    spec = interpreter.input_spec()
    unknown = [name for name in inputs if name not in spec]
    missing = [name for name in spec if name not in inputs]
    if unknown or missing:
        raise InputError(
            (f"unknown input(s) {', '.join(unknown)}" if unknown else f"missing input(s) {', '.join(missing)}")
            + "; the model takes " + ", ".join(f"{name} {list(shape)}" for name, (shape, _) in spec.items())
        )
    counts = set()
    for name, (shape, _) in spec.items():
        array = np.asarray(inputs[name])
        if array.ndim == len(shape):
            counts.add(None)
        elif array.ndim == len(shape) + 1:
            counts.add(array.shape[0])
        else:
            raise InputError(f"input '{name}' has shape {list(array.shape)}; the model takes {list(shape)} (or a stack of those)")
    if counts == {None}:
        return [{name: np.asarray(value) for name, value in inputs.items()}]
    if len(counts) != 1:
        raise InputError("inputs disagree on the number of samples: give every input the same leading dimension")
    (count,) = counts
    return [{name: np.asarray(inputs[name])[index] for name in spec} for index in range(count)]


def _gather_bound(var: Var) -> Optional[int]:
    """The size of the axis a `gather` indexes with `var`, following layout-only ops."""
    bounds = []
    for op in var.child_ops:
        if op.op_type in _INDEX_PASSTHROUGH:
            bound = _gather_bound(op.outputs[0])
        elif op.op_type == "gather" and op.inputs.get("indices") is var:
            axis = int(op.inputs["axis"].val) if "axis" in op.inputs else 0
            shape = op.inputs["x"].shape
            bound = int(shape[axis]) if isinstance(shape[axis], (int, np.integer)) else None
        else:
            bound = None
        if bound is not None:
            bounds.append(bound)
    return min(bounds) if bounds else None


def random_samples(interpreter: Interpreter, count: int, seed: int = 0) -> List[Sample]:
    generator = np.random.default_rng(seed)
    spec = interpreter.input_spec()
    samples = []
    for _ in range(count):
        sample = {}
        for name, (shape, dtype) in spec.items():
            if any(size is None for size in shape):
                raise InputError(f"input '{name}' has a flexible shape {list(shape)}: give inputs (--inputs) instead of random ones")
            if dtype.kind == "f":
                sample[name] = generator.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                bound = _gather_bound(interpreter.function.inputs[name]) or 2
                sample[name] = generator.integers(0, bound, size=shape).astype(dtype)
            elif dtype.kind == "b":
                sample[name] = generator.integers(0, 2, size=shape).astype(bool)
            else:
                raise InputError(f"input '{name}' of type {dtype}: give inputs (--inputs) instead of random ones")
        samples.append(sample)
    return samples


def _looks_like_class_scores(array: np.ndarray) -> bool:
    squeezed = array.reshape([d for d in array.shape[:-1] if d != 1] + [array.shape[-1]]) if array.ndim else array
    return array.dtype.kind == "f" and array.ndim >= 1 and array.shape[-1] >= 2 and squeezed.ndim <= 2


def compare_output(name: str, reference: List[np.ndarray], other: List[np.ndarray]) -> OutputComparison:
    ref = np.stack([np.asarray(r, dtype=np.float64) for r in reference])
    out = np.stack([np.asarray(o, dtype=np.float64) for o in other])
    if ref.shape != out.shape:
        raise InputError(f"output '{name}' has shape {list(out.shape[1:])} in one model and {list(ref.shape[1:])} in the other")
    nonfinite_ref, nonfinite_out = int(np.sum(~np.isfinite(ref))), int(np.sum(~np.isfinite(out)))
    if nonfinite_ref or nonfinite_out:
        return OutputComparison(name, len(reference), math.nan, math.nan, math.nan, math.nan, math.nan, None, nonfinite_ref, nonfinite_out)
    error = out - ref
    signal, noise = float(np.sum(ref**2)), float(np.sum(error**2))
    snr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    peak, rms = float(np.max(np.abs(ref))) if ref.size else 0.0, math.sqrt(noise / max(ref.size, 1))
    psnr = math.inf if rms == 0 else (-math.inf if peak == 0 else 20 * math.log10(peak / rms))
    flat_ref, flat_out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
    dots = np.sum(flat_ref * flat_out, axis=1)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(np.all(flat_ref == flat_out, axis=1), 1.0, 0.0))
    top1 = kl = None
    if _looks_like_class_scores(np.asarray(reference[0])):
        rows_ref, rows_out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        top1 = float(np.mean(np.argmax(rows_ref, axis=1) == np.argmax(rows_out, axis=1)))
        kl = _kl_divergence(rows_ref, rows_out)
    return OutputComparison(
        name=name,
        samples=len(reference),
        snr_db=snr,
        psnr_db=psnr,
        cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        max_abs_error=float(np.max(np.abs(error))) if error.size else 0.0,
        top1_agreement=top1,
        kl_divergence=kl,
    )


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - np.max(rows, axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _kl_divergence(reference_rows: np.ndarray, rows: np.ndarray) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(rows)), float64; NaN where an output is
    not finite (which the comparison reports as such)."""
    with np.errstate(invalid="ignore", over="ignore"):
        reference_log, log = _log_softmax(reference_rows), _log_softmax(rows)
        return float(np.mean(np.sum(np.exp(reference_log) * (reference_log - log), axis=1)))


def _run_all(interpreter: Interpreter, samples: List[Sample], progress: Progress, name: str) -> List[Dict[str, np.ndarray]]:
    outputs = []
    with progress.stage(name, total=len(samples), unit="samples") as advance:
        for sample in samples:
            outputs.append(interpreter.run(sample))
            advance()
    return outputs


def verify(
    original,
    compressed,
    inputs=None,
    *,
    random: Optional[int] = None,
    precision: str = "float32",
    seed: int = 0,
    function_name: Optional[str] = None,
    progress=False,
) -> VerifyReport:
    """Run `original` and `compressed` (Programs, MLModels or .mlpackage paths) on the same inputs
    in the reference executor and compare every output. Give `inputs` or `random=N`.
    `progress=True` draws a bar per model run (or pass a `milcompress.progress.Progress`)."""
    progress = as_progress(progress)
    if (inputs is None) == (random is None):
        raise InputError("give either inputs or random=N (the number of random samples)")
    reference = Interpreter(load_program(original), function_name, precision)
    candidate = Interpreter(load_program(compressed), function_name, precision)
    if reference.input_spec() != candidate.input_spec():
        raise InputError(f"the two models take different inputs: {reference.input_spec()} and {candidate.input_spec()}")
    if reference.output_names != candidate.output_names:
        raise InputError(f"the two models have different outputs: {reference.output_names} and {candidate.output_names}")
    if random is not None and random < 1:
        raise InputError(f"random must be a positive number of samples, not {random}")
    samples = random_samples(reference, random, seed) if random is not None else samples_of(inputs, reference)
    if not samples:
        raise InputError("no input samples")
    reference_outputs = _run_all(reference, samples, progress, "running the original")
    candidate_outputs = _run_all(candidate, samples, progress, "running the compressed")
    comparisons = tuple(
        compare_output(name, [o[name] for o in reference_outputs], [o[name] for o in candidate_outputs])
        for name in reference.output_names
    )
    return VerifyReport(precision=precision, samples=len(samples), outputs=comparisons, random_inputs=random is not None)
