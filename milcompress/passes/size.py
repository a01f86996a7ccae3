"""Compress to a size: one form per weight, chosen so the model meets a budget with the least damage.

`compress_program_to_size(prog, target_bits_per_weight=... or target_bytes=...)` works in four
stages, never mutating a block while it walks it:
1. select: the weights are the consts the ordinary passes would consider (the same selection skip
   rules: float, read by a weight input, not already compressed ...); those below
   `weight_threshold` elements stay dense, and count towards the budget as they are;
2. evaluate: each remaining weight is offered every candidate form (`DEFAULT_CANDIDATES`: int8
   per channel, int4 per block of 32, uint4 per block of 32 and of 64 with a float16 offset
   (`linear_float_offset`), k-means palettes of 8/6/4/3/2 bits per tensor and of 4/3/2 bits per
   group of 16 channels) plus "dense", each with its stored bytes (exact) and its error;
   forms the shape or the opset cannot take drop out of that weight's menu. Quantized forms are
   computed and decompressed. k-means palettes are estimated, not built
   (`ops.estimate_palettes`): one histogram of each group serves every number of bits, the k-means
   runs at a lighter effort (`ops.kmeans.table_errors`), and each table's error is read off the
   histogram, with no indices and no decompressed copy. On all-MiniLM-L6-v2 and MobileNetV2 the
   estimated errors are within 0.3% of the thorough k-means' on average and 1.7% at most. A
   grouped palette of more than `SAMPLE_VALUES` values is measured on evenly spaced groups
   holding about that many (at least 32 groups): each group's table depends on its own weights
   only, so theirs estimates the whole's (all-MiniLM-L6-v2's 30522x384 word embedding: within
   0.3% at 2, 3 and 4 bits on 256 of its 5087 groups). Evaluating every candidate of
   all-MiniLM-L6-v2 takes 4.9 s, 3.7 times one 4-bit palettization of the model and 2.3 times one
   6-bit one (MobileNetV2: 3.4 s, 4.6 and 2.4 times); building every form instead took 11.5 s
   without the 8-bit palettes, which were then left out for their cost;
3. allocate: `ops.allocate` picks one form per weight so the total stored bytes meet the budget
   and the sum of the errors is least (a multiple-choice knapsack, solved by dynamic programming);
4. rewrite: the chosen forms are built and lowered as the ordinary passes lower them. Nothing is
   computed twice: a chosen palette is built from the tables its estimate kept
   (`ops.palettize.palettize_estimated`: a look-up and a pack; only the groups a sampled estimate
   left out are clustered, at the same effort), so its error is the one the allocation weighed;
   quantized forms, one cheap pass each, are computed again rather than every candidate kept.
   (Before, the chosen palettes were clustered again with the thorough k-means: 46.2 of 95.6 s
   on SmolLM2-135M at 4 bits per weight, data-free.) The report gives each choice the error the
   allocation weighed and its form's SNR as built.
The evaluation's and the rewrite's per-weight work are independent jobs (`ops/jobs.py`) run by
the executor `milcompress.parallel.executor_for(workers, client)` chooses: local processes, this
one, or a Dask cluster, with the same result.

The error of a form is the weight's noise-to-signal ratio, ||W - W'||^2 / ||W||^2, times the
weight's sensitivity. Why not weight by parameter count: to first order a layer's relative weight
noise becomes the same relative noise in its output, and the noise of successive layers adds up
at the model's output, so every layer's relative error counts the same whatever its size. A big
layer matters only in that it costs more bytes, which the allocation already weighs. Small layers
(depthwise convolutions, the classifier's bias-sized tensors) are cheap to keep precise and are
kept precise, which is what sensitive models such as MobileNetV2 need.

With calibration inputs, the reference executor records what feeds each weight
(`ChannelStatistics`), and errors become activation-weighted: each input channel's column error
is weighted by the mean square of the activation it multiplies, which is the layer's expected
output noise over its expected output power; the palettes' k-means is weighted the same way
(activation-aware k-means). After the allocation, each compressed conv or linear layer's bias is
corrected by the mean output shift its weight's error adds, (W' - W) E[x] (`passes/bias.py`; off
with `bias_correction=False`). On MobileNetV2 at 4.5 bits per weight (198 crops, calibrated on 30
held-out images) this took KL from 0.118 to 0.066 with the data-free errors, to 0.055 with the
activation-weighted ones. With `sensitivity_seconds`, it also measures, within that time, each
weight's end-to-end sensitivity: the output noise-to-signal ratio of the model with that one weight
compressed (its 4-bit palette, its bias corrected) over the weight's own. Where running every
weight on every calibration sample would not fit in that time, each is measured on fewer samples
(evenly spaced, at least `MIN_SENSITIVITY_SAMPLES`); weights it still had no time for get the
median (MobileNetV2 as above, 30 s: KL 0.043, top-1 0.899; it measures every weight in
about 17 s, so more time changes nothing). The other modes on the same crops, with today's
candidates (8-bit palettes included): data-free KL 0.132, top-1 0.843; calibrated 0.053, 0.889.

Decoders (token ids in, logits out: `reference/decoder.py`) are where weight errors mislead most:
on SmolLM2-135M (float16 perplexity 40.9) at 4 bits per weight, the data-free errors gave the tied
embedding / lm_head a 2-bit grouped table, whose noise-to-signal ratio looked like any other
weight's: perplexity 1.2e12; activation-weighted errors (7 calibration windows) gave 9,636. The
embedding alone as a 4-bit palette costs 307, as int4 per block of 32 44.4; the linears alone as
4-bit palettes in groups of 16 cost 64. So a decoder's sensitivity is measured for every weight,
on one sequence, whenever the allocation runs it: the calibration's first sequence, or, without
calibration, `SYNTHETIC_TOKENS` random token ids (`synthetic_check`; the massive activations
that make a few weights matter show on any input, Yu et al. 2024, *The Super Weight in Large
Language Models*). Data-free at 3, 4, 4.5 and 5 bits that gave 997, 67.9, 56.6 and 49.5
(`benchmarks/decoder.py`), against 288 for 4-bit palettes in groups of 16 (4.03 bits), 1,077 for
4-bit palettes per tensor and 65.6 for int4 per block of 32 at 4.5 bits; with the float-offset
candidates (`linear_float_offset`: SmolLM2's linears were shipped as llama.cpp's Q4_1, which that
form holds exactly at 5 bits) 850, 64.6, 53.5 and 43.3. It costs 211 what-if runs, one per weight:
the call took 112 s on two shared cores, against 7.7 s for int4 per block.
What-if runs resume from a snapshot of the dense run (`Interpreter.snapshot`), recomputing only
from the weight's first reader on, and the executor holds the weights it reads while they run
(`passes.sensitivity.HELD_WEIGHT_BYTES`; reading and converting each weight on every run took four times as long).

What still misleads it, measured on SmolLM2's tied embedding alone (the rest float16): its forms'
weight noise-to-signal ratios rank them unlike the damage they do. A 6-bit palette has an eighth
of int4 per block's ratio (0.002 against 0.016) and does more damage (perplexity 49.6 against
44.4); the logits' noise-to-signal ratio is the same for int4 per block and a 4-bit palette in
groups of 16 (0.0148, 0.0144) where perplexity is 44.4 against 162. Weighting the errors by the
model's own KL divergence instead of the logits' noise, measuring two synthetic sequences instead
of one, or sampling the synthetic sequence from the model itself (at temperature 1) gave 71.8, 73.0
and 80.0 at 4 bits against 67.8 as it is (an offline allocation from the same menus), so none was
kept. Calibrated, measuring every weight on all 7 calibration windows instead of the first (4.5
bits): perplexity 48.5 -> 47.3 but next-token agreement 0.793 -> 0.773, for 7 times the what-if
runs (sensitivity 61 -> 427 s on two workers): not kept either. Tried and left out:
the trace of each weight's Fisher information from two backward passes through the executor
(every weight at once, for about the cost of 40 what-if runs), which chose worse at 4 bits: 427
(data-free errors) and 192 (activation-weighted), 5 bits 62 and 101: it is a small-noise
expansion, and the forms that save the most bytes are not small noise.

With `error_feedback=True` (by default on decoders given calibration inputs, off otherwise), each chosen form of a weight that acts as a matrix
(linear, matmul, 1x1 convolution) is re-encoded by GPTQ against the second moment of its inputs
(`ops/feedback.py`: same tables and scales, so the same bytes; other indices), where, fitted on
the first half of the calibration samples, that lowers the output error on the second half. It
helps where calibration inputs are like the inputs that matter: all-MiniLM-L6-v2 (32 held-out
passages), with sensitivity measured as well, mean cosine 0.947 -> 0.976 at 3.5 bits per weight,
0.9924 -> 0.9942 at 4.5 and 0.99975 -> 0.99989 at 8 (about twice the time). It is unreliable where
they are not: MobileNetV2 calibrated on the benchmark's 30 crops of 10 photos, 8 of them
grayscale, with sensitivity, gets a lower KL at 6 of the size sweep's 8 targets (at 4.5 bits
0.043 -> 0.038, top-1 0.899 -> 0.909) and a higher one at 3.5 and 4 bits (0.22 -> 0.25, 0.113 ->
0.123); without sensitivity, 0.053 -> 0.061 at 4.5 bits. The held-out check passes there all
the same: both halves share the grayscale photos' channel correlations, which colour photos do
not have. Hence off by default: it trusts the calibration inputs more than the diagonal
weighting does. Decoders are the exception, and there it is on by default when calibration inputs
are given: sequences of real text are the inputs GPTQ was made for, and on SmolLM2-135M (7
windows of 64 tokens) it took perplexity from 981 to 582 at 3 bits per weight and from 63.8 to
55.8 at 4 (next-token agreement 0.62 -> 0.63), for about 170 of its 211 weights; the held-out
check declines the rest. It costs time: the rewrite took 290-440 s instead of about 50 on two
shared cores.

Tried and left out: weighting each element's error by the diagonal of the outputs' Fisher /
Gauss-Newton matrix (gradients through the reference executor). It predicted single-layer damage
well (within 1.5x of the measured KL on MobileNetV2) but chose worse: MobileNetV2 KL 0.086-0.11
against 0.055, and all-MiniLM-L6-v2 collapsed (mean cosine 0.43), its embedding rows that the
calibration passages never use having zero measured sensitivity.

Also tried on MobileNetV2 at 4.5 bits per weight (calibrated, 198 crops; top-1 agreement moves by
one or two crops between allocations of equal KL, so KL decides), none kept:
- palettes with per-channel scales as candidates (6/4/3/2 bits): KL 0.055 -> 0.046 calibrated,
  but 0.043 -> 0.044 with sensitivity and 0.120 -> 0.148 data-free (the allocation trusts their
  weight error more than their output error deserves);
- 6-bit palettes per group of 16, groups of 8, int4 per block of 16 and per channel as extra
  candidates: KL 0.055 -> 0.058, 0.079 and 0.055;
- measuring sensitivity with a 6-bit probe (the operating point of most weights) instead of the
  4-bit one: 0.043 -> 0.049;
- 90 calibration crops instead of 30 (three scales of the same photos): 0.043 -> 0.045;
- `weight_threshold=0` (the allocation also chooses for the depthwise weights): 0.043 -> 0.044.
- sensitivity measured as the KL divergence of the outputs' softmax (the benchmark's own measure)
  instead of the output noise-to-signal ratio: 0.043 -> 0.045, top-1 0.899 -> 0.889.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from milcompress._coremltools import AbstractGraphPass, Program, opset_of
from milcompress.config import AlgorithmConfig, CompressionConfig, LinearQuantizeConfig, PalettizeConfig
from milcompress.errors import ConfigError, MilcompressError
from milcompress.lowering import required_target
from milcompress.ops import describe, snr_db
from milcompress.ops.allocate import Allocation, allocate
from milcompress.ops.feedback import feedback, output_error
from milcompress.ops.jobs import BuildJob, MenuForm, MenuJob, build_form, menu_forms
from milcompress.ops.palettize import PaletteEstimate
from milcompress.parallel import InProcess, check_workers, executor_for
from milcompress.passes.bias import correct_biases
from milcompress.passes.compress import _Plan, _rewrite, _select, _skip, clipped_warnings, fit_to_shape, outlier_warnings
from milcompress.passes.streaming import keep_form
from milcompress.storage import restored, scratch_of
from milcompress.packages import load_arrays
from milcompress.passes.graph import ProgramGraph
from milcompress.passes.options import PassOption, optional, parse_bool, parse_float, parse_int, parse_path
from milcompress.passes.report import SKIPPED, ConstRecord, Report, attach
from milcompress.passes.sensitivity import SensitivityJob, WeightProbe, WhatIfRuns, held_weight_bytes, measure_sensitivities, package_source, sensitivity, single_threaded
from milcompress.passes.skip_rules import SELECTION_RULES, first_reason
from milcompress.passes.weights import WeightLayout, common_layout
from milcompress.progress import Progress, as_progress

logger = logging.getLogger(__name__)

DENSE = "dense"

DEFAULT_CANDIDATES: Tuple[Tuple[str, AlgorithmConfig], ...] = (
    ("int8 per channel", LinearQuantizeConfig(dtype="int8", granularity="per_channel", weight_threshold=0)),
    ("int4 per block 32", LinearQuantizeConfig(dtype="int4", granularity="per_block", block_size=32, weight_threshold=0)),
    *(
        (f"int4 per block {n}, float offset", LinearQuantizeConfig(mode="linear_float_offset", dtype="uint4", granularity="per_block", block_size=n, weight_threshold=0))
        for n in (32, 64)
    ),
    *((f"palette {n}-bit", PalettizeConfig(nbits=n, weight_threshold=0)) for n in (8, 6, 4, 3, 2)),
    *(
        (f"palette {n}-bit groups of 16", PalettizeConfig(nbits=n, granularity="per_grouped_channel", group_size=16, weight_threshold=0))
        for n in (4, 3, 2)
    ),
)
SAMPLE_VALUES = 1 << 18
"""Grouped palettes of weights with more values than this are evaluated on evenly spaced groups
holding about this many values (at least `ops.palettize.MIN_SAMPLE_GROUPS` groups): each group's
table depends on its own weights only, so their error estimates the whole's, and the size is
exact. The chosen form is always computed whole."""
MIN_SENSITIVITY_SAMPLES = 4
"""Sensitivity is measured on at least this many calibration samples (or all, if fewer), even
where that leaves some weights unmeasured in the time given; see `sensitivity_samples`."""
SYNTHETIC_TOKENS = 64
SYNTHETIC_SEED = 0
"""The data-free check of a decoder runs one sequence of this many random token ids (`synthetic_inputs`)."""
DECODER_SENSITIVITY_SAMPLES = 1
"""A decoder's sensitivity, measured for every weight unless `sensitivity_seconds` says otherwise,
is measured on this many sequences (of the calibration inputs, or the synthetic one)."""
FEEDBACK_MAX_INPUTS = 4096
"""Error feedback needs each weight's [inputs, inputs] second moment: recorded up to this size."""
FEEDBACK_APPLIED = "error feedback (GPTQ)"  # the note of a form re-encoded by error feedback begins so


