"""Activation quantization (W8A8, A8W4): `quantize_program_activations(prog, config, samples)`.

What coremltools 9.0's `linear_quantize_activations` does, calibrated on the reference executor
instead of Core ML (which Linux does not have). Three stages, as the weight passes:

1. select (`select_activations`): which inputs of which ops read their activation through a
   `quantize` -> `dequantize` pair. This is the net effect of coremltools' three passes
   (`compression::insert_prefix_quantize_dequantize_pair`,
   `compression::insert_suffix_quantize_dequantize_pair`,
   `common::dequantize_quantize_pair_elimination`), tested op by op against them:
   - prefix: every `conv`, `linear`, `avg_pool`, `max_pool` and `add` whose config is not None
     and whose `x` (for `add`, `x` and `y`) is not a const gets those inputs quantized;
   - suffix: after each such op (or after the activation that follows it: `relu`, `relu6`,
     `leaky_relu`, `tanh`, `scaled_tanh`, `sigmoid`, `hard_sigmoid`, when that activation is its
     first consumer and has consumers itself), the output is quantized for *every* consumer,
     unless it already feeds exactly one quantized input, or has no consumer at all;
   - the ranges of a `concat`'s inputs and output are merged (all concats sharing a tensor
     together), so a quantized concat is surrounded by one scale.
   A supported op that is skipped is recorded with its reason. Ops inside nested blocks
   (cond, while) are left alone with a record: coremltools' suffix pass cannot walk them.
2. calibrate: the program runs in the reference executor on every sample, once, and
   `ActivationRanges` keeps the smallest and largest value of each selected tensor (and of the
   concat groups' members): two numbers per tensor. (coremltools' calibration keeps only the
   last sample's range, a bug in `record_intermediate_output`; this keeps all samples'.) With
   `estimator="percentile"` (the default) or `"mse"` it also keeps a 2,048-bin histogram per
   tensor, and each range is chosen from it (`ops.activations.estimated_range`); "minmax" is
   coremltools' choice, where min/max alone decide (`ops.activations.DEFAULT_ESTIMATOR` says
   why it is not the default).
3. rewrite: one `quantize` -> `dequantize` pair per selected tensor (`lowering/activations.py`),
   just before its first quantized reader; those readers move to it. coremltools may leave
   several identical pairs on one tensor (one per reader); the values are the same.

Differences from coremltools, each where it fails: a model output read by a quantized op is
calibrated here (coremltools raises KeyError: it never calibrates outputs); an output that a
suffix pair would follow is left float with a record (coremltools' rewrite fails on it); only the
function calibration runs (the default one) is quantized, as only its ranges are known.

Needs iOS17 (runtime quantize ops): an older program is a PreconditionError naming the target.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from milcompress._coremltools import AbstractGraphPass, Block, Operation, Program, Var, copy_scope_info, dtype_name, types
from milcompress.config import CompressionConfig, LinearQuantizeConfig
from milcompress.errors import ConfigError, InputError
from milcompress.lowering.activations import check_activation_target, emit_quantize_pair, scale_dtype_of
from milcompress.ops.activations import DEFAULT_ESTIMATOR, RANGE_ESTIMATORS, ActivationQuantization, activation_qparams, estimated_range
from milcompress.passes.options import PassOption, parse_choice, parse_float, parse_path
from milcompress.passes.report import attach, reports_of
from milcompress.progress import Progress, as_progress

logger = logging.getLogger(__name__)

PASS_ID = "milcompress::quantize_activations"
UNARY_OP_TYPES = ("conv", "avg_pool", "max_pool", "linear")
BINARY_OP_TYPES = ("add",)
SUPPORTED_OP_TYPES = UNARY_OP_TYPES + BINARY_OP_TYPES
ALLOWED_ACTIVATIONS = frozenset({"leaky_relu", "tanh", "scaled_tanh", "sigmoid", "hard_sigmoid", "relu", "relu6"})


# -- config -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActivationSetting:
    """How one op's activations are quantized: `mode` linear_symmetric or linear, `dtype` int8 or uint8."""

    mode: str = "linear_symmetric"
    dtype: str = "int8"


