"""The compression passes: select weights, compute their compressed forms, rewrite, report.

`compress_program(prog, config)` does the work in three stages, never mutating a block while it
walks it:
1. select: every const of every function and nested block is a candidate; it gets a config
   (`CompressionConfig.resolve`) and is kept or skipped with the reason of the first skip rule
   that applies;
2. compute: each kept weight is compressed by the pure kernels of `ops/`, after fitting group and
   block sizes to its shape (recorded as a note), and checked against the program's opset, its
   dense size (a form that is not smaller is skipped) and the config's `min_snr_db`; nothing in
   the program has changed yet, so a precondition error (a form the opset cannot hold) leaves the
   program as it was;
3. rewrite: `lowering.lower` emits the constexpr ops, the const's uses move to them, and each
   block's replaced consts are removed at once.
It returns a `Report` and keeps it on the program.

What coremltools' passes do, ours do on the same programs: a program older than iOS16 is left as
it is, with a warning (and here a record per weight; the model-level functions in `api.py` load
such a model at iOS16, as coremltools' do); `joint_compression=True` on an iOS16/iOS17 program is
coremltools' ValueError; `fake_compression=True` stores the decompressed values as a dense const.

The registered passes (`milcompress::compress_weights` and its narrower siblings) are thin
wrappers with typed options settable from `PassPipeline.set_options`, and are constructed as
coremltools constructs its own: `PalettizeWeights(config=..., fake_compression=...)`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np

from milcompress._coremltools import IOS16, IOS18, AbstractGraphPass, Program, building_in, opset_of, target_name
from milcompress.config import (
    PALETTE_NBITS,
    AlgorithmConfig,
    CompressionConfig,
    JointConfig,
    LinearQuantizeConfig,
    MagnitudePruneConfig,
    PalettizeConfig,
    ThresholdPruneConfig,
    kmeans_workers_hint,
)
from milcompress.errors import ConfigError, OutputError, PassError, PreconditionError
from milcompress.lowering import config_required_target, is_constexpr, lower, lower_fake, opset_error, read_back, required_target
from milcompress.ops import CompressedForm, describe, further_compression_problem
from milcompress.ops.jobs import Attempt, CompressJob, compress_attempts
from milcompress.ops._arrays import largest_divisor_at_most
from milcompress.ops.metrics import clipped_outlier
from milcompress.ops.palettize import largest_group_size
from milcompress.parallel import InProcess, check_workers, executor_for
from milcompress.passes.graph import ProgramGraph
from milcompress.progress import Progress, as_progress
from milcompress.storage import ScratchSpace, restored, scratch_of
from milcompress.passes.options import PassOption, parse_bool, parse_choice, parse_compression_config, parse_path
from milcompress.passes.report import COMPRESSED, SKIPPED, ConstRecord, Report, attach
from milcompress.passes.streaming import keep_form, spill_emitted
from milcompress.passes.skip_rules import CONFIG_RULES, SELECTION_RULES, Candidate, block_output, first_reason, non_finite
from milcompress.passes.weights import WeightLayout, common_layout

logger = logging.getLogger(__name__)

ALL_CONFIGS = (MagnitudePruneConfig, ThresholdPruneConfig, PalettizeConfig, LinearQuantizeConfig, JointConfig)

JOINT_NEEDS_IOS18 = (
    "Joint compression is only supported since iOS18. Please re-convert your model with "
    "minimum_deployment_target set to at least ct.target.iOS18."
)


@dataclasses.dataclass
class _Plan:
    """A weight that will be compressed: its candidate, form, record and the config used."""

    candidate: Candidate
    params: CompressedForm
    record: ConstRecord


def compress_program(
    prog: Program,
    config,
    *,
    on_unsupported: str = "error",
    snr_fallback: bool = False,
    pass_name: str = "milcompress::compress_weights",
    progress: Optional[Progress] = None,
    joint_compression: bool = False,
    fake_compression: bool = False,
    shrink_to_fit: bool = True,
    strict: bool = False,
    workers: Optional[int] = None,
    client=None,
) -> Report:
    """Compress the weights of `prog` in place as `config` says; return (and keep) the report.

    The weights' forms are computed as independent jobs (`ops.jobs.compress_attempts`) by the
    executor `milcompress.parallel.executor_for(workers, client)` chooses: `workers=None` a pool
    of local processes sized to the machine where the weights are big enough to repay it,
    `workers=1` this process, `client` a Dask cluster. The program, the report and the progress
    are the same whichever ran them.

    `on_unsupported="skip"` records, instead of raising, weights whose requested form the
    program's opset cannot hold. `snr_fallback=True` retries a weight that misses its config's
    `min_snr_db` with gentler forms (more bits, less sparsity) before skipping it. `progress`
    (a `milcompress.progress.Progress`) hears of each weight as it is computed.

    `joint_compression=True` (coremltools' option of the same name) also takes weights already
    compressed, and compresses them again where coremltools 9.0 has a joint form: sparse weights
    get their non-zeros palettized or quantized; quantized or palettized weights get pruned; a
    palettized weight gets its table quantized; a quantized weight gets its integers palettized.
    Any other already compressed weight is recorded
    with the reason, and so are dense weights a prune config would take (coremltools' joint
    pruning prunes compressed weights only). It needs iOS18 (coremltools' ValueError otherwise).

    `fake_compression=True` (coremltools' pass option): compress, then store the decompressed
    values as a dense const. `shrink_to_fit=False`: a group or block size that does not divide a
    weight is not shrunk to fit (coremltools' behaviour: the weight is left alone, with a record).

    An `op_name_configs` or `op_type_configs` entry that matches no weight, and no op or op type
    reading one, is a warning (logged, and kept in the report with the closest names), or with
    `strict=True` a ConfigError before anything is computed.
    """
    config = CompressionConfig.of(config)
    if joint_compression:
        _check_joint_opsets(prog)
    graph = ProgramGraph(prog)
    records: Dict[object, ConstRecord] = {}
    kept = []
    chains = _compressed_weights(graph) if joint_compression else {}
    sources = graph.consts() + list(chains)
    names, op_types = set(), set()  # of the weights and the ops reading them: what config entries can match
    for const in sources:
        candidate, record = _select(
            const, graph, config, chains.get(const), on_unsupported=on_unsupported, fake_compression=fake_compression, joint_compression=joint_compression
        )
        records[const] = record
        if candidate.config_source is not None:
            names.add(const.name)
            names.update(u.op.name for u in candidate.weight_uses)
            op_types.update(u.op.op_type for u in candidate.weight_uses)
        if record.action != SKIPPED:
            kept.append((candidate, record))
    warnings = config.unmatched(names, op_types)
    if strict and warnings:
        raise ConfigError(f"{pass_name}: {warnings[0]}" + (f"; and {len(warnings) - 1} more" if len(warnings) > 1 else ""), field="strict")
    for warning in warnings:
        logger.warning("%s: %s", pass_name, warning)
    too_old = [name for name, function in prog.functions.items() if opset_of(function) < IOS16]
    if too_old and records:
        logger.warning(
            "%s: the program's opset is older than iOS16 (functions %s): no weight compressed, as coremltools' passes skip such "
            "programs too (reasons in the report)", pass_name, ", ".join(too_old)
        )
    plans: List[_Plan] = []
    scratch = scratch_of(prog)  # a program read on demand: forms and emitted consts go to disk
    prepared = [_prepare(candidate, record, snr_fallback, shrink_to_fit=shrink_to_fit) for candidate, record in kept]
    kept.clear()
    jobs = [(candidate, job) for candidate, _, job, _ in prepared if job is not None]
    work = sum(_elements(candidate) for candidate, _ in jobs)
    executor = executor_for(workers, client, work=work, jobs=len(jobs)) if portable(c for _, job in jobs for c in job.configs) else InProcess()
    with as_progress(progress).stage(pass_name.split("::")[-1], total=len(prepared), unit="weights") as advance, executor:
        # Each job gets its weight's value only as the executor takes it: a bounded number at a time.
        results = executor.map(compress_attempts, (dataclasses.replace(job, weight=candidate.value) for candidate, job in jobs))
        for candidate, record, job, notes in prepared:
            if job is not None:
                plan = _decide(candidate, record, job, next(results), notes, on_unsupported, fake_compression=fake_compression)
                if plan is not None:
                    plans.append(dataclasses.replace(plan, params=keep_form(scratch, plan.params)))
            advance(candidate.const.name)
    prepared.clear()  # the plans now hold the only references to the dense values
    _rewrite(plans, fake=fake_compression, scratch=scratch)
    report = Report(pass_name, [records[c] for c in sources], warnings=warnings)
    attach(prog, report)
    totals = report.totals()
    logger.info(
        "%s: %d of %d consts compressed, %s -> %s bytes", pass_name, totals["compressed"], totals["candidates"], totals["bytes_before"], totals["bytes_after"]
    )
    return report


def _check_joint_opsets(prog: Program) -> None:
    """coremltools' ValueError for joint compression on an iOS16/iOS17 function (older programs
    are skipped, as every compression pass skips them)."""
    for name, function in prog.functions.items():
        opset = opset_of(function)
        if IOS16 <= opset < IOS18:
            raise PreconditionError(f"{JOINT_NEEDS_IOS18} (function '{name}' targets {target_name(opset)})", minimum_deployment_target="iOS18")


OPSET_TOO_OLD = "opset too old"


def _record(candidate: Candidate, action: str, reason: Optional[str] = None) -> ConstRecord:
    value = candidate.value
    return ConstRecord(
        name=candidate.const.name,
        function=candidate.function,
        consumers=[u.describe() for u in candidate.uses],
        shape=[int(d) for d in value.shape],
        dtype=str(value.dtype),
        action=action,
        reason=reason,
        bytes_before=candidate.stored,
        bytes_after=candidate.stored,
    )


def _compressed_weights(graph: ProgramGraph) -> dict:
    """The last op of every constexpr chain read as a weight, with what it holds (joint compression)."""
    found = {}
    for op in graph.ops():
        if is_constexpr(op) and op.op_type != "constexpr_cast" and any(not is_constexpr(c) for v in op.outputs for c in v.child_ops):
            found[op] = read_back(op.outputs[0])
    return found


def _select(
    const,
    graph: ProgramGraph,
    config: CompressionConfig,
    chain=None,
    on_unsupported: str = "error",
    fake_compression: bool = False,
    joint_compression: bool = False,
) -> Tuple[Candidate, ConstRecord]:
    """`chain`: the ReadBack of a compressed chain (joint compression); None for a const.

    A config the program's opset cannot take at all (coremltools refuses it for every weight it
    would compress, whatever its shape: per_grouped_channel or vector palettization, per_block or
    4-bit quantization before iOS18) raises here, before any work, or is recorded with
    `on_unsupported="skip"`; that includes a weight coremltools would compress and we leave
    alone because it is also a block output, so both libraries raise on the same programs."""
    if chain is None:
        value, stored, prior = None, None, None  # read from the const whenever asked
    else:
        value, prior = chain.dense, chain.form
        stored = int(prior.nbytes) if prior is not None else sum(int(np.asarray(c.outputs[0].val).nbytes) for c in _chain_consts(const))
    candidate = Candidate(const, graph.function_of[const], value, tuple(graph.uses(const)), stored_bytes=stored, prior=prior)
    reason = first_reason(candidate, SELECTION_RULES)
    # A weight also returned as a block output: left alone, but checked as coremltools checks it.
    op_uses = tuple(u for u in candidate.uses if u.op is not None)
    also_output = reason is not None and reason == block_output(candidate) and bool(op_uses)
    also_output = also_output and first_reason(dataclasses.replace(candidate, uses=op_uses), SELECTION_RULES) is None
    if reason is None and config.op_selector is not None:
        if const.op_type != "const":
            reason = "op_selector (the deprecated ct.compression_utils form) chooses among const ops only"
        elif not config.op_selector(const):
            reason = "op_selector returned False (the deprecated ct.compression_utils form)"
    if reason is None or also_output:
        consumers = [(u.op.name, u.op.op_type) for u in candidate.weight_uses]
        algorithm, source = config.resolve(const.name, consumers)
        candidate = dataclasses.replace(candidate, config=algorithm, config_source=source)
        config_reason = first_reason(candidate, CONFIG_RULES)
        have = opset_of(const)
        if (config_reason is None or config_reason == non_finite(candidate)) and IOS16 <= have and candidate.prior is None:
            need, why = config_required_target(candidate.config, fake=fake_compression)
            if have < need:
                if on_unsupported != "skip":
                    raise opset_error(const.name, why, need, have)
                config_reason = f"{OPSET_TOO_OLD}: {why} needs {target_name(need)}, the program targets {target_name(have)}"
        reason = reason or config_reason
    if reason is None and opset_of(const) < IOS16:
        have = target_name(opset_of(const))
        reason = (
            f"{OPSET_TOO_OLD}: the program targets {have} and compressed weights need iOS16 (coremltools' passes skip such "
            "programs too); re-convert with minimum_deployment_target=ct.target.iOS16 or later, or compress the saved model "
            "with milcompress.palettize_weights and its siblings, which load it at iOS16 as coremltools does"
        )
    if reason is None and joint_compression and not candidate.is_chain and isinstance(candidate.config, (MagnitudePruneConfig, ThresholdPruneConfig)):
        reason = (
            "joint compression prunes weights already quantized or palettized, not dense ones (as coremltools' "
            "prune_weights does with joint_compression=True); prune it without joint_compression"
        )
    if reason is None and candidate.is_chain:
        if prior is None:
            reason = f"joint compression: stored as {' -> '.join(chain.chain)}, a chain milcompress does not read as a form"
        else:
            reason = further_compression_problem(prior, candidate.config)
    return candidate, _record(candidate, SKIPPED if reason else COMPRESSED, reason)


def _chain_consts(op) -> list:
    """Every const feeding a constexpr chain ending at `op`."""
    found = []
    for value in op.inputs.values():
        producer = getattr(value, "op", None)
        if producer is None:
            continue
        if producer.op_type == "const":
            found.append(producer)
        elif is_constexpr(producer):
            found.extend(_chain_consts(producer))
    return found


def _skip(record: ConstRecord, reason: str) -> None:
    record.action, record.reason = SKIPPED, reason


def _prepare(
    candidate: Candidate, record: ConstRecord, snr_fallback: bool, *, shrink_to_fit: bool = True
) -> Tuple[Candidate, ConstRecord, Optional[CompressJob], List[List[str]]]:
    """The job that computes `candidate`'s forms (the config fitted to its shape, then with
    `snr_fallback` the gentler ones), with each form's notes; no job (and a skip recorded) where
    its layout is unknown and the config needs it. The job's weight is left out (None): it is
    read when the job is handed to the executor."""
    config, shape = candidate.config, _shape(candidate)
    layout, disagreement = common_layout(candidate.weight_uses, len(shape))
    if layout is None or layout.output_axis is None:
        if needs_axes(config):
            _skip(record, disagreement or "channel axes unknown: a reshape stands between the const and its op")
            return candidate, record, None, []
        layout = WeightLayout(0, min(1, len(shape) - 1))
    fitted = [fit_to_shape(attempt, shape, layout, shrink=shrink_to_fit) for attempt in [config] + (gentler(config) if snr_fallback else [])]
    job = CompressJob(None, tuple(c for c, _ in fitted), layout.output_axis, layout.input_axis, candidate.stored, config.min_snr_db, candidate.prior)
    return candidate, record, job, [notes for _, notes in fitted]


def _shape(candidate: Candidate) -> Tuple[int, ...]:
    """The weight's shape, from its op's output (its value is not read)."""
    return tuple(int(d) for d in candidate.const.outputs[0].shape)


def _elements(candidate: Candidate) -> int:
    return int(np.prod(_shape(candidate), dtype=np.int64))


def _decide(
    candidate: Candidate, record: ConstRecord, job: CompressJob, attempts: List[Attempt], notes: List[List[str]], on_unsupported: str,
    *, fake_compression: bool = False
) -> Optional[_Plan]:
    """The plan for `candidate` from the forms its job computed, in order: the first the opset can
    hold, smaller than the weight as stored, that reaches the config's `min_snr_db`; or a skip
    recorded with the reason (a PreconditionError where the opset cannot hold the form and
    `on_unsupported` is not "skip")."""
    const, config = candidate.const, candidate.config
    minimum = config.min_snr_db
    snr = None
    for attempt, attempt_notes in zip(attempts, notes):
        if attempt.params is None:
            _skip(record, attempt.reason)
            return None
        params = attempt.params
        need, why = required_target(params)
        have = opset_of(const)
        if have < need and not fake_compression:  # a fake form is written dense: any opset holds it
            if on_unsupported == "skip":
                _skip(record, f"{OPSET_TOO_OLD}: {why} needs {target_name(need)}, the program targets {target_name(have)}")
                return None
            raise opset_error(const.name, why, need, have)
        if params.nbytes >= candidate.stored:
            now = describe(candidate.prior) if candidate.prior is not None else "dense"
            _skip(record, f"{describe(params)} ({params.nbytes:,} bytes) would not be smaller than {now} ({candidate.stored:,} bytes)")
            return None
        snr = attempt.snr_db
        if minimum is not None and snr < minimum:
            continue
        if attempt is not attempts[0]:
            attempt_notes = attempt_notes + [f"fell back to {describe(params)} to reach min_snr_db {minimum:g}"]
        record.form, record.notes, record.snr_db, record.bytes_after = describe(params), attempt_notes, snr, int(params.nbytes)
        record.warnings = clipped_warnings(attempt.clipped)
        if fake_compression:
            record.notes.append("fake_compression: stored as its decompressed dense values")
            record.bytes_after = int(candidate.value.nbytes)
        return _Plan(candidate, params, record)
    tried = "" if len(job.configs) == 1 else f" (and with {len(job.configs) - 1} gentler forms)"
    _skip(record, f"SNR {snr:.1f} dB < min_snr_db {minimum:g}{tried}")
    return None


def portable(configs) -> bool:
    """Whether `configs` can travel to worker processes: not a custom palette's `lut_function`
    (the caller's code, perhaps a lambda, a notebook's or a script's function the workers cannot
    import), whose pass then runs in this process."""
    for config in configs:
        for part in (config, getattr(config, "then", None)):  # a joint config's second step too
            if getattr(part, "lut_function", None) is not None:
                logger.debug("a custom lut_function stays in this process: its pass runs here")
                return False
    return True


def outlier_warnings(value: np.ndarray, dense: np.ndarray) -> List[str]:
    """A warning naming the element a compressed form clipped, if it clipped an outlier
    (`ops.metrics.clipped_outlier`): the weight's SNR does not show it."""
    return clipped_warnings(clipped_outlier(value, dense))


def clipped_warnings(clipped) -> List[str]:
    """The warning of `outlier_warnings` from `clipped_outlier`'s answer (None: none)."""
    if clipped is None:
        return []
    index, original, back = clipped
    return [f"clipped outlier: element {list(index)} = {original:.6g} came back as {back:.6g}"]


def _rewrite(plans: List[_Plan], fake: bool = False, scratch: Optional[ScratchSpace] = None) -> None:
    """Lower each plan and retire its const at once, so the dense value, the computed form and the
    emitted ops are never all held for every weight (peak memory stays near one weight's worth).
    `fake`: store each form's decompressed values as a dense const (coremltools' fake_compression).
    `scratch` (a program read on demand): the plans' forms are on disk, and the emitted consts go
    there as they are made."""
    by_block = defaultdict(list)
    for plan in plans:
        by_block[plan.candidate.const.enclosing_block].append(plan)
    plans.clear()
    for block, block_plans in by_block.items():
        with building_in(block):
            while block_plans:
                plan = block_plans.pop(0)
                const = plan.candidate.const
                try:
                    params = restored(plan.params)
                    var = lower_fake(params, const, plan.candidate.value.dtype) if fake else lower(params, const)
                    del params
                    spill_emitted(scratch, var)
                    block.replace_uses_of_var_after_op(
                        anchor_op=const, old_var=const.outputs[0], new_var=var, no_check_var_types=True, force_replace=True
                    )
                except (PreconditionError, OutputError):  # OutputError: the scratch space's disk is full
                    raise
                except Exception as error:  # a bug, not a user error: name the const
                    raise PassError(f"const '{const.name}': rewriting as {plan.record.form} failed: {error}") from error
                _remove_with_orphans(block, const)


def _remove_with_orphans(block, op) -> None:
    """Remove `op`, then every const or constexpr op of its chain left with no reader."""
    producers = list(dict.fromkeys(v.op for v in op.inputs.values() if getattr(v, "op", None) is not None))
    block.remove_ops([op])
    for producer in producers:
        if producer.op_type != "const" and not is_constexpr(producer):
            continue
        if producer.enclosing_block is block and not any(v.child_ops or v.consuming_blocks for v in producer.outputs):
            _remove_with_orphans(block, producer)


def needs_axes(config: AlgorithmConfig) -> bool:
    """Whether `config` needs to know which axes hold output and input channels."""
    if isinstance(config, JointConfig):
        return needs_axes(config.then)
    if isinstance(config, PalettizeConfig):
        return config.granularity != "per_tensor" or config.cluster_dim > 1 or config.enable_per_channel_scale
    if isinstance(config, LinearQuantizeConfig):
        return config.granularity != "per_tensor"
    return False


def fit_to_shape(config: AlgorithmConfig, shape, layout: WeightLayout, shrink: bool = True) -> Tuple[AlgorithmConfig, List[str]]:
    """`config` with group and block sizes shrunk to the largest that divide `shape`, and notes.

    Not shrunk when `shrink` is false or the config's own `shrink_to_fit` is (coremltools'
    behaviour): the kernel then finds the size does not divide, and the weight is skipped."""
    if isinstance(config, JointConfig):
        then, notes = fit_to_shape(config.then, shape, layout, shrink)
        return dataclasses.replace(config, then=then), notes
    if not (shrink and getattr(config, "shrink_to_fit", True)):
        return config, []
    if isinstance(config, PalettizeConfig) and config.granularity == "per_grouped_channel" and config.group_size:
        axis = layout.output_axis if config.channel_axis is None else config.channel_axis % len(shape)
        channels = shape[axis]
        if channels % config.group_size or config.group_size > channels:
            group = largest_group_size(channels, config.group_size, config.cluster_dim)
            if group is not None and group != config.group_size:
                note = f"group_size {config.group_size} -> {group}: {channels} channels on axis {axis} are not divisible by {config.group_size}"
                return dataclasses.replace(config, group_size=group), [note]
    if isinstance(config, LinearQuantizeConfig) and config.granularity == "per_block":
        if isinstance(config.block_size, int):
            axis, dim = layout.input_axis, shape[layout.input_axis]
            if config.block_size and dim % config.block_size:
                block = largest_divisor_at_most(dim, config.block_size)
                note = f"block_size {config.block_size} -> {block}: input axis {axis} has {dim} channels"
                return dataclasses.replace(config, block_size=block), [note]
        elif len(config.block_size) == len(shape):
            sizes, notes = [], []
            for axis, (size, dim) in enumerate(zip(config.block_size, shape)):
                if size and dim % size:
                    fitted = largest_divisor_at_most(dim, size)
                    notes.append(f"block_size[{axis}] {size} -> {fitted}: axis {axis} has {dim}")
                    size = fitted
                sizes.append(size)
            if notes:
                return dataclasses.replace(config, block_size=tuple(sizes)), notes
    return config, []


def gentler(config: AlgorithmConfig) -> List[AlgorithmConfig]:
    """Forms that keep more of the weight than `config`, mildest last."""
    if isinstance(config, PalettizeConfig) and config.nbits is not None:
        return [dataclasses.replace(config, nbits=b) for b in PALETTE_NBITS if b > config.nbits]
    if isinstance(config, LinearQuantizeConfig):
        steps = []
        if config.granularity == "per_tensor":
            steps.append(dataclasses.replace(config, granularity="per_channel"))
        if config.nbits == 4:
            steps.append(dataclasses.replace(config, dtype=config.dtype.replace("4", "8")))
        return steps
    if isinstance(config, MagnitudePruneConfig) and config.target_sparsity is not None:
        return [dataclasses.replace(config, target_sparsity=config.target_sparsity * f) for f in (0.75, 0.5, 0.25)]
    if isinstance(config, JointConfig):
        return [dataclasses.replace(config, then=t) for t in gentler(config.then)] + [
            dataclasses.replace(config, prune=p) for p in gentler(config.prune)
        ]
    return []


class CompressWeights(AbstractGraphPass):
    """milcompress::compress_weights: compress weights as the `config` option says.

    Options (objects or strings, as `PassPipeline.set_options` passes them):
    - config: a CompressionConfig, an algorithm config, a coremltools OptimizationConfig, or a
      YAML path or text;
    - on_unsupported: "error" (default) or "skip", for forms the program's opset cannot hold;
    - snr_fallback: retry weights below min_snr_db with gentler forms (default false);
    - report_path: also write the JSON report there;
    - joint_compression: also compress weights already compressed, where coremltools has a joint
      form (coremltools' option of the same name; default false; needs iOS18);
    - fake_compression: store each compressed weight's decompressed values as a dense const
      (coremltools' option of the same name; default false);
    - shrink_to_fit: shrink a group or block size that does not divide a weight to the largest
      that does (default true); false gives coremltools' behaviour, the weight left alone;
    - strict: an op_name_configs / op_type_configs entry that matches nothing is an error rather
      than a warning (default false);
    - workers: how many processes compute the weights' forms (default: one per core where the
      weights are big enough, see `milcompress.parallel`; 1: this process). Unset, a coremltools
      config's `num_kmeans_workers` above 1 is taken as the hint it is.
    `client` (an attribute, as `progress` is): a `dask.distributed` Client or scheduler address
    whose cluster computes them instead.

    Constructed as coremltools constructs its compression passes: `PalettizeWeights()`,
    `PalettizeWeights(config=OptimizationConfig(...))`, `PalettizeWeights(config, fake_compression=True)`;
    then `graph_pass.apply(prog)` or `graph_pass(prog)`.
    """

    PASS_ID = "milcompress::compress_weights"
    ACCEPTS: Tuple[type, ...] = ALL_CONFIGS
    DEFAULT: Optional[AlgorithmConfig] = None

    on_unsupported = PassOption(lambda name, value: parse_choice(name, value, ("error", "skip")), default="error")
    snr_fallback = PassOption(parse_bool, default=False)
    report_path = PassOption(parse_path)
    joint_compression = PassOption(parse_bool, default=False)
    fake_compression = PassOption(parse_bool, default=False)
    shrink_to_fit = PassOption(parse_bool, default=True)
    strict = PassOption(parse_bool, default=False)
    workers = PassOption(lambda name, value: check_workers(value, name))

    def __init__(self, config=None, fake_compression: bool = False):
        super().__init__()
        self._config = None if self.DEFAULT is None else CompressionConfig.of(self.DEFAULT)
        self._workers_hint: Optional[int] = None
        if config is not None:
            self.config = config
        self.fake_compression = fake_compression
        self.progress: Optional[Progress] = None  # set by callers that draw progress
        self.client = None  # set by callers that send the work to a Dask cluster

    @property
    def config(self) -> Optional[CompressionConfig]:
        return self._config

    @config.setter
    def config(self, value) -> None:
        config = parse_compression_config(value)
        for algorithm in config.algorithms():
            if not isinstance(algorithm, self.ACCEPTS):
                accepted = ", ".join(c.__name__ for c in self.ACCEPTS)
                raise ConfigError(
                    f"{self.PASS_ID} accepts {accepted}; got {type(algorithm).__name__} "
                    f"(coremltools: {type(self).__name__} only accept {accepted} type config)",
                    field="config",
                )
        self._config = config
        self._workers_hint = kmeans_workers_hint(value)

    def apply(self, prog: Program) -> None:
        if self._config is None:
            raise ConfigError(f"{self.PASS_ID}: no config set (use PassPipeline.set_options(..., {{'config': ...}}))", field="config")
        report = compress_program(
            prog,
            self._config,
            on_unsupported=self.on_unsupported,
            snr_fallback=self.snr_fallback,
            pass_name=self.PASS_ID,
            progress=self.progress,
            joint_compression=self.joint_compression,
            fake_compression=self.fake_compression,
            shrink_to_fit=self.shrink_to_fit,
            strict=self.strict,
            workers=self.workers if self.workers is not None else self._workers_hint,
            client=self.client,
        )
        if self.report_path:
            report.write(self.report_path)

    def __str__(self) -> str:
        return self.PASS_ID