@dataclass(frozen=True)
class Choice:
    """What the allocation chose for one weight, and the menu it chose from."""

    name: str
    elements: int
    form: str  # a candidate's label, or "dense"
    bytes: int
    error: float  # the weighted error that was minimised
    sensitivity: float
    menu: Tuple[Tuple[str, int, float], ...]  # (label, bytes, error) of every form it could take


@dataclass
class SizeReport:
    """The per-const report plus what the allocation did."""

    report: Report
    budget_bytes: int
    total_bytes: int  # every weight, compressed or not
    total_elements: int
    total_error: float
    lower_bound: float
    choices: List[Choice] = field(default_factory=list)
    calibrated: bool = False
    synthetic: bool = False  # weighed by the data-free check on synthetic inputs (`synthetic_check`)
    sensitivity_measured: int = 0  # weights whose sensitivity was measured (the others get the median)
    sensitivity_samples: int = 0  # calibration samples each was measured on
    biases_corrected: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time of each stage

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / self.total_elements if self.total_elements else 0.0

    def to_dict(self) -> dict:
        return {**self.summary(), "report": self.report.to_dict()}

    def summary(self) -> dict:
        return {
            "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "total_error": self.total_error,
            "lower_bound": self.lower_bound,
            "calibrated": self.calibrated,
            "synthetic": self.synthetic,
            "sensitivity_measured": self.sensitivity_measured,
            "sensitivity_samples": self.sensitivity_samples,
            "biases_corrected": self.biases_corrected,
            "seconds": {stage: round(t, 3) for stage, t in self.seconds.items()},
            "choices": [dataclasses.asdict(c) for c in self.choices],
        }


