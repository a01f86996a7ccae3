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
leading dimension} (as an .npz written with `np.savez` holds them) or a list of dicts; sequences of
calls as a list of lists of dicts, each sequence run in one session (states carry over); or
`random=N` samples drawn from each input's declared type, at its default shape (a flexible input's
default, as `ct.convert` was given it) or the one `shapes` names. Random integer inputs that index
a `gather` (token ids) are drawn below the gathered axis' size; other integers are 0 or 1 (masks).
A stateful program runs each sample from zero states.

Decoders (`reference/decoder.py` says how one is recognised: an integer token-id input read by a
gather, a causal-mask input, a logits output) given only token ids, or `random=N`, are verified as
they are used instead (`verify_decoder`, a `DecoderReport`): each prompt is a prefill, then N greedy
decode steps on the original's top-1 tokens, each model keeping its own state (a stateless one
reruns the growing sequence); per step the logits' cosine, the top-1 agreement and
KL(original || compressed), and for given ids the perplexity of the prompts under each model.
Stateful and stateless conversions of one model give the same report for the same compression.

Calibration and other multi-call inputs: `sequences_of` (sequences of calls sharing a session),
`run_sequence`.

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
from milcompress.packages import load_program
from milcompress.progress import Progress, as_progress
from milcompress.reference.decoder import Decoder, DecoderRun, gather_bound
from milcompress.reference.interpreter import Interpreter
from milcompress.signature import shapes_with

Sample = Dict[str, np.ndarray]
DECODE_STEPS = 8
"""Greedy decode steps `verify` runs after a decoder's prompt unless told otherwise: as many as
the model's positions allow after the longest prompt, up to this many."""


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


CALIBRATION_STEPS = 4
"""One-token calls at the end of each calibration sequence of a stateful decoder (after its prefill)."""


def sequences_of(inputs, interpreter: Interpreter, steps: int = CALIBRATION_STEPS) -> List[List[Sample]]:
    """Inputs as sequences of calls, each sequence to run in one session (`run_sequence`): the
    calibration format of every program, stateful ones included.

    - a list whose items are lists of input dicts: those sequences, as given (a prefill and its
      decode steps, written out);
    - a decoder (`reference/decoder.py`) given only its token ids, {ids: (sequences, length)} as
      an .npz holds them: each row as an app runs it, a stateful decoder's prefill of all but the
      last `steps` tokens, then one token a call (causal masks made for each call); a stateless
      decoder's one call on the whole row (every position sees what it would step by step);
    - anything else `samples_of` takes: every sample is a sequence of one call (a stateful program
      then runs it from zero states)."""
    if not isinstance(inputs, Mapping) and len(inputs) and all(isinstance(item, (list, tuple)) for item in inputs):
        return [[dict(call) for call in sequence] for sequence in inputs]
    if isinstance(inputs, Mapping):
        decoder = Decoder.of(interpreter)
        if decoder is not None and set(inputs) == {decoder.ids}:
            ids = np.asarray(inputs[decoder.ids])
            rows = ids[None] if ids.ndim == 1 else ids
            if rows.ndim != 2:
                raise InputError(f"token ids for '{decoder.ids}' must be (length,) or (sequences, length), not {list(ids.shape)}")
            return [decoder.sequence_calls(row, steps) for row in rows]
    return [[sample] for sample in samples_of(inputs, interpreter)]


def run_sequence(interpreter: Interpreter, sequence: Sequence[Sample], replace=None) -> List[Dict[str, np.ndarray]]:
    """The outputs of each call of `sequence`, run in one new session (zero states; `replace`
    converted once for all its calls)."""
    session = interpreter.new_session(replace=replace)
    return [session.run(call) for call in sequence]