@dataclasses.dataclass(frozen=True)
class ActivationConfig:
    """The setting of each op (op name > op type > global; None: leave the op float), as
    coremltools' `OptimizationConfig._get_op_config` resolves it for activations."""

    global_config: Optional[ActivationSetting] = ActivationSetting()
    op_type_configs: Mapping[str, Optional[ActivationSetting]] = dataclasses.field(default_factory=dict)
    op_name_configs: Mapping[str, Optional[ActivationSetting]] = dataclasses.field(default_factory=dict)

    def resolve(self, op: Operation) -> Optional[ActivationSetting]:
        if op.name in self.op_name_configs:
            return self.op_name_configs[op.name]
        if op.op_type in self.op_type_configs:
            return self.op_type_configs[op.op_type]
        return self.global_config

    @staticmethod
    def of(config) -> "ActivationConfig":
        """Accept None (linear_symmetric int8 everywhere), coremltools' OptimizationConfig of
        `OpLinearQuantizerConfig` / `OpActivationLinearQuantizerConfig`, one such op config, our
        `LinearQuantizeConfig`, or a CompressionConfig of them. Per-tensor 8-bit always: the
        weight-only fields (granularity, block_size, weight_threshold) do not apply."""
        if config is None:
            return ActivationConfig()
        if isinstance(config, ActivationConfig):
            return config
        if isinstance(config, ActivationSetting):
            return ActivationConfig(global_config=config)
        if type(config).__name__ == "OptimizationConfig":
            tables = {
                "op_type_configs": {k: _setting(f"op_type_configs.{k}", v) for k, v in (config.op_type_configs or {}).items()},
                "op_name_configs": {k: _setting(f"op_name_configs.{k}", v) for k, v in (config.op_name_configs or {}).items()},
            }
            return ActivationConfig(global_config=_setting("global_config", config.global_config), **tables)
        if isinstance(config, CompressionConfig):
            return ActivationConfig(
                global_config=_setting("global_config", config.global_config),
                op_type_configs={k: _setting(f"op_type_configs.{k}", v) for k, v in config.op_type_configs.items()},
                op_name_configs={k: _setting(f"op_name_configs.{k}", v) for k, v in config.op_name_configs.items()},
            )
        return ActivationConfig(global_config=_setting("config", config))


def _setting(field: str, op_config) -> Optional[ActivationSetting]:
    if op_config is None:
        return None
    kind = type(op_config).__name__
    if isinstance(op_config, LinearQuantizeConfig):
        mode, dtype = op_config.mode, op_config.dtype
    elif kind in ("OpLinearQuantizerConfig", "OpActivationLinearQuantizerConfig"):
        mode, dtype = str(op_config.mode).lower(), dtype_name(op_config.dtype)
    else:
        raise ConfigError(
            f"{field}: activation quantization takes OpLinearQuantizerConfig (or LinearQuantizeConfig); got {kind}", field=field
        )
    if dtype not in ("int8", "uint8"):
        raise ConfigError(f"{field}.dtype: activations are quantized to int8 or uint8 (iOS17's quantize op); got {dtype}", field=f"{field}.dtype")
    if mode not in ("linear_symmetric", "linear"):
        raise ConfigError(f"{field}.mode: expected linear_symmetric or linear, got {mode!r}", field=f"{field}.mode")
    return ActivationSetting(mode=mode, dtype=dtype)


# -- select -----------------------------------------------------------------------------------

# One use of a tensor by an op: (op, input name, position in a tuple input or None).
Use = Tuple[Operation, str, Optional[int]]


@dataclasses.dataclass
class Selection:
    """What `select_activations` chose in one block: the tensors to quantize, each with the uses
    that read it quantized and the setting (taken from the op whose pattern chose it), plus the
    supported ops left alone with their reasons."""

    tensors: Dict[str, List[Use]]  # var name -> uses, in the order chosen
    vars: Dict[str, Var]
    settings: Dict[str, ActivationSetting]
    kinds: Dict[str, str]  # var name -> "input of <op>" / "output of <op>", for the report
    skipped: List[Tuple[str, str, str]]  # (op name, op type, reason)
    concat_groups: List[List[str]]  # var names whose ranges are merged