def _column_weights(value: np.ndarray, layout: Optional[WeightLayout], statistics) -> Optional[np.ndarray]:
    """The activation mean squares broadcast over the weight's input-channel axis (depthwise
    convolutions: its output-channel axis, each output reading its own input channel)."""
    if statistics is None or layout is None:
        return None
    mean_square = np.maximum(np.asarray(statistics.mean_square, dtype=np.float64), 0.0)
    for axis in (layout.input_axis, layout.output_axis):
        if axis is not None and value.shape[axis] == mean_square.size and (axis == layout.input_axis or value.shape[layout.input_axis] == 1):
            shape = [1] * value.ndim
            shape[axis] = mean_square.size
            return mean_square.reshape(shape)
    return None


@dataclass
class _Weight:
    record: ConstRecord
    candidate: object
    layout: WeightLayout
    column_weights: Optional[np.ndarray] = None  # with calibration: activation mean squares per input channel
    menu: List[Tuple[str, AlgorithmConfig, int, float]] = field(default_factory=list)  # label, config, bytes, weight NSR
    sensitivity: float = 1.0
    sampled: Dict[str, str] = field(default_factory=dict)  # label -> how its error was sampled, for forms estimated on some groups
    estimates: Dict[str, PaletteEstimate] = field(default_factory=dict)  # label -> the estimate of a k-means palette on its menu