def random_samples(interpreter: Interpreter, count: int, seed: int = 0, shapes: Optional[Mapping[str, Sequence[int]]] = None) -> List[Sample]:
    """`count` samples drawn from each input's declared type, at its default shape or the shape
    `shapes` gives it (by input name; it must be one the input accepts). A decoder's sample is a
    whole sequence of random token ids (its length from the ids' shape) with its causal mask, a
    stateful decoder's prefill."""
    generator = np.random.default_rng(seed)
    decoder = Decoder.of(interpreter)
    if decoder is not None and shapes and decoder.mask in shapes:
        raise InputError(f"the causal mask '{decoder.mask}' follows the length of '{decoder.ids}': give the shape of '{decoder.ids}' only")
    chosen = shapes_with({name: d for name, d in interpreter.inputs.items() if decoder is None or name != decoder.mask}, shapes)
    samples = []
    for _ in range(count):
        sample = {}
        for name, (_, dtype) in interpreter.input_spec().items():
            if decoder is not None and name == decoder.mask:
                continue
            shape = chosen[name]
            if dtype.kind == "f":
                sample[name] = generator.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                bound = gather_bound(interpreter.function.inputs[name]) or 2
                sample[name] = generator.integers(0, bound, size=shape).astype(dtype)
            elif dtype.kind == "b":
                sample[name] = generator.integers(0, 2, size=shape).astype(bool)
            else:
                raise InputError(f"input '{name}' of type {dtype}: give inputs (--inputs) instead of random ones")
        if decoder is not None:
            length = sample[decoder.ids].shape[-1]
            sample.update(decoder.call(sample[decoder.ids][0], length))
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


def _run_all(interpreter: Interpreter, sequences: List[List[Sample]], progress: Progress, name: str) -> List[Dict[str, np.ndarray]]:
    """The outputs of every call of every sequence, in order (each sequence in one session)."""
    outputs = []
    with progress.stage(name, total=len(sequences), unit="samples") as advance:
        for sequence in sequences:
            outputs.extend(run_sequence(interpreter, sequence))
            advance()
    return outputs


def _interpreters(original, compressed, precision: str, function_name: Optional[str]) -> Tuple[Interpreter, Interpreter]:
    reference = Interpreter(load_program(original), function_name, precision)
    candidate = Interpreter(load_program(compressed), function_name, precision)
    if reference.input_spec() != candidate.input_spec():
        raise InputError(f"the two models take different inputs: {reference.input_spec()} and {candidate.input_spec()}")
    if reference.output_names != candidate.output_names:
        raise InputError(f"the two models have different outputs: {reference.output_names} and {candidate.output_names}")
    return reference, candidate


def verify(
    original,
    compressed,
    inputs=None,
    *,
    random: Optional[int] = None,
    precision: str = "float32",
    seed: int = 0,
    function_name: Optional[str] = None,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    steps: Optional[int] = None,
    progress=False,
) -> Union[VerifyReport, "DecoderReport"]:
    """Run `original` and `compressed` (Programs, MLModels or .mlpackage paths) on the same inputs
    in the reference executor and compare every output. Give `inputs` or `random=N`; `shapes`
    (input name -> shape) sets the shape of random inputs (default: each input's default shape).
    `inputs` may also be sequences of calls (a list of lists of input dicts), each run in one
    session of each model (a stateful program's states carry over); every call's outputs count
    as a sample.
    `progress=True` draws a bar per model run (or pass a `milcompress.progress.Progress`).

    On a decoder (`reference/decoder.py`) given only token ids (`inputs` holding just the ids
    input, or `random=N` sequences), this is `verify_decoder`: prefill and `steps` greedy decode
    steps, compared per step (a `DecoderReport`)."""
    progress = as_progress(progress)
    if (inputs is None) == (random is None):
        raise InputError("give either inputs or random=N (the number of random samples)")
    if random is not None and random < 1:
        raise InputError(f"random must be a positive number of samples, not {random}")
    reference, candidate = _interpreters(original, compressed, precision, function_name)
    decoder = Decoder.of(reference)
    if decoder is not None and (random is not None or (isinstance(inputs, Mapping) and set(inputs) == {decoder.ids})):
        length = None
        if shapes:
            unknown = [name for name in shapes if name != decoder.ids]
            if unknown:
                raise InputError(f"a decoder is verified on token ids: give the shape of '{decoder.ids}' only, not {', '.join(unknown)}")
            length = int(shapes[decoder.ids][-1])
        ids = None if inputs is None else inputs[decoder.ids]
        return _verify_decoder(reference, candidate, ids, random, steps, length, precision, seed)
    if steps is not None:
        raise InputError("steps (decode steps) apply to a decoder given token ids or random prompts; "
                         + ("these inputs are not token ids alone" if decoder is not None else "this model is not a decoder (see milcompress/reference/decoder.py)"))
    if shapes and random is None:
        raise InputError("shapes set the shapes of random inputs: give them with random=N")
    sequences = [[sample] for sample in random_samples(reference, random, seed, shapes)] if random is not None else sequences_of(inputs, reference)
    if not sequences or not all(sequences):
        raise InputError("no input samples")
    reference_outputs = _run_all(reference, sequences, progress, "running the original")
    candidate_outputs = _run_all(candidate, sequences, progress, "running the compressed")
    comparisons = tuple(
        compare_output(name, [o[name] for o in reference_outputs], [o[name] for o in candidate_outputs])
        for name in reference.output_names
    )
    return VerifyReport(precision=precision, samples=len(reference_outputs), outputs=comparisons, random_inputs=random is not None)