def _uses(var: Var, op: Operation) -> List[Use]:
    found = []
    for name, value in op.inputs.items():
        if isinstance(value, (list, tuple)):
            found.extend((op, name, position) for position, item in enumerate(value) if item is var)
        elif value is var:
            found.append((op, name, None))
    return found


def _is_const(var: Var) -> bool:
    return var.op is not None and var.op.op_type == "const"


def _already_quantized(var: Var) -> bool:
    return var.op is not None and var.op.op_type == "dequantize"


def select_activations(block: Block, config: ActivationConfig) -> Selection:
    """The activations coremltools' passes quantize in `block` (see the module docstring)."""
    order = {op: index for index, op in enumerate(block.operations)}
    selection = Selection({}, {}, {}, {}, [], [])
    quantized = set()  # (op, input name, position): uses reading a quantized tensor

    def choose(var: Var, uses: List[Use], setting: ActivationSetting, kind: str) -> None:
        uses = [use for use in uses if use not in quantized]
        if not uses:
            return
        quantized.update(uses)
        selection.tensors.setdefault(var.name, []).extend(uses)
        selection.vars[var.name] = var
        selection.settings.setdefault(var.name, setting)
        selection.kinds.setdefault(var.name, kind)

    # Prefix: the inputs of every supported op.
    cores: List[Tuple[Operation, ActivationSetting]] = []
    for op in block.operations:
        for nested in op.blocks:
            for inner in _all_ops(nested):
                if inner.op_type in SUPPORTED_OP_TYPES:
                    selection.skipped.append((inner.name, inner.op_type, "inside a nested block (coremltools' passes do not reach it)"))
        if op.op_type not in SUPPORTED_OP_TYPES:
            continue
        setting = config.resolve(op)
        names = ("x", "y") if op.op_type in BINARY_OP_TYPES else ("x",)
        reason = None
        if setting is None:
            reason = "config None"
        elif any(_is_const(op.inputs[name]) for name in names):
            reason = "an input is a const" if op.op_type in BINARY_OP_TYPES else "input x is a const"
        elif any(_already_quantized(op.inputs[name]) for name in names):
            reason = "already reads a dequantized activation"
        elif any(not types.is_float(op.inputs[name].dtype) for name in names):
            reason = "input is not float"
        if reason is not None:
            selection.skipped.append((op.name, op.op_type, reason))
            continue
        for name in names:
            choose(op.inputs[name], [(op, name, None)], setting, f"input of {op.op_type} '{op.name}'")
        cores.append((op, setting))

    def readers(var: Var) -> List[object]:
        """`var`'s consumers as coremltools' suffix pass sees them after the prefix pass: the
        uses not quantized (their ops, in program order), then one "quantize" per quantized use."""
        plain, marked = [], []
        for child in sorted(set(var.child_ops), key=lambda c: order.get(c, len(order))):
            for use in _uses(var, child):
                (marked if use in quantized else plain).append("quantize" if use in quantized else child)
        return list(dict.fromkeys(plain)) + marked

    # Suffix: the output of each supported op, or of the activation following it.
    for op, setting in cores:
        last, following = op, readers(op.outputs[0])
        if following == ["quantize"]:
            continue  # its only reader already reads it quantized
        first = following[0] if following else None
        if isinstance(first, Operation) and first.op_type in ALLOWED_ACTIVATIONS:
            after = readers(first.outputs[0])
            if after == ["quantize"]:
                continue
            if after:
                last, first = first, after[0]
        if first is None:
            continue  # no reader at all: a model output only
        output = last.outputs[0]
        if output in block.outputs:
            selection.skipped.append((last.name, last.op_type, "its output is a model output: outputs stay float (coremltools never calibrates them)"))
            continue
        uses = [use for child in output.child_ops if child in order for use in _uses(output, child)]
        choose(output, uses, setting, f"output of {last.op_type} '{last.name}'")

    # Concat: inputs and output share one range.
    for op in block.operations:
        if op.op_type == "concat":
            selection.concat_groups.append([v.name for v in op.inputs["values"] if not _is_const(v)] + [op.outputs[0].name])
    return selection