def _menu_job(weight: _Weight, candidates: Sequence[Tuple[str, AlgorithmConfig]]) -> MenuJob:
    """The job that prices every candidate form of `weight` (`ops.jobs.menu_forms`): k-means scalar
    palettes estimated together per layout (`ops.estimate_palettes`: one histogram per group for
    every size, errors from it, at the estimate effort), every other form computed and
    decompressed."""
    layout = weight.layout
    return MenuJob(weight.candidate.value, _fitted(weight, candidates), layout.output_axis, layout.input_axis, weight.column_weights, SAMPLE_VALUES)


def _fitted(weight: _Weight, candidates: Sequence[Tuple[str, AlgorithmConfig]]) -> Tuple[Tuple[str, AlgorithmConfig], ...]:
    """The candidates with group and block sizes fitted to the weight's shape."""
    shape = tuple(int(d) for d in weight.candidate.const.outputs[0].shape)
    return tuple((label, fit_to_shape(config, shape, weight.layout)[0]) for label, config in candidates)


def _take_menu(weight: _Weight, fitted: Tuple[Tuple[str, AlgorithmConfig], ...], forms: List[MenuForm]) -> None:
    """`weight`'s menu from the forms its job priced: "dense", and each form the program's opset
    can hold that is smaller than the weight as stored. Estimated palettes are kept (their
    tables are small) so the rewrite builds exactly the palette that was weighed."""
    candidate = weight.candidate
    configs = dict(fitted)
    weight.menu.append((DENSE, None, candidate.stored, 0.0))
    for found in forms:
        need, _ = required_target(found.form)
        if opset_of(candidate.const) < need or found.nbytes >= candidate.stored:
            continue
        if isinstance(found.form, PaletteEstimate):
            weight.estimates[found.label] = found.form
            if found.form.sampled:
                weight.sampled[found.label] = f"estimated on {found.form.sampled} evenly spaced groups of {found.form.tables}"
        weight.menu.append((found.label, configs[found.label], found.nbytes, found.error))


