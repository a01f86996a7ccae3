"""Your own model's size/accuracy curve: `sweep(model, inputs)`, drawn by `plot(result, path)`.

The model is compressed to each target size by `compress_to_size` (with calibration inputs if
given) and by each named pipeline of about the same size (one config for every weight, as
coremltools offers: `pipelines_near(targets)`), and each result is run against the original on
`inputs` by the reference executor (`verify`). Each point is placed by its stored bits per weight
over every float weight of two or more dimensions, compressed or not (`bits_per_weight`), the
same measure as the README's benchmark plots (`benchmarks/size_sweep.py`), which score their
models with their own metrics; here the metric is what `verify` measures: top-1 agreement and KL
divergence for outputs that look like class scores, else mean cosine.
Needs torch (the reference executor); `plot` needs matplotlib (`pip install 'milcompress[plot]'`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from milcompress.catalog import LOSSLESS, PIPELINES, expected_bits_per_weight
from milcompress.errors import ConfigError, InputError
from milcompress.progress import as_progress
from milcompress.table import format_table

DEFAULT_TARGETS = (3.0, 4.0, 4.5, 6.0, 8.0)
NEAR = 0.5
"""A named pipeline joins the sweep where its expected bits per weight lie within this of the
targets' range."""
SIZE_SERIES, CALIBRATED_SERIES, SINGLE_SERIES = "compress_to_size", "compress_to_size, calibrated", "one config (named pipeline)"


@dataclass(frozen=True)
class SweepPoint:
    series: str
    label: str  # "target 4.5" or a pipeline's name
    bits_per_weight: float
    seconds: float  # compression time
    cosine: float
    top1_agreement: Optional[float]
    kl_divergence: Optional[float]


@dataclass
class SweepResult:
    model: str
    output: str  # the output compared
    samples: int
    random_inputs: bool
    dense_bits_per_weight: float
    points: List[SweepPoint] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """What the plot shows: top-1 agreement for class scores, else mean cosine."""
        return "top1_agreement" if self.points and self.points[0].top1_agreement is not None else "cosine"

    def table(self) -> str:
        rows = [
            [p.series, p.label, f"{p.bits_per_weight:.3f}", f"{p.seconds:.1f}", f"{p.cosine:.5f}",
             "-" if p.top1_agreement is None else f"{p.top1_agreement:.3f}", "-" if p.kl_divergence is None else f"{p.kl_divergence:.3g}"]
            for p in sorted(self.points, key=lambda p: (p.series, p.bits_per_weight))
        ]
        return format_table(["series", "config", "bits/weight", "seconds", "cosine", "top-1 agree", "KL"], rows,
                            [False, False, True, True, True, True, True])

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "points"}, "metric": self.metric, "points": [asdict(p) for p in self.points]}


def bits_per_weight(mlmodel) -> float:
    """Stored bits per weight over every float weight of two or more dimensions, compressed or not."""
    from milcompress.api import inspect_model

    _, weights = inspect_model(mlmodel)
    weights = [w for w in weights if len(w.shape) >= 2 and w.dtype.startswith("float")]
    elements = sum(w.elements for w in weights)
    if not elements:
        raise InputError("the model has no float weights of two or more dimensions to compress")
    return 8.0 * sum(w.stored_bytes for w in weights) / elements


def pipelines_near(targets: Sequence[float]) -> List[str]:
    """The named compression pipelines whose expected bits per weight lie in the targets' range
    (widened by `NEAR`); the lossless ones and DECOMPRESS never do."""
    low, high = min(targets) - NEAR, max(targets) + NEAR
    near = []
    for name in PIPELINES:
        expected = None if name in LOSSLESS else expected_bits_per_weight(name)
        if expected is not None and low <= expected <= high:
            near.append(name)
    return near


