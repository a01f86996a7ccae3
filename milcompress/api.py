"""Python calls on whole models, with coremltools' signatures.

Each function takes an ML program `MLModel` (converted, or loaded from a saved .mlpackage) and
returns a new one; the input model is never modified. The report of what happened to every weight
stays reachable: `milcompress.report_of(new_model)`. `progress=True` draws a progress bar per stage
on stderr (or pass a `milcompress.progress.Progress`); coremltools' own bars stay silent.

As coremltools' functions do, the compressing ones load a model older than iOS16 (what
`ct.convert` gives without a `minimum_deployment_target`) at the iOS16 opset and return an iOS16
model. `shrink_to_fit=False` gives coremltools' exact group and block sizes (a weight they do not
divide is left alone, with a record) instead of shrinking them to fit.

Where the work runs (see `milcompress.parallel`): `workers=N` computes the weights' forms in N
local processes (1: in this one; default: one per core where the weights are big enough to
repay starting them); `client=` (a `dask.distributed` Client or a scheduler address) sends them
to a Dask cluster. The result is byte-identical whichever way. A coremltools config's
`num_kmeans_workers` above 1 is taken as `workers` when `workers` is not given.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from milcompress import _coremltools as ct_private
from milcompress.config import CompressionConfig
from milcompress.errors import ConfigError, ModelTypeError, OutputError
from milcompress.lowering import read_back
from milcompress.ops import describe
from milcompress.ops.activations import DEFAULT_ESTIMATOR
from milcompress.ops._arrays import unique_values
from milcompress.packages import program_of
from milcompress.passes import (
    CompressWeights,
    DecompressWeights,
    JointCompressWeights,
    LinearQuantizeWeights,
    PalettizeWeights,
    PruneWeights,
    reports_of,
)
from milcompress.passes.graph import walk_ops
from milcompress.progress import as_progress


def _derived(prog, mlmodel):
    """The model holding `prog`, made from `mlmodel`; it remembers which package `mlmodel` came
    from, so `save_model` refuses to write over it."""
    import tempfile

    from milcompress.packages import remember_source, write_failure

    failure = None
    try:
        new_model = ct_private.mlmodel_from_program(prog, like=mlmodel)
    except (OSError, RuntimeError) as error:  # writing coremltools' temporary package
        cause = write_failure(error, tempfile.gettempdir())
        if cause is None:
            raise
        failure = OutputError(tempfile.gettempdir(), cause)
    if failure is not None:  # raised here, without the original's frames: their temporary files go now
        raise failure
    remember_source(new_model, mlmodel)
    return new_model


def model_from_program(prog, like, progress=None):
    """An MLModel holding `prog`, made from `like` (see `_derived`); serialising its weights is a
    stage of its own for `progress`."""
    with as_progress(progress).stage("building the model", total=1, unit="model") as advance:
        model = _derived(prog, like)
        advance()
    return model


def _run(pass_class, mlmodel, config=None, progress=None, workers=None, client=None, **options):
    progress = as_progress(progress)
    prog = program_of(mlmodel, at_least_ios16=True)
    graph_pass = pass_class()
    if config is not None:
        graph_pass.config = config
    for name, value in options.items():
        setattr(graph_pass, name, value)
    if workers is not None:
        graph_pass.workers = workers
    if client is not None:
        graph_pass.client = client
    graph_pass.progress = progress
    graph_pass.apply(prog)
    return model_from_program(prog, mlmodel, progress)


def compress_weights(mlmodel, config, joint_compression: bool = False, *, on_unsupported: str = "error", snr_fallback: bool = False, shrink_to_fit: bool = True, strict: bool = False, progress=False, workers=None, client=None):
    """Compress with any mix of algorithms (a CompressionConfig, an algorithm config, or coremltools'
    OptimizationConfig). Config entries naming no weight, op or op type of the model are warned
    about and listed in `report_of(result).warnings`; `strict=True` makes them a ConfigError."""
    return _run(
        CompressWeights, mlmodel, config, progress, workers, client, on_unsupported=on_unsupported, snr_fallback=snr_fallback, joint_compression=joint_compression, shrink_to_fit=shrink_to_fit, strict=strict
    )


def palettize_weights(mlmodel, config, joint_compression: bool = False, *, on_unsupported: str = "error", snr_fallback: bool = False, shrink_to_fit: bool = True, strict: bool = False, progress=False, workers=None, client=None):
    """`joint_compression=True` (iOS18): weights already pruned get their non-zeros palettized, and
    weights already quantized (8-bit) get their integers palettized."""
    return _run(
        PalettizeWeights, mlmodel, config, progress, workers, client, on_unsupported=on_unsupported, snr_fallback=snr_fallback, joint_compression=joint_compression, shrink_to_fit=shrink_to_fit, strict=strict
    )


def prune_weights(mlmodel, config, joint_compression: bool = False, *, on_unsupported: str = "error", snr_fallback: bool = False, strict: bool = False, progress=False, workers=None, client=None):
    """`joint_compression=True` (iOS18): weights already quantized or palettized get pruned, keeping
    their integers or indices (coremltools' quantize -> prune and palettize -> prune)."""
    return _run(PruneWeights, mlmodel, config, progress, workers, client, on_unsupported=on_unsupported, snr_fallback=snr_fallback, joint_compression=joint_compression, strict=strict)


def linear_quantize_weights(mlmodel, config, joint_compression: bool = False, *, on_unsupported: str = "error", snr_fallback: bool = False, shrink_to_fit: bool = True, strict: bool = False, progress=False, workers=None, client=None):
    """`joint_compression=True` (iOS18): weights already pruned get their non-zeros quantized, and
    weights already palettized get their tables quantized (per tensor: int8/uint8 table entries,
    `constexpr_blockwise_shift_scale` feeding `constexpr_lut_to_dense`)."""
    return _run(
        LinearQuantizeWeights, mlmodel, config, progress, workers, client, on_unsupported=on_unsupported, snr_fallback=snr_fallback, joint_compression=joint_compression, shrink_to_fit=shrink_to_fit, strict=strict
    )


def joint_compress_weights(mlmodel, config, *, on_unsupported: str = "error", snr_fallback: bool = False, shrink_to_fit: bool = True, strict: bool = False, progress=False, workers=None, client=None):
    return _run(JointCompressWeights, mlmodel, config, progress, workers, client, on_unsupported=on_unsupported, snr_fallback=snr_fallback, shrink_to_fit=shrink_to_fit, strict=strict)


def compress_to_size(
    mlmodel,
    target_bits_per_weight: Optional[float] = None,
    *,
    target_bytes: Optional[int] = None,
    candidates=None,
    calibration=None,
    sensitivity_seconds: float = 0.0,
    bias_correction: bool = True,
    error_feedback: Optional[bool] = None,
    weight_threshold: int = 2048,
    synthetic_check: Optional[bool] = None,
    activations=None,
    progress=False,
    workers=None,
    client=None,
):
    """One compressed form per weight, chosen so the weights average `target_bits_per_weight` (or
    take `target_bytes`) with the least total error; see `milcompress.passes.size`. `calibration`:
    inputs (arrays by input name, stacked along a new first axis, or a list of dicts) for
    activation-aware errors and k-means and, unless `bias_correction=False`, for correcting each
    compressed layer's bias by the mean output shift its compression adds and, with
    error feedback (GPTQ), for re-encoding each matrix-like weight's chosen form (`error_feedback`:
    None, the default, for decoders only; True or False for any model);
    `sensitivity_seconds` > 0 also measures end-to-end sensitivity. Without calibration, a
    decoder (token ids in, logits out) is run on synthetic token ids instead, every weight's
    sensitivity measured on them (`synthetic_check`: None for decoders only, True to require it,
    False never); a decoder's every weight is measured unless `sensitivity_seconds` bounds it. `progress=True` draws
    a bar per stage (calibration, evaluation, sensitivity, rewrite, error feedback). `workers` and
    `client`: where the evaluation and the rewrite run, as for the other functions.
    `activations` ("int8", "uint8", or an activation config as `linear_quantize_activations` takes
    it) then quantizes activations too, calibrated on `calibration` (required then) with the
    chosen weights in place (`activation_report_of(result)`).
    The returned model's `report_of(...).summary` holds the choice made for every weight."""
    from milcompress.passes.size import compress_program_to_size

    progress = as_progress(progress)
    if activations is not None and calibration is None:
        raise ConfigError("compress_to_size(activations=...) needs calibration inputs to calibrate the activations on", field="calibration")
    prog = program_of(mlmodel, at_least_ios16=True)
    compress_program_to_size(
        prog,
        target_bits_per_weight=target_bits_per_weight,
        target_bytes=target_bytes,
        candidates=candidates,
        calibration=calibration,
        sensitivity_seconds=sensitivity_seconds,
        bias_correction=bias_correction,
        error_feedback=error_feedback,
        weight_threshold=weight_threshold,
        synthetic_check=synthetic_check,
        progress=progress,
        workers=workers,
        client=client,
    )
    if activations is not None:
        from milcompress.passes.activations import parse_activation_config, quantize_program_activations

        quantize_program_activations(prog, parse_activation_config("activations", activations), calibration, progress=progress)
    return model_from_program(prog, mlmodel, progress)


def linear_quantize_activations(
    mlmodel, config, sample_data, calibration_op_group_size: int = -1, *, precision: str = "float32", estimator: str = DEFAULT_ESTIMATOR, percentile: float = 99.99, progress=False
):
    """coremltools' `linear_quantize_activations`, calibrated on the reference executor (Linux too).

    `config`: coremltools' OptimizationConfig of OpLinearQuantizerConfig /
    OpActivationLinearQuantizerConfig (or None: linear_symmetric int8 everywhere); `sample_data`:
    coremltools' list of input dicts (a None key names a single-input model's input), or arrays
    stacked along a new first axis by input name. `calibration_op_group_size` is accepted for
    coremltools' signature and not needed: calibration keeps two numbers per activation and never
    builds a model with extra outputs. The same activations get quantize/dequantize pairs as
    coremltools chooses (see `passes/activations.py`); the model must be iOS17 or later.
    `estimator` ("percentile", the default: 99.99% of the values; "minmax", coremltools' choice;
    "mse") chooses each tensor's range from what calibration saw (`ops.activations.DEFAULT_ESTIMATOR`
    says why percentile).
    `activation_report_of(result)` says what was quantized and what was left float, and why."""
    from milcompress.passes.activations import quantize_program_activations

    if not isinstance(calibration_op_group_size, int) or calibration_op_group_size == 0 or calibration_op_group_size < -1:
        raise ConfigError(f"calibration_op_group_size: expected -1 or a positive integer, got {calibration_op_group_size!r}", field="calibration_op_group_size")
    progress = as_progress(progress)
    prog = program_of(mlmodel)
    quantize_program_activations(prog, config, sample_data, precision=precision, estimator=estimator, percentile=percentile, progress=progress)
    return model_from_program(prog, mlmodel, progress)


def activation_report_of(model):
    """The report of the last activation quantization of a model (or program); None if none ran."""
    from milcompress.passes.activations import activation_reports_of

    prog = ct_private.attached_program(model)
    reports = activation_reports_of(prog) if prog is not None else []
    return reports[-1] if reports else None


def decompress_weights(mlmodel, *, progress=False):
    """Every compressed weight back to a dense const (the model saved at iOS16 or later, as
    coremltools saves it)."""
    return _run(DecompressWeights, mlmodel, progress=progress)


def run_passes(mlmodel, passes, *, progress=None, save: bool = True, workers=None, client=None):
    """Apply `passes` (a spec string, PassSpec list, or pass ids) to a copy of `mlmodel`'s program.

    Returns (new model, reports); with save=False, (None, reports): a dry run. `progress` (True,
    or a `milcompress.progress.Progress`) hears of each pass's weights and of building the model.
    `workers` / `client`: where each milcompress pass computes its forms (a pass's own `workers`
    option, from its spec, takes precedence).
    """
    from milcompress.passes.spec import PassSpec, parse_passes

    specs = parse_passes(passes) if isinstance(passes, str) else [p if isinstance(p, PassSpec) else PassSpec(p) for p in passes]
    graph_passes = [spec.instantiate() for spec in specs]  # validate every option before any work
    progress = as_progress(progress)
    prog = program_of(mlmodel, at_least_ios16=True)
    for graph_pass in graph_passes:
        if hasattr(graph_pass, "progress"):
            graph_pass.progress = progress
        if hasattr(graph_pass, "client"):
            graph_pass.client = client
            if workers is not None and graph_pass.workers is None:
                graph_pass.workers = workers
        graph_pass.apply(prog)
    from milcompress.passes.activations import activation_reports_of

    reports = reports_of(prog) + activation_reports_of(prog)
    return (model_from_program(prog, mlmodel, progress) if save else None), reports


def inspect_model(mlmodel):
    """(each function's opset, every weight with how it is stored): see passes/inspect.py."""
    from milcompress.passes.inspect import inspect_program, opsets

    prog = program_of(mlmodel)
    return opsets(prog), inspect_program(prog)


def report_of(model):
    """The report of the last milcompress pass run on a model (or program); None if none ran."""
    prog = ct_private.attached_program(model)
    reports = reports_of(prog) if prog is not None else []
    return reports[-1] if reports else None


@dataclass
class OpMetadata:
    op_type: str
    name: str
    params_name_mapping: "OrderedDict[str, str]"


@dataclass
class WeightMetadata:
    """coremltools' CoreMLWeightMetaData fields (val, sparsity, unique_values, child_ops), plus how
    the weight is stored: `form` (None when dense), `nbytes` of its stored data, `bits_per_weight`.
    `unique_values` counts distinct values without sorting float16 (see the README's note on
    NumPy's float16 sort), so it can be lower than coremltools' count where NumPy's sort errs."""

    val: np.ndarray
    sparsity: float
    unique_values: int
    child_ops: List[OpMetadata]
    form: Optional[str]
    nbytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.val.size

    def __repr__(self) -> str:
        """One line: the value's shape and dtype, never the whole array."""
        readers = ", ".join(f"{c.op_type}({c.name})" for c in self.child_ops)
        return (
            f"WeightMetadata(val=<{self.val.dtype} array {'x'.join(map(str, self.val.shape))}>, form={self.form or 'dense'!r}, "
            f"bits_per_weight={self.bits_per_weight:.2f}, sparsity={self.sparsity:.3f}, unique_values={self.unique_values}, "
            f"child_ops=[{readers}])"
        )


def get_weights_metadata(mlmodel, weight_threshold: int = 2048) -> "OrderedDict[str, WeightMetadata]":
    """Every weight of at least `weight_threshold` elements, dense or compressed, keyed by the name
    of the op that produces it: for a dense weight its const op's name, the name coremltools'
    function uses and `op_name_configs` takes, with the same fields (`child_ops` lists every op
    reading it, each with its inputs held by such weights, by op name).

    Unlike coremltools' function (which lists const ops only, so a compressed weight appears as its
    LUT and indices), a compressed weight is one entry, keyed by the last op of its constexpr
    chain, with its decompressed value and its form.
    """
    prog = program_of(mlmodel)
    found: "OrderedDict[str, WeightMetadata]" = OrderedDict()

    def is_weight_value(value) -> bool:
        return isinstance(value, np.ndarray) and value.size >= weight_threshold and np.issubdtype(value.dtype, np.number)

    for op, _ in walk_ops(prog):
        if op.op_type != "const" and not op.op_type.startswith("constexpr_"):
            continue
        var = op.outputs[0]
        if op.op_type != "const" and all(c.op_type.startswith("constexpr_") for v in op.outputs for c in v.child_ops):
            continue  # an inner op of a chain: its weight is listed at the chain's end
        if op.op_type == "const" and var.child_ops and all(c.op_type.startswith("constexpr_") for c in var.child_ops):
            continue  # stored data of a compressed weight
        back = read_back(var)
        value = back.dense
        if not is_weight_value(value):
            continue
        child_ops = []
        for child in dict.fromkeys(var.child_ops):
            mapping = OrderedDict()
            for input_name, input_var in child.inputs.items():
                if isinstance(input_var, (list, tuple)):
                    continue
                held = input_var.val
                if held is None and _is_weight_var(input_var):
                    held = read_back(input_var).dense
                if is_weight_value(held):
                    mapping[input_name] = input_var.op.name
            child_ops.append(OpMetadata(child.op_type, child.name, mapping))
        found[op.name] = WeightMetadata(
            val=value,
            sparsity=float(np.sum(np.abs(value) <= 1e-12) / value.size),
            unique_values=int(len(unique_values(value))),
            child_ops=child_ops,
            form=None if back.form is None else describe(back.form),
            nbytes=int(back.form.nbytes) if back.form is not None else int(value.nbytes),
        )
    return found


def _is_weight_var(var) -> bool:
    """A var produced by a constexpr chain (its dense value is what it holds)."""
    return var.op is not None and var.op.op_type.startswith("constexpr_")


def compression_config(config) -> CompressionConfig:
    """Parse any accepted config form (for callers that want to validate early)."""
    return CompressionConfig.of(config)