def compress_program_to_size(
    prog: Program,
    *,
    target_bits_per_weight: Optional[float] = None,
    target_bytes: Optional[int] = None,
    candidates: Optional[Sequence[Tuple[str, AlgorithmConfig]]] = None,
    calibration=None,
    sensitivity_seconds: float = 0.0,
    bias_correction: bool = True,
    error_feedback: Optional[bool] = None,
    weight_threshold: int = 2048,
    synthetic_check: Optional[bool] = None,
    pass_name: str = "milcompress::compress_to_size",
    progress: Optional[Progress] = None,
    workers: Optional[int] = None,
    client=None,
) -> SizeReport:
    """Compress `prog` in place to `target_bits_per_weight` (averaged over every weight, compressed
    or not) or `target_bytes` (the weights' total stored bytes); see the module docstring.

    `calibration`: inputs for the reference executor (a dict of arrays, stacked along a new first
    axis for several samples, or a list of dicts; for a stateful program, also a list of
    sequences, each a list of per-call dicts, or, for a decoder, its token ids alone:
    `reference.verify.sequences_of`); `sensitivity_seconds` > 0 (needs calibration, or a decoder's synthetic check)
    also measures each weight's end-to-end sensitivity within that many seconds. `progress` (a
    `milcompress.progress.Progress`) hears of each stage: calibration, evaluation, sensitivity,
    rewrite (building the chosen forms) and error feedback.

    `error_feedback`: re-encode matrix-like weights by GPTQ (see the module docstring); None (the
    default) does it for a decoder given calibration inputs (real sequences: GPTQ's home ground),
    never without calibration inputs; True asks for it (an error without them); False never.

    `synthetic_check` (without calibration): run the program on synthetic inputs and weigh each
    weight by what they show, as calibration does, measuring every weight's sensitivity. None (the
    default) does it for decoders (`reference.decoder`: one sequence of `SYNTHETIC_TOKENS` random
    token ids), the models whose data-free errors are known to mislead (see the module docstring);
    True asks for it (an error for a program it cannot make inputs for); False never does it.
    A decoder's sensitivities, synthetic or calibrated, are measured for every weight unless
    `sensitivity_seconds` bounds that stage (the largest weights first; the rest get the median):
    on an 8B-parameter decoder every weight takes hours on two cores.

    The evaluation's and the rewrite's per-weight work runs as independent jobs
    (`ops.jobs.menu_forms`, `ops.jobs.build_form`) on the executor `milcompress.parallel.executor_for(workers,
    client)` chooses; the choices, the program and the report do not depend on it.
    """
    workers = check_workers(workers)
    if (target_bits_per_weight is None) == (target_bytes is None):
        raise ConfigError("give exactly one of target_bits_per_weight and target_bytes", field="target_bits_per_weight")
    if target_bits_per_weight is not None and not (0 < float(target_bits_per_weight) <= 32):
        raise ConfigError(f"target_bits_per_weight must be in (0, 32], not {target_bits_per_weight}", field="target_bits_per_weight")
    if target_bytes is not None and (isinstance(target_bytes, bool) or int(target_bytes) != target_bytes or target_bytes < 0):
        raise ConfigError(f"target_bytes must be a non-negative integer, not {target_bytes!r}", field="target_bytes")
    if error_feedback and calibration is None:
        raise ConfigError("error_feedback needs calibration inputs", field="error_feedback")
    candidates = tuple(DEFAULT_CANDIDATES if candidates is None else candidates)
    decoder = _decoder_of(prog)
    if error_feedback is None:  # decoders calibrated on real sequences gain the most from it
        error_feedback = decoder is not None and calibration is not None
    synthetic = None
    if calibration is None and synthetic_check is not False:
        if decoder is None and synthetic_check:
            raise ConfigError("synthetic_check: the program is not a decoder (token ids in, logits out), so there are no synthetic "
                              "inputs to make for it; give calibration inputs instead", field="synthetic_check")
        if decoder is not None:
            synthetic = calibration = synthetic_inputs(decoder)
    if sensitivity_seconds and calibration is None:
        raise ConfigError("sensitivity_seconds needs calibration inputs, or a decoder to run the synthetic check on", field="sensitivity_seconds")
    sensitivity_cap = None
    if decoder is not None and calibration is not None and (synthetic is not None or not sensitivity_seconds):
        # A decoder's weights differ in sensitivity by orders of magnitude that no weight error shows
        # (its tied embedding most of all): measure every weight (or as many as `sensitivity_seconds`
        # allows, the largest first), on one sequence.
        sensitivity_seconds, sensitivity_cap = sensitivity_seconds or math.inf, DECODER_SENSITIVITY_SAMPLES

    graph = ProgramGraph(prog)
    scratch = scratch_of(prog)  # a program read on demand: chosen forms and emitted consts go to disk
    selection = CompressionConfig.of(PalettizeConfig(nbits=8, weight_threshold=weight_threshold))
    records: List[ConstRecord] = []
    weights: List[_Weight] = []
    fixed_bytes = fixed_elements = 0
    for const in graph.consts():
        candidate, record = _select(const, graph, selection)
        records.append(record)
        if record.action == SKIPPED:
            if first_reason(candidate, SELECTION_RULES) is None:  # a weight, but too small (or not finite): stays dense
                fixed_bytes += candidate.stored
                fixed_elements += int(candidate.value.size)
            continue
        layout, _ = common_layout(candidate.weight_uses, candidate.value.ndim)
        if layout is None or layout.output_axis is None:
            layout = WeightLayout(0, min(1, candidate.value.ndim - 1))
        weights.append(_Weight(record, candidate, layout))

    clock = time.perf_counter()
    seconds: Dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    progress = as_progress(progress)
    interpreter = None if decoder is None else decoder.interpreter
    run = _calibrate(prog, calibration, weights, error_feedback, progress, interpreter) if calibration is not None else None
    del decoder, interpreter  # the run holds the interpreter while it needs it
    lap("calibration")
    work = len(candidates) * sum(int(np.prod(weight.candidate.const.outputs[0].shape, dtype=np.int64)) for weight in weights)
    with progress.stage("evaluation", total=len(weights), unit="weights") as advance, \
            executor_for(workers, client, work=work, jobs=len(weights)) as executor:
        # Each job reads its weight's value only as the executor takes it: a bounded number at a time.
        for weight, forms in zip(weights, executor.map(menu_forms, (_menu_job(weight, candidates) for weight in weights))):
            _take_menu(weight, _fitted(weight, candidates), forms)
            advance(weight.record.name)
    lap("evaluation")
    measured, measured_on = (_measure_sensitivity(run, weights, sensitivity_seconds, bias_correction, progress, sensitivity_cap, prog, workers, client)
                             if sensitivity_seconds else (0, 0))
    lap("sensitivity")

    total_elements = fixed_elements + sum(int(w.candidate.value.size) for w in weights)
    budget = int(target_bytes) if target_bytes is not None else int(math.floor(target_bits_per_weight * total_elements / 8))
    options = [[(size, weight.sensitivity * error) for _, _, size, error in weight.menu] for weight in weights]
    try:
        allocation: Allocation = allocate(options, budget - fixed_bytes)
    except ConfigError as error:
        smallest = fixed_bytes + sum(min(size for size, _ in menu) for menu in options)
        raise ConfigError(
            f"the target ({budget:,} bytes, {8 * budget / max(total_elements, 1):.3f} bits per weight) is below the smallest "
            f"size the candidate forms reach ({smallest:,} bytes, {8 * smallest / max(total_elements, 1):.3f} bits per weight)",
            field="target_bits_per_weight" if target_bits_per_weight is not None else "target_bytes",
        ) from error

    lap("allocation")
    chosen, choices = [], []  # (weight, label, params, weighted error) of every weight compressed
    builds = []  # (weight, label, bytes, weighted error) and its job, for every weight compressed
    for weight, index in zip(weights, allocation.choices):
        label, config, size, error = weight.menu[index]
        record = weight.record
        choices.append(Choice(record.name, int(weight.candidate.value.size), label, size, weight.sensitivity * error, weight.sensitivity,
                              tuple((l, s, weight.sensitivity * e) for l, _, s, e in weight.menu)))
        job = None
        if label == DENSE:
            _skip(record, f"kept dense by the size allocation: its {len(weight.menu) - 1} compressed forms cost more error per byte saved than other weights'")
        else:
            layout = weight.layout
            job = BuildJob(None, config, layout.output_axis, layout.input_axis, weight.column_weights, weight.estimates.get(label))
        builds.append(((weight, label, size, weight.sensitivity * error), job))
        weight.estimates.clear()
    built = {}  # position in `chosen` -> (SNR, clipped outlier) of the form as built
    work = sum(int(np.prod(weight.candidate.const.outputs[0].shape, dtype=np.int64)) for (weight, *_), job in builds if job is not None)
    with progress.stage("rewrite", total=len(weights), unit="weights") as advance, \
            executor_for(workers, client, work=work, jobs=sum(job is not None for _, job in builds)) as executor:
        results = executor.map(build_form, (dataclasses.replace(job, weight=weight.candidate.value) for (weight, *_), job in builds if job is not None))
        for (weight, label, size, error), job in builds:
            if job is not None:
                form = next(results)
                assert form.params.nbytes == size, f"{weight.record.name}: {label} stores {form.params.nbytes} bytes, the allocation counted {size}"
                built[len(chosen)] = (form.snr_db, form.clipped)
                chosen.append((weight, label, keep_form(scratch, form.params), error))
            advance(weight.record.name)
    builds.clear()
    notes: List[List[str]] = [[] for _ in chosen]
    if run is not None and error_feedback:
        with progress.stage("error feedback", total=len(chosen), unit="weights") as advance:
            for position, (weight, label, params, error) in enumerate(chosen):
                params, note = _with_feedback(restored(params), weight, run.folds)
                chosen[position] = (weight, label, keep_form(scratch, params), error)
                notes[position] += [note] if note else []
                advance(weight.record.name)
    plans = []
    for position, ((weight, label, params, error), feedback_notes) in enumerate(zip(chosen, notes)):
        record, candidate, params = weight.record, weight.candidate, restored(params)
        record.form, record.bytes_after = describe(params), int(params.nbytes)
        if feedback_notes and feedback_notes[0].startswith(FEEDBACK_APPLIED):  # re-encoded: other indices, another SNR
            dense = params.decompress()
            record.snr_db = snr_db(candidate.value, dense)
            record.warnings = outlier_warnings(candidate.value, dense)
            del dense
        else:
            record.snr_db, clipped = built[position]
            record.warnings = clipped_warnings(clipped)
        estimated = f" ({weight.sampled[label]})" if label in weight.sampled else ""
        record.notes = [f"chosen by the size allocation: {label}, weighted error {error:.3g}{estimated}", *feedback_notes]
        plans.append(_Plan(candidate, keep_form(scratch, params), record))
        del params
    chosen.clear()
    weights.clear()
    corrected = correct_biases(plans, run.statistics) if run is not None and bias_correction else 0
    _rewrite(plans, scratch=scratch)
    lap("rewrite")
    report = Report(pass_name, records)
    attach(prog, report)
    result = SizeReport(
        report=report,
        budget_bytes=budget,
        total_bytes=fixed_bytes + allocation.total_bytes,
        total_elements=total_elements,
        total_error=allocation.total_error,
        lower_bound=allocation.lower_bound,
        choices=choices,
        calibrated=run is not None and synthetic is None,
        synthetic=synthetic is not None,
        sensitivity_measured=measured,
        sensitivity_samples=measured_on,
        biases_corrected=corrected,
        seconds=seconds,
    )
    report.summary = result.summary()
    logger.info("%s: %.3f bits per weight (budget %d bytes)", pass_name, result.bits_per_weight, budget)
    return result