def sweep(
    model,
    inputs,
    targets: Sequence[float] = DEFAULT_TARGETS,
    *,
    pipelines: Optional[Sequence[str]] = None,
    calibration=None,
    precision: str = "float32",
    random: Optional[int] = None,
    output: Optional[str] = None,
    name: str = "model",
    progress=False,
) -> SweepResult:
    """Compress `model` (an ML program MLModel) at each of `targets` bits per weight and with each
    of `pipelines` (default `pipelines_near(targets)`), verify each against `model` on `inputs`
    (or `random=N` random samples), and return every point. With `calibration`, the targets are
    compressed both data-free and calibrated. `output` names the output compared (default the
    first); `name` labels the result."""
    from milcompress.api import compress_to_size, program_of, run_passes
    from milcompress.passes.pipelines import compression_passes
    from milcompress.reference import Interpreter, verify

    targets = sorted(float(t) for t in targets)
    if not targets or any(not (0 < t <= 32) for t in targets):
        raise ConfigError(f"targets must be bits per weight in (0, 32], not {targets}", field="targets")
    pipelines = pipelines_near(targets) if pipelines is None else list(pipelines)
    original = program_of(model)
    jobs = [(SIZE_SERIES, f"target {t:g}", lambda t=t: compress_to_size(model, t)) for t in targets]
    if calibration is not None:
        jobs += [(CALIBRATED_SERIES, f"target {t:g}", lambda t=t: compress_to_size(model, t, calibration=calibration)) for t in targets]
    jobs += [(SINGLE_SERIES, name, lambda name=name: _single(run_passes, compression_passes, model, name)) for name in pipelines]
    names = list(Interpreter(original).output_names)
    if output is not None and output not in names:
        raise InputError(f"no output {output!r}; the model's outputs are {', '.join(names)}")
    result = SweepResult(name, output or names[0], 0, random is not None, bits_per_weight(model))
    with as_progress(progress).stage("sweep", total=len(jobs), unit="models") as advance:
        for series, label, compress in jobs:
            start = time.perf_counter()
            small = compress()
            seconds = time.perf_counter() - start
            report = verify(original, small, inputs, random=random, precision=precision)
            compared = report[result.output]
            result.samples = report.samples
            result.points.append(SweepPoint(series, label, bits_per_weight(small), seconds, compared.cosine, compared.top1_agreement,
                                            compared.kl_divergence))
            advance(f"{series}: {label}")
    return result


def _single(run_passes, compression_passes, model, name: str):
    """`model` compressed by pipeline `name`, weights its form does not fit (or the opset cannot
    hold) left dense, as they would be in a real run with `--on-unsupported skip`."""
    from milcompress.passes.spec import PassSpec

    specs = [PassSpec(p, {"on_unsupported": "skip"}) if "decompress" not in p else PassSpec(p) for p in compression_passes(name)]
    small, _ = run_passes(model, specs)
    return small


def plot(result: SweepResult, path) -> None:
    """The points as a PNG at `path`: the metric against stored bits per weight, one line per series."""
    try:
        import matplotlib
    except ImportError as error:
        raise InputError("plotting needs matplotlib: pip install 'milcompress[plot]'") from error
    matplotlib.use("Agg")
    from matplotlib import pyplot

    metric = result.metric
    styles = {
        SINGLE_SERIES: dict(marker="o", linestyle="none", color="tab:gray"),
        SIZE_SERIES: dict(marker="o", linestyle="-", color="tab:blue"),
        CALIBRATED_SERIES: dict(marker="^", linestyle="-", color="tab:green"),
    }
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for series, style in styles.items():
        points = sorted((p for p in result.points if p.series == series), key=lambda p: p.bits_per_weight)
        if not points:
            continue
        axes.plot([p.bits_per_weight for p in points], [getattr(p, metric) for p in points], label=series, **style)
        if series == SINGLE_SERIES:
            for p in points:
                axes.annotate(p.label.lower(), (p.bits_per_weight, getattr(p, metric)), fontsize=6, xytext=(3, 3), textcoords="offset points")
    inputs = f"{result.samples} random inputs" if result.random_inputs else f"{result.samples} samples"
    axes.set_xlabel("stored bits per weight (all weights)")
    axes.set_ylabel(f"{'top-1 agreement' if metric == 'top1_agreement' else 'mean cosine'} of {result.output} ({inputs})")
    axes.set_title(f"{Path(result.model).name}: accuracy against size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)  # below: no point hidden
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def write(result: SweepResult, directory) -> List[Path]:
    """sweep.md (the table), sweep.json (every point) and sweep.png (the plot) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "sweep.md", directory / "sweep.json", directory / "sweep.png"]
    inputs = f"{result.samples} random inputs" if result.random_inputs else f"{result.samples} samples"
    written[0].write_text(f"# {result.model}: accuracy against size\n\nOutput {result.output}, {inputs}; dense: "
                          f"{result.dense_bits_per_weight:.2f} bits per weight.\n\n![accuracy against size](sweep.png)\n\n```\n{result.table()}\n```\n")
    written[1].write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    plot(result, written[2])
    return written