# -- decoders ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepComparison:
    """The two decoders' logits at one step: step 0 is the prompt (every position), then each
    decode step (one position per sequence); means over those positions."""

    step: int
    positions: int
    cosine: float
    min_cosine: float
    top1_agreement: float  # the compressed model's next token is the original's
    kl: float  # KL(softmax(original) || softmax(compressed)), nats
    nonfinite_original: int = 0  # NaN or infinite logits; then every metric is NaN
    nonfinite_compressed: int = 0

    @property
    def problems(self) -> List[str]:
        where = "the prompt" if self.step == 0 else f"decode step {self.step}"
        return [
            f"logits of the {model} model at {where} have {count:,} NaN or infinite values"
            for model, count in (("original", self.nonfinite_original), ("compressed", self.nonfinite_compressed))
            if count
        ]


@dataclass(frozen=True)
class DecoderReport:
    """What compression did to a decoder, step by step (see `verify_decoder`)."""

    precision: str
    sequences: int
    prompt_length: int
    decode_steps: int
    stateful: Tuple[bool, bool]  # original, compressed
    steps: Tuple[StepComparison, ...]
    perplexity: Optional[Tuple[float, float]]  # of the given ids under (original, compressed); None for random ids

    @property
    def problems(self) -> List[str]:
        """What makes the comparison fail whatever its thresholds: non-finite logits."""
        return [problem for step in self.steps for problem in step.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        """JSON-ready: non-finite numbers as the strings "inf", "-inf", "nan" (JSON has none)."""
        found = asdict(self)
        found["steps"] = [{key: _json_number(value) for key, value in asdict(step).items()} for step in self.steps]
        found["perplexity"] = None if self.perplexity is None else [_json_number(value) for value in self.perplexity]
        found["problems"] = self.problems
        return found

    @property
    def decode_top1_agreement(self) -> float:
        """The top-1 agreement over every decode step (the prompt's excluded)."""
        decode = [s for s in self.steps if s.step > 0]
        return float(np.mean([s.top1_agreement for s in decode])) if decode else float("nan")


def _compare_logits(step: int, reference: np.ndarray, candidate: np.ndarray) -> StepComparison:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, reference.shape[-1])
    out = np.asarray(candidate, dtype=np.float64).reshape(-1, candidate.shape[-1])
    nonfinite_ref, nonfinite_out = int(np.sum(~np.isfinite(ref))), int(np.sum(~np.isfinite(out)))
    if nonfinite_ref or nonfinite_out:
        return StepComparison(step, len(ref), math.nan, math.nan, math.nan, math.nan, nonfinite_ref, nonfinite_out)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosines = np.where(norms > 0, np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1), 1.0)
    log_p, log_q = _log_softmax(ref), _log_softmax(out)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=1)
    return StepComparison(
        step=step,
        positions=len(ref),
        cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        top1_agreement=float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1))),
        kl=float(np.mean(kl)),
    )


def _exp(value: float) -> float:
    """exp, inf past float64's range (a destroyed model's perplexity) rather than an OverflowError."""
    return math.inf if value > 709.0 else math.exp(value)


def _negative_log_likelihood(prompt_logits: np.ndarray, ids: np.ndarray) -> float:
    """Sum over positions 1.. of -log p(ids[i] | ids[:i]) under `prompt_logits` (positions, vocab);
    NaN where a logit is not finite."""
    if not np.all(np.isfinite(prompt_logits)):
        return math.nan
    log_p = _log_softmax(np.asarray(prompt_logits[:-1], dtype=np.float64))
    return float(-np.sum(log_p[np.arange(len(ids) - 1), ids[1:]]))