def _all_ops(block: Block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from _all_ops(nested)


def merged_groups(groups: Sequence[Sequence[str]]) -> List[set]:
    """Groups sharing a name merged, transitively (coremltools merges only in one sweep)."""
    parent: Dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for group in groups:
        for name in group[1:]:
            parent[find(name)] = find(group[0])
        if group:
            find(group[0])
    merged: Dict[str, set] = defaultdict(set)
    for name in parent:
        merged[find(name)].add(name)
    return list(merged.values())


# -- report -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    name: str
    kind: str  # which pattern chose it
    readers: int  # uses now reading it quantized
    rmin: float
    rmax: float
    scale: float
    zero_point: Optional[int]
    dtype: str
    note: str = ""  # why its range is not the estimator's, where it is not


@dataclasses.dataclass
class ActivationReport:
    """What `quantize_program_activations` did: every tensor quantized (with its calibrated range
    and parameters) and every supported op left float (with its reason)."""

    function: str
    samples: int
    tensors: List[QuantizedTensor]
    skipped: List[Tuple[str, str, str]]
    warnings: List[str] = dataclasses.field(default_factory=list)
    pass_name: str = PASS_ID

    def to_dict(self) -> dict:
        return {
            "pass": self.pass_name,
            "function": self.function,
            "samples": self.samples,
            "tensors": [dataclasses.asdict(t) for t in self.tensors],
            "skipped": [{"op": name, "op_type": op_type, "reason": reason} for name, op_type, reason in self.skipped],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path) -> None:
        from milcompress.packages import write_text_atomically

        write_text_atomically(path, self.to_json() + "\n")

    def __str__(self) -> str:
        from milcompress.table import format_table

        rows = [
            [t.name, t.kind, str(t.readers), f"[{t.rmin:.4g}, {t.rmax:.4g}]", f"{t.scale:.4g}", "-" if t.zero_point is None else str(t.zero_point)]
            for t in self.tensors
        ]
        lines = [self.pass_name, format_table(["activation", "chosen as", "readers", "range quantized", "scale", "zero point"], rows)]
        lines += [f"{t.name}: {t.note}" for t in self.tensors if t.note]
        lines += [f"{op_type} '{name}' left float: {reason}" for name, op_type, reason in self.skipped]
        lines += [f"warning: {warning}" for warning in self.warnings]
        lines.append(f"quantized {len(self.tensors)} activations in function '{self.function}', calibrated on {self.samples} samples")
        return "\n".join(lines)


# -- calibrate and rewrite --------------------------------------------------------------------


def calibration_samples(sample_data, input_names: Sequence[str]) -> List[Dict[str, np.ndarray]]:
    """coremltools' `sample_data` (a list of dicts, a None key naming the only input), or arrays by
    input name stacked along a new first axis (an .npz), as a list of dicts. InputError when
    there are none."""
    if sample_data is None:
        raise InputError("activation quantization needs calibration samples (sample_data / --calibration): none given")
    if isinstance(sample_data, Mapping):
        return _stacked(sample_data, input_names)
    samples = []
    for index, sample in enumerate(sample_data):
        if not isinstance(sample, Mapping):
            raise InputError(f"calibration sample {index} is a {type(sample).__name__}, not a dict of input arrays")
        sample = dict(sample)
        if None in sample:
            if len(sample) > 1 or len(input_names) > 1:
                raise InputError("When the model has multiple inputs, please provide the name for each data in `sample_data`")
            sample = {input_names[0]: sample[None]}
        samples.append({name: np.asarray(value) for name, value in sample.items()})
    if not samples:
        raise InputError("activation quantization needs calibration samples (sample_data / --calibration): the list is empty")
    return samples


def _stacked(arrays: Mapping[str, np.ndarray], input_names: Sequence[str]) -> List[Dict[str, np.ndarray]]:
    counts = {np.asarray(value).shape[0] if np.ndim(value) else 0 for value in arrays.values()}
    if len(counts) != 1:
        raise InputError("calibration inputs disagree on the number of samples: stack each along a new first axis of the same length")
    (count,) = counts
    if count == 0:
        raise InputError("activation quantization needs calibration samples: the arrays hold none")
    return [{name: np.asarray(value)[index] for name, value in arrays.items()} for index in range(count)]


def _check_samples(interpreter, samples: List[Dict[str, np.ndarray]]) -> None:
    """Every sample names each input once and has an accepted shape: checked before any run."""
    for index, sample in enumerate(samples):
        missing = [name for name in interpreter.input_names if name not in sample]
        unknown = [name for name in sample if name not in interpreter.inputs]
        if missing or unknown:
            takes = ", ".join(f"{name} {declared.describe()}" for name, declared in interpreter.inputs.items())
            what = f"missing input(s) {', '.join(missing)}" if missing else f"unknown input(s) {', '.join(unknown)}"
            raise InputError(f"calibration sample {index}: {what}; the model takes {takes}")
        for name, value in sample.items():
            declared = interpreter.inputs[name]
            if not declared.accepts(np.shape(value)):
                raise InputError(f"calibration sample {index}: input '{name}' has shape {list(np.shape(value))}; the model takes {declared.describe()}")


HISTOGRAM_BINS = 2048
SOFTMAX_DEPTH = 16.0
"""A tensor read only by softmax (attention scores plus an additive mask of -1e4 or -inf, as
converted transformers have them) is quantized over at most [-max(high, SOFTMAX_DEPTH), high]:
the mask would otherwise set the scale (1e4 / 127: every real score rounds to 0, and attention
becomes uniform; all-MiniLM-L6-v2's W8A8 came out at mean cosine 0.41). A clipped value still sits
at least SOFTMAX_DEPTH below its row's largest (when that is at least 0), so it weighs under e^-16
(1e-7, below float16's resolution of a softmax output) after the softmax, as before."""


def calibration_sequences(sample_data, input_names: Sequence[str]) -> List[List[Dict[str, np.ndarray]]]:
    """Calibration inputs as sequences of calls, each run in one session from zero states (so a
    stateful program's state reads see what earlier calls wrote): a list of lists of input dicts
    as given; anything `calibration_samples` takes as sequences of one call."""
    if isinstance(sample_data, (list, tuple)) and sample_data and all(isinstance(item, (list, tuple)) for item in sample_data):
        return [calibration_samples(list(sequence), input_names) for sequence in sample_data]
    return [[sample] for sample in calibration_samples(sample_data, input_names)]


def calibrate(prog: Program, function_name: str, sequences, names, precision: str = "float32", progress: Optional[Progress] = None, histogram_bins: int = 0):
    """Ranges of the tensors `names` over every call of every sequence: `ActivationRanges` after
    one run each."""
    from milcompress.reference import Interpreter
    from milcompress.reference.statistics import ActivationRanges

    ranges = ActivationRanges(names, histogram_bins)
    interpreter = Interpreter(prog, function_name, precision, observers=[ranges])
    _check_samples(interpreter, [call for sequence in sequences for call in sequence])
    with as_progress(progress).stage("calibrating activations", total=len(sequences), unit="sample") as advance:
        for sequence in sequences:
            session = interpreter.new_session()
            for call in sequence:
                session.run(call)
                ranges.observe_inputs(call)
            advance()
    return ranges


def quantize_program_activations(
    prog: Program,
    config=None,
    sample_data=None,
    *,
    function_name: Optional[str] = None,
    precision: str = "float32",
    ranges: Optional[Mapping[str, Tuple[float, float]]] = None,
    estimator: str = DEFAULT_ESTIMATOR,
    percentile: float = 99.99,
    progress: Optional[Progress] = None,
) -> ActivationReport:
    """Insert calibrated quantize -> dequantize pairs into `prog` (in place) as coremltools'
    `linear_quantize_activations` would; return (and keep with the program) the report.

    `ranges` (tensor name -> (rmin, rmax), as coremltools' `activation_stats` holds them) replaces
    calibration: then `sample_data` is not needed. `precision` is the executor's for calibration."""
    from milcompress.reference.interpreter import Interpreter

    config = ActivationConfig.of(config)
    if estimator not in RANGE_ESTIMATORS:
        raise ConfigError(f"estimator: expected one of {', '.join(RANGE_ESTIMATORS)}, got {estimator!r}", field="estimator")
    if not 50.0 < float(percentile) <= 100.0:
        raise ConfigError(f"percentile: expected a number in (50, 100], got {percentile!r}", field="percentile")
    if function_name is None:
        function_name = getattr(prog, "default_function_name", None) or "main"
        if function_name not in prog.functions and len(prog.functions) == 1:
            function_name = next(iter(prog.functions))
    if function_name not in prog.functions:
        raise InputError(f"no function named '{function_name}'; the program has {', '.join(prog.functions)}")
    function = prog.functions[function_name]
    check_activation_target(function_name, function)
    if ranges is None:
        input_names = [name for name in Interpreter(prog, function_name).input_names]
        sequences = calibration_sequences(sample_data, input_names)

    selection = select_activations(function, config)
    groups = [group for group in merged_groups(selection.concat_groups) if group & set(selection.tensors)]
    names = set(selection.tensors).union(*groups) if groups else set(selection.tensors)
    if ranges is None:
        bins = 0 if estimator == "minmax" else HISTOGRAM_BINS
        observed = calibrate(prog, function_name, sequences, names, precision, progress, histogram_bins=bins)
        records, nonfinite, sample_count = dict(observed.records), observed.nonfinite, len(sequences)
    else:
        from milcompress.reference.statistics import RangeRecord

        records = {name: RangeRecord(float(low), float(high), 0) for name, (low, high) in ranges.items()}
        nonfinite, sample_count = {}, 0

    chosen = {
        name: estimated_range(r.rmin, r.rmax, r.counts, r.limit, estimator, *_mode_and_dtype(selection, name), percentile)
        for name, r in records.items()
    }
    notes = {}
    for name, (low, high) in chosen.items() if ranges is None else ():  # ranges given are taken as they are
        var = selection.vars.get(name)
        if var is not None and var.child_ops and all(op.op_type == "softmax" for op in var.child_ops) and low < -max(high, SOFTMAX_DEPTH):
            chosen[name] = (-max(high, SOFTMAX_DEPTH), high)
            notes[name] = (f"read by softmax only: range clipped below at {chosen[name][0]:.4g} (calibrated {low:.4g}, an additive mask); "
                           f"clipped values still weigh under e^-{SOFTMAX_DEPTH:g} of their row's largest")
    records = {name: dataclasses.replace(r, rmin=chosen[name][0], rmax=chosen[name][1], counts=None) for name, r in records.items()}
    for group in groups:
        seen = [records[name] for name in group if name in records]
        if seen:
            low, high = min(r.rmin for r in seen), max(r.rmax for r in seen)
            for name in group:
                if name in records:
                    records[name] = dataclasses.replace(records[name], rmin=low, rmax=high)

    warnings = [f"{name}: {count:,} non-finite values seen in calibration, left out of its range" for name, count in nonfinite.items()]
    plan: List[Tuple[str, ActivationQuantization]] = []
    skipped = list(selection.skipped)
    for name in selection.tensors:
        record = records.get(name)
        if record is None:
            skipped.append((name, "tensor", "calibration never saw a finite value of it"))
            continue
        if record.rmin == record.rmax == 0.0:
            skipped.append((name, "tensor", "calibration saw only zeros (a state read from zero states? calibrate with sequences of calls)"))
            continue
        setting = selection.settings[name]
        plan.append((name, activation_qparams(record.rmin, record.rmax, setting.mode, setting.dtype, scale_dtype_of(selection.vars[name]))))

    tensors = _rewrite(function, selection, plan, notes)
    report = ActivationReport(function_name, sample_count, tensors, skipped, warnings)
    for other in prog.functions:
        if other != function_name:
            report.warnings.append(f"function '{other}' left float: calibration ran function '{function_name}' only")
    attach(prog, report, _ATTRIBUTE)
    return report


def _mode_and_dtype(selection: Selection, name: str) -> Tuple[str, str]:
    setting = selection.settings.get(name, ActivationSetting())
    return setting.mode, setting.dtype


def _rewrite(block: Block, selection: Selection, plan, notes: Mapping[str, str]) -> List[QuantizedTensor]:
    """One pair per planned tensor before its first quantized reader; those readers move to it.
    `notes`: why a tensor's range is not its estimator's, by name."""
    order = {op: index for index, op in enumerate(block.operations)}
    done = []
    for name, params in plan:
        var, uses = selection.vars[name], selection.tensors[name]
        first = min((op for op, _, _ in uses), key=order.__getitem__)
        dequantized = emit_quantize_pair(var, params, first, name)
        copy_scope_info(var, dequantized)
        by_op: Dict[Operation, List[Use]] = defaultdict(list)
        for use in uses:
            by_op[use[0]].append(use)
        for op, op_uses in by_op.items():
            changes = {}
            for _, input_name, position in op_uses:
                current = changes.get(input_name, op.inputs[input_name])
                if position is None:
                    changes[input_name] = dequantized
                else:
                    items = list(current)
                    items[position] = dequantized
                    changes[input_name] = tuple(items)
            inputs = dict(op.inputs)
            inputs.update(changes)
            op.set_inputs(**{k: v for k, v in inputs.items()})
        done.append(QuantizedTensor(
            name, selection.kinds[name], len(uses), params.rmin, params.rmax, float(params.scale),
            None if params.zero_point is None else int(params.zero_point), params.dtype, notes.get(name, ""),
        ))
    return done


_ATTRIBUTE = "_milcompress_activation_reports"


def activation_reports_of(prog) -> List[ActivationReport]:
    return reports_of(prog, _ATTRIBUTE)


# -- the registered pass ----------------------------------------------------------------------


def parse_activation_config(name: str, value) -> ActivationConfig:
    """An activation config object, or "int8" / "uint8" (linear_symmetric everywhere)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("int8", "uint8"):
            raise ConfigError(f"{name}: expected int8 or uint8 (or a config object), got {value!r}", field=name)
        return ActivationConfig(global_config=ActivationSetting(dtype=value.strip().lower()))
    return ActivationConfig.of(value)


def _parse_calibration(name: str, value):
    """Calibration samples: an .npz path (arrays stacked along a new first axis), a dict of such
    arrays, or coremltools' list of dicts; None when unset."""
    if value is None or (isinstance(value, str) and value == ""):
        return None
    if isinstance(value, str):
        from milcompress.packages import load_arrays

        return load_arrays(value)
    return value


class QuantizeActivations(AbstractGraphPass):
    """milcompress::quantize_activations: int8 activations, calibrated quantize/dequantize pairs (iOS17; needs calibration).

    Options (objects or strings, as `PassPipeline.set_options` passes them):
    - config: "int8" (default), "uint8", or a coremltools OptimizationConfig of
      OpLinearQuantizerConfig (our LinearQuantizeConfig too);
    - calibration: an .npz path of inputs stacked along a new first axis, or samples (required);
    - precision: the executor's precision for calibration, float32 (default) or float16;
    - estimator: percentile (default), minmax (coremltools') or mse: how each range is chosen;
    - percentile: for the percentile estimator (default 99.99);
    - report_path: also write the JSON report there.
    """

    PASS_ID = PASS_ID

    config = PassOption(parse_activation_config, default=ActivationConfig())
    calibration = PassOption(_parse_calibration)
    precision = PassOption(lambda name, value: parse_choice(name, value, ("float32", "float16")), default="float32")
    estimator = PassOption(lambda name, value: parse_choice(name, value, RANGE_ESTIMATORS), default=DEFAULT_ESTIMATOR)
    percentile = PassOption(lambda name, value: parse_float(name, value, 50.0, 100.0), default=99.99)
    report_path = PassOption(parse_path)

    def __init__(self, config=None, calibration=None):
        super().__init__()
        self.config = "int8" if config is None else config
        self.calibration = calibration
        self.progress: Optional[Progress] = None

    def apply(self, prog: Program) -> None:
        report = quantize_program_activations(
            prog, self.config, self.calibration, precision=self.precision, estimator=self.estimator, percentile=self.percentile, progress=self.progress
        )
        if self.report_path:
            report.write(self.report_path)

    def __str__(self) -> str:
        return self.PASS_ID

