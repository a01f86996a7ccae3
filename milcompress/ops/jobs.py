"""Per-weight jobs: what the passes hand to an executor (`milcompress.parallel`).

A job is a small picklable dataclass; its function is a module-level function here, a pure
`ops/` computation that returns a small result (the forms, their errors, SNRs). Its weight is an
array or any object with a `load()` method returning one (a reference to weight storage on a
disk the workers share): it is loaded inside the job, wherever the job runs. Everything about the
program (opsets, records, the graph) stays with the pass: a job never sees MIL.

- `compress_attempts(CompressJob)`: the compressing passes' forms (with `snr_fallback`, the
  gentler forms in order, up to the first that reaches `min_snr_db`);
- `menu_forms(MenuJob)`: the size allocation's candidate forms of one weight, each with its
  stored bytes and error;
- `build_form(BuildJob)`: the form the size allocation chose, as weighed (a palette from its
  estimate's tables), with its SNR.

Pure numpy: this module never sees a MIL program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from milcompress.config import AlgorithmConfig, PalettizeConfig
from milcompress.errors import NotCompressible


def load_weight(weight) -> np.ndarray:
    """The array `weight` holds: `weight.load()` for a storage reference, else the array itself."""
    load = getattr(weight, "load", None)
    return np.asarray(load() if callable(load) else weight)


def weight_elements(weight) -> int:
    """How many elements `weight` (an array, or a reference with a `shape`) holds, without loading it."""
    shape = getattr(weight, "shape", None)
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else int(np.asarray(weight).size)


@dataclass(frozen=True)
class Attempt:
    """One form a `CompressJob` computed: `params` (None with `reason` where the weight could not
    take it), its SNR and the outlier it clipped (`ops.metrics.clipped_outlier`), both None
    where the form is not smaller than the weight as stored (so it is never written)."""

    params: Any = None
    reason: Optional[str] = None
    snr_db: Optional[float] = None
    clipped: Optional[Tuple[Tuple[int, ...], float, float]] = None


@dataclass(frozen=True)
class CompressJob:
    """Compress `weight` with `configs` in order (the config, then gentler ones), stopping at the
    first that cannot be computed, is not smaller than `stored` bytes, or reaches `min_snr_db`
    (None: the first). `prior`: the form the weight is stored in (joint compression)."""

    weight: Any
    configs: Tuple[AlgorithmConfig, ...]
    output_axis: int
    input_axis: int
    stored: int
    min_snr_db: Optional[float] = None
    prior: Any = None


def compress_attempts(job: CompressJob) -> List[Attempt]:
    from milcompress.ops import compress, compress_further, snr_db
    from milcompress.ops.metrics import clipped_outlier

    value = load_weight(job.weight)
    attempts = []
    for config in job.configs:
        try:
            if job.prior is not None:
                params = compress_further(job.prior, config, output_axis=job.output_axis, input_axis=job.input_axis)
            else:
                params = compress(value, config, output_axis=job.output_axis, input_axis=job.input_axis)
        except NotCompressible as error:
            attempts.append(Attempt(reason=error.reason))
            break
        if params.nbytes >= job.stored:
            attempts.append(Attempt(params))
            break
        dense = params.decompress()
        snr = snr_db(value, dense)
        attempts.append(Attempt(params, snr_db=snr, clipped=clipped_outlier(value, dense)))
        del dense
        if job.min_snr_db is None or not snr < job.min_snr_db:
            break
    return attempts


@dataclass(frozen=True)
class MenuJob:
    """Every form in `candidates` ((label, config fitted to the weight's shape)) of `weight`:
    k-means scalar palettes estimated together per layout (`ops.palettize.estimate_palettes`,
    graded groups sampled beyond `sample_values`), the others computed and decompressed.
    `column_weights`: activation mean squares broadcasting over the weight (None: data-free)."""

    weight: Any
    candidates: Tuple[Tuple[str, AlgorithmConfig], ...]
    output_axis: int
    input_axis: int
    column_weights: Optional[np.ndarray] = None
    sample_values: Optional[int] = None


@dataclass(frozen=True)
class MenuForm:
    """A candidate form: `form` (a `PaletteEstimate`, or the computed form), its stored bytes and
    its error (the outlier-aware, activation-weighted noise-to-signal ratio)."""

    label: str
    form: Any
    nbytes: int
    error: float


def _importance(value: np.ndarray, column_weights: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if column_weights is None else np.broadcast_to(column_weights, value.shape)


def menu_forms(job: MenuJob) -> List[MenuForm]:
    """The candidates the weight can take, in the order of `job.candidates` (the others left
    out): what the size allocation weighs for one weight."""
    from milcompress.ops import compress
    from milcompress.ops.kmeans import outlier_scale
    from milcompress.ops.metrics import noise_to_signal
    from milcompress.ops.palettize import estimate_layout, estimate_palettes

    value = load_weight(job.weight)
    importance = _importance(value, job.column_weights)
    layouts: dict = {}
    for label, config in job.candidates:
        key = estimate_layout(config) if isinstance(config, PalettizeConfig) else None
        if key is not None:
            layouts.setdefault(key, []).append((label, config))
    estimates = {}  # label -> its PaletteEstimate, or None where its layout does not fit the weight
    for members in layouts.values():
        try:
            found = estimate_palettes(value, [config for _, config in members], channel_axis=job.output_axis,
                                      importance=importance, sample_values=job.sample_values)
        except NotCompressible:
            found = [None] * len(members)
        estimates.update(zip((label for label, _ in members), found))
    scale = None
    forms = []
    for label, config in job.candidates:
        if label in estimates:
            form = estimates[label]
            if form is None:
                continue
            forms.append(MenuForm(label, form, int(form.nbytes), float(form.error)))
            continue
        try:
            form = compress(value, config, output_axis=job.output_axis, input_axis=job.input_axis, importance=importance)
        except NotCompressible:
            continue
        if scale is None:
            scale = outlier_scale(value, job.column_weights)
        error = noise_to_signal(value, form.decompress(), job.column_weights, outlier_scale=scale)
        forms.append(MenuForm(label, form, int(form.nbytes), float(error)))
    return forms


@dataclass(frozen=True)
class BuildJob:
    """The form `config` gives `weight`, as the size allocation weighed it: from `estimate`'s
    tables for an estimated palette (`ops.palettize.palettize_estimated`), else computed."""

    weight: Any
    config: AlgorithmConfig
    output_axis: int
    input_axis: int
    column_weights: Optional[np.ndarray] = None
    estimate: Any = None


@dataclass(frozen=True)
class Built:
    params: Any
    snr_db: float
    clipped: Optional[Tuple[Tuple[int, ...], float, float]] = None


def build_form(job: BuildJob) -> Built:
    from milcompress.ops import compress, snr_db
    from milcompress.ops.metrics import clipped_outlier
    from milcompress.ops.palettize import palettize_estimated

    value = load_weight(job.weight)
    importance = _importance(value, job.column_weights)
    if job.estimate is not None:
        params = palettize_estimated(value, job.config, job.estimate, channel_axis=job.output_axis, importance=importance)
    else:
        params = compress(value, job.config, output_axis=job.output_axis, input_axis=job.input_axis, importance=importance)
    dense = params.decompress()
    return Built(params, snr_db(value, dense), clipped_outlier(value, dense))


__all__: Sequence[str] = ["Attempt", "BuildJob", "Built", "CompressJob", "MenuForm", "MenuJob", "build_form", "compress_attempts",
                          "load_weight", "menu_forms", "weight_elements"]