def verify_decoder(
    original,
    compressed,
    ids=None,
    *,
    random: Optional[int] = None,
    steps: Optional[int] = None,
    length: Optional[int] = None,
    precision: str = "float32",
    seed: int = 0,
    function_name: Optional[str] = None,
) -> DecoderReport:
    """Compare two decoders (stateful or stateless, each run its own way) on token ids.

    `ids`: prompts, (length,) or (sequences, length) integers; or `random=N` prompts of `length`
    tokens (default: the ids input's default length) drawn uniformly from the vocabulary. Each
    prompt runs through both models (a prefill), then `steps` greedy decode steps (default:
    `DECODE_STEPS`, or fewer where the model takes fewer positions after the prompt): the token fed
    at each step is the original model's top-1 choice, so both models see the same sequence, each
    keeping its own state. Reported per step (0 = the prompt): logits cosine, top-1 agreement and
    KL(original || compressed); and, for given ids, the perplexity of the prompts under each model.
    """
    if (ids is None) == (random is None):
        raise InputError("give either token ids or random=N (the number of random prompts)")
    reference, candidate = _interpreters(original, compressed, precision, function_name)
    return _verify_decoder(reference, candidate, ids, random, steps, length, precision, seed)


def _verify_decoder(reference: Interpreter, candidate: Interpreter, ids, random: Optional[int], steps: Optional[int], length: Optional[int], precision: str, seed: int) -> DecoderReport:
    decoders = Decoder.of(reference), Decoder.of(candidate)
    if decoders[0] is None or decoders[1] is None:
        raise InputError(
            "not a decoder: verifying on token ids needs an integer token-id input read by a gather, a causal-mask input "
            "and a logits output (see milcompress/reference/decoder.py); give every input instead"
        )
    if steps is not None and steps < 0:
        raise InputError(f"steps must be zero or more, not {steps}")
    if ids is None:
        if random < 1:
            raise InputError(f"random must be a positive number of prompts, not {random}")
        length = length or decoders[0].default_length
        if not length:
            raise InputError(f"input '{decoders[0].ids}' has no default length: give one (length=..., --shape {decoders[0].ids}=1xN)")
        prompts = np.random.default_rng(seed).integers(0, decoders[0].vocabulary, size=(random, length))
    else:
        prompts = np.asarray(ids)
        prompts = prompts[None] if prompts.ndim == 1 else prompts
        if prompts.ndim != 2:
            raise InputError(f"token ids for '{decoders[0].ids}' must be (length,) or (sequences, length), not {list(np.shape(ids))}")
    if steps is None:  # the default: as many as fit after the prompts, up to DECODE_STEPS
        limit = decoders[0].max_positions
        steps = DECODE_STEPS if limit is None else max(0, min(DECODE_STEPS, limit - prompts.shape[-1]))
    prompts = np.stack([decoders[0].check_ids(prompt, steps) for prompt in prompts])
    per_step: List[Tuple[List[np.ndarray], List[np.ndarray]]] = [([], []) for _ in range(steps + 1)]
    likelihood = [0.0, 0.0]
    for prompt in prompts:
        runs = DecoderRun(decoders[0]), DecoderRun(decoders[1])
        logits = [run.prefill(prompt) for run in runs]
        for side in range(2):
            per_step[0][side].append(logits[side])
            likelihood[side] += _negative_log_likelihood(logits[side], prompt)
        for step in range(1, steps + 1):
            token = int(np.argmax(logits[0][-1]))
            logits = [run.step(token)[None] for run in runs]
            for side in range(2):
                per_step[step][side].append(logits[side])
    comparisons = tuple(
        _compare_logits(step, np.concatenate(ref), np.concatenate(out)) for step, (ref, out) in enumerate(per_step)
    )
    predicted = prompts.shape[0] * (prompts.shape[1] - 1)
    perplexity = None
    if ids is not None and predicted > 0:
        perplexity = tuple(_exp(total / predicted) for total in likelihood)
    return DecoderReport(
        precision=precision,
        sequences=int(prompts.shape[0]),
        prompt_length=int(prompts.shape[1]),
        decode_steps=steps,
        stateful=(decoders[0].stateful, decoders[1].stateful),
        steps=comparisons,
        perplexity=perplexity,
    )