class CompressToSize(AbstractGraphPass):
    """milcompress::compress_to_size: one form per weight, chosen to meet a size with least error.

    Options (objects or strings, as `PassPipeline.set_options` passes them):
    - target_bits_per_weight (averaged over every weight) or target_bytes (their stored total);
    - calibration: inputs for the reference executor (arrays by input name, or an .npz path)
      for activation-weighted errors and k-means and bias correction; bias_correction (default
      true; "false" keeps the biases); sensitivity_seconds: time for end-to-end sensitivity
      measurement (needs calibration); error_feedback (needs calibration; unset: for decoders):
      re-encode matrix-like weights by GPTQ where held-out calibration inputs confirm it helps;
    - weight_threshold: weights with at most this many elements stay dense (default 2048);
    - synthetic_check: without calibration, weigh a decoder's weights by a run on synthetic token
      ids (unset: for decoders; "true": required; "false": never; see `compress_program_to_size`);
    - report_path: also write the JSON report there;
    - workers: how many processes evaluate and build the weights' forms (see
      `milcompress.parallel`; default: one per core where the weights are big enough).
    `client` (an attribute, as `progress` is): a `dask.distributed` Client or scheduler address
    whose cluster does that work instead.
    """

    PASS_ID = "milcompress::compress_to_size"

    target_bits_per_weight = PassOption(optional(lambda name, value: parse_float(name, value, 0.0, 32.0)))
    target_bytes = PassOption(optional(lambda name, value: parse_int(name, value, 0)))
    calibration = PassOption(lambda name, value: load_arrays(value) if isinstance(value, (str, os.PathLike)) else value)
    sensitivity_seconds = PassOption(lambda name, value: parse_float(name, value, 0.0, math.inf), default=0.0)
    bias_correction = PassOption(parse_bool, default=True)
    error_feedback = PassOption(optional(parse_bool))
    weight_threshold = PassOption(lambda name, value: parse_int(name, value, 0), default=2048)
    synthetic_check = PassOption(optional(parse_bool))
    report_path = PassOption(parse_path)
    workers = PassOption(lambda name, value: check_workers(value, name))

    def __init__(self):
        super().__init__()
        self.progress: Optional[Progress] = None  # set by callers that draw progress
        self.client = None  # set by callers that send the work to a Dask cluster

    def apply(self, prog: Program) -> None:
        result = compress_program_to_size(
            prog,
            target_bits_per_weight=self.target_bits_per_weight,
            target_bytes=self.target_bytes,
            calibration=self.calibration,
            sensitivity_seconds=self.sensitivity_seconds,
            bias_correction=self.bias_correction,
            error_feedback=self.error_feedback,
            weight_threshold=self.weight_threshold,
            synthetic_check=self.synthetic_check,
            pass_name=self.PASS_ID,
            progress=self.progress,
            workers=self.workers,
            client=self.client,
        )
        if self.report_path:
            result.report.write(self.report_path)

    def __str__(self) -> str:
        return self.PASS_ID


@dataclass
class _CalibrationRun:
    """The calibration inputs run once through the dense program: what fed each weight
    (`statistics`) and the interpreter, kept for what-if runs; with error feedback, also the
    inputs' second moments of the first and of the second half of the samples (`folds`). A sample
    is a sequence of calls run in one session (`reference.verify.sequences_of`: one call for a
    stateless program's sample).

    `probes` are the samples as what-if runs take them: a stateful decoder's token ids as one
    prefill call each (what its prefill and decode steps compute, in one call that a snapshot can
    resume; `sequences_of(..., steps=0)`), other samples as they are (`probes is samples`)."""

    interpreter: object
    samples: list
    probes: list
    statistics: Dict[str, object]
    folds: Tuple[Dict[str, object], ...] = ()


def _decoder_of(prog: Program):
    """The program's `reference.decoder.Decoder` (token ids in, logits out), or None."""
    from milcompress.reference import Interpreter
    from milcompress.reference.decoder import Decoder
    from milcompress.signature import declared_inputs

    name = getattr(prog, "default_function_name", None) or "main"
    if name not in prog.functions:
        return None
    kinds = sorted((d.dtype.kind, d.rank) for d in declared_inputs(prog, name).values())
    if len(kinds) != 2 or kinds[0][0] != "f" or kinds[1][0] not in "iu":
        return None  # not worth building an interpreter (every weight decompressed) to find out
    try:
        return Decoder.of(Interpreter(prog, function_name=name))
    except MilcompressError:  # a program the executor cannot run is not treated as a decoder
        return None


def synthetic_inputs(decoder) -> Dict[str, np.ndarray]:
    """Calibration inputs for `decoder`: one sequence of `SYNTHETIC_TOKENS` token ids (fewer if the
    model takes fewer positions) drawn uniformly from its vocabulary with a fixed seed."""
    length = SYNTHETIC_TOKENS if decoder.max_positions is None else min(SYNTHETIC_TOKENS, decoder.max_positions)
    ids = np.random.default_rng(SYNTHETIC_SEED).integers(0, decoder.vocabulary, size=(1, length))
    return {decoder.ids: ids}


def _calibrate(prog: Program, calibration, weights: List[_Weight], second_moments: bool, progress: Progress,
               interpreter=None) -> _CalibrationRun:
    """Run the calibration inputs once, recording what feeds each weight (with `second_moments`,
    also the inputs' second moment matrices of two halves of the samples, for error feedback),
    and weight every weight's errors by it."""
    from milcompress.reference import ChannelStatistics, Interpreter
    from milcompress.reference.verify import run_sequence, sequences_of

    statistics = ChannelStatistics()
    folds = [ChannelStatistics(gram_limit=FEEDBACK_MAX_INPUTS) for _ in range(2)] if second_moments else []
    interpreter = Interpreter(prog) if interpreter is None else interpreter
    interpreter.observers[:] = [statistics]
    samples = sequences_of(calibration, interpreter)  # each a sequence of calls sharing states
    half = (len(samples) + 1) // 2
    with progress.stage("calibration", total=len(samples), unit="samples") as advance:
        for index, sample in enumerate(samples):
            # The first and the second half, not alternate samples: neighbours are often related
            # (crops of one photo, passages of one text), and the check must see inputs it did not fit.
            interpreter.observers[:] = [statistics] + folds[index // half : index // half + 1]
            run_sequence(interpreter, sample)
            advance()
    interpreter.observers.clear()  # what-if runs must not add to the statistics
    for weight in weights:
        weight.column_weights = _column_weights(weight.candidate.value, weight.layout, statistics.records.get(weight.candidate.const.outputs[0].name))
    probes = sequences_of(calibration, interpreter, steps=0) if interpreter.stateful else samples
    return _CalibrationRun(interpreter, samples, probes, statistics.records, tuple(fold.records for fold in folds))


def _with_feedback(params, weight: _Weight, folds) -> Tuple[object, Optional[str]]:
    """`params` re-encoded by error feedback, where that lowers the output error on calibration
    inputs it did not see, with a note saying what it did; else `params` as they were, with the
    reason (None where the form or the layout is not one it handles).

    Feedback fits the calibration inputs, and with few of them per input channel it fits their
    noise: fitted on the first half of the samples, it must lower the output error on the second
    half (with that half's second moment), or the form is kept as rounded. Where it does, it is fitted again
    on all of them."""
    name = weight.candidate.const.outputs[0].name
    fit, check = (fold.get(name) for fold in folds)
    if fit is None or fit.gram is None:  # not a matrix-like weight, or too many inputs
        return params, None
    if check is None or check.gram is None:
        return params, "no error feedback: it needs two calibration samples or more (half to fit, half to check)"
    value, layout = weight.candidate.value, weight.layout
    axes = dict(output_axis=layout.output_axis, input_axis=layout.input_axis)
    fitted = feedback(params, value, fit.second_moment, **axes)
    if fitted is None:
        return params, None
    before = output_error(value, params.decompress(), check.second_moment, **axes)
    after = output_error(value, fitted.decompress(), check.second_moment, **axes)
    if not after < before:
        return params, f"no error feedback: fitted on half the calibration samples it raised the other half's output error ({before:.3g} -> {after:.3g})"
    everything = (fit.gram + check.gram) / (fit.count + check.count)
    return feedback(params, value, everything, **axes), (
        f"{FEEDBACK_APPLIED}: output error on held-out calibration samples {before:.3g} -> {after:.3g}")


def sensitivity_samples(samples: int, weights: int, seconds: float, seconds_per_run: float) -> int:
    """How many calibration samples each weight's sensitivity is measured on: all of them where
    every weight on every sample fits in `seconds`, else as many as let every weight fit, and
    never fewer than `MIN_SENSITIVITY_SAMPLES` (or all, if there are fewer): weights measured on a
    few samples rank better than weights left at the median."""
    if samples <= 0 or weights <= 0:
        return 0
    affordable = math.floor(seconds / (weights * seconds_per_run)) if seconds_per_run > 0 and math.isfinite(seconds) else samples
    return int(min(samples, max(affordable, MIN_SENSITIVITY_SAMPLES)))


def _measure_sensitivity(run: _CalibrationRun, weights: List[_Weight], seconds: float, bias_correction: bool, progress: Progress,
                         max_samples: Optional[int], prog: Program, workers: Optional[int], client) -> Tuple[int, int]:
    """Each weight's end-to-end sensitivity (`passes/sensitivity.py`), largest weights first, within
    `seconds`. Returns (weights measured, samples each was measured on).

    One run of the program on one sample is timed first, and the samples are thinned (evenly
    spaced, as many as `sensitivity_samples` allows) so that every weight can be measured in
    time: on all-MiniLM-L6-v2 a run on one passage takes 30-40 ms on two cores, so its 38 weights
    on all 32 calibration passages take about 45 s, and on a busy machine 30 s measured only 5
    of them. Weights there was still no time for get the median.

    The runs go to the executor `executor_for(workers, client, ...)` chooses where the program is
    read from a saved package it still matches (the workers open the package themselves), else
    they run here."""
    from milcompress.reference.verify import run_sequence

    interpreter, samples = run.interpreter, run.probes
    if not samples or not weights:
        return 0, 0
    start = time.perf_counter()
    deadline = start + seconds
    function_name = interpreter.function_name
    order = sorted(range(len(weights)), key=lambda i: -weights[i].candidate.value.size)
    model_elements = sum(int(weight.candidate.value.size) for weight in weights)
    executor = executor_for(workers, client, work=len(weights) * model_elements // 2, jobs=len(weights))
    source = None if isinstance(executor, InProcess) else package_source(prog, function_name)
    if source is None:  # the workers could not open the program: it is measured here
        executor.close()
        executor = InProcess()
    with executor, progress.stage("sensitivity", total=len(weights), unit="weights") as advance:
        if math.isfinite(seconds):
            run_sequence(interpreter, samples[0])
            per_run = time.perf_counter() - start
            count = sensitivity_samples(len(samples), len(weights), (seconds - per_run) * executor.workers, per_run)
        else:
            count = len(samples)
        count = count if max_samples is None else min(count, max_samples)
        chosen = [int(i) for i in np.linspace(0, len(samples) - 1, count).round().astype(int)]  # distinct: count <= len(samples)
        probes = [_probe_of(weight, run.statistics) for weight in weights]
        logger.info("sensitivity of %d weights on %d samples each: %r", len(weights), len(chosen), executor)
        if isinstance(executor, InProcess):
            measured = _measure_here(run, weights, probes, order, chosen, bias_correction, deadline, advance)
        else:
            measured = _measure_on_workers(executor, source, function_name, run, weights, probes, order, chosen, bias_correction,
                                           time.time() + (deadline - time.perf_counter()), advance)
    if measured:
        typical = float(np.median(list(measured.values())))
        for index, weight in enumerate(weights):
            weight.sensitivity = measured.get(index, typical)
    return len(measured), len(chosen)


def _probe_of(weight: _Weight, statistics) -> WeightProbe:
    name = weight.candidate.const.outputs[0].name
    return WeightProbe(name, weight.layout.output_axis, weight.layout.input_axis, weight.column_weights, statistics.get(name))


def _measure_here(run: _CalibrationRun, weights: List[_Weight], probes: List[WeightProbe], order: List[int], chosen: List[int],
                  bias_correction: bool, deadline: float, advance) -> Dict[int, float]:
    """Weight index -> sensitivity, measured on the calibration's own interpreter, in `order`
    until `deadline` (`time.perf_counter()`)."""
    interpreter = run.interpreter
    measured: Dict[int, float] = {}
    with single_threaded(), interpreter.holding(held_weight_bytes(interpreter)):
        runs = WhatIfRuns(interpreter, {i: run.probes[i] for i in chosen})
        for index in order:
            if time.perf_counter() > deadline:
                break
            weight = weights[index]
            found = sensitivity(runs, weight.candidate.const, weight.candidate.value, probes[index], bias_correction)
            if found is not None:
                measured[index] = found
            advance(weight.record.name)
        del runs
    return measured


SENSITIVITY_JOBS_PER_WORKER = 4
"""On workers, the weights go in this many jobs per worker (each a run of consecutive weights in
size order): few enough that the samples travel a few times, enough to share the work evenly."""


def _measure_on_workers(executor, source, function_name: str, run: _CalibrationRun, weights: List[_Weight], probes: List[WeightProbe],
                        order: List[int], chosen: List[int], bias_correction: bool, deadline: float, advance) -> Dict[int, float]:
    """As `_measure_here`, on the executor's workers (`sensitivity.measure_sensitivities`), which
    open the package `source` names; `deadline` is a `time.time()`."""
    package, at_least_ios16, digest = source
    size = max(1, math.ceil(len(order) / (SENSITIVITY_JOBS_PER_WORKER * executor.workers)))
    shares = [order[k : k + size] for k in range(0, len(order), size)]
    samples = {i: run.probes[i] for i in chosen}
    held = held_weight_bytes(run.interpreter)  # each worker holds what one process would
    measurement = uuid.uuid4().hex
    jobs = (SensitivityJob(package, at_least_ios16, function_name, digest, measurement, samples, tuple(probes[i] for i in share),
                           bias_correction, held, deadline) for share in shares)
    measured: Dict[int, float] = {}
    for share, found in zip(shares, executor.map(measure_sensitivities, jobs)):
        for index, value in zip(share, found):
            if value is not None:
                measured[index] = value
        for index in share:
            advance(weights[index].record.name)
    return measured
