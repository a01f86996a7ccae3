"""How close milcompress's kernels come to the least work each compression needs: the floor.

For every weight of a model (float16, channel axis 0, as the passes hand them to `ops/`), three
things are timed on the same arrays, one after the other, in one process (CPU seconds: the
machine is shared, so the work done rather than the wait for a core):

- the floor: the work no implementation can skip, in plain numpy:
  - palettes: one histogram pass over the float16 codes (`np.bincount`), a table from it (the
    entry of each code by its cumulative count: O(65,536), no clustering), one gather of each
    value's index through that table, one pack of the indices. Grouped palettes first rank the
    codes the tensor holds (one more gather), so the histogram and the table are [groups, codes
    present] instead of [groups, 65,536];
  - linear quantization: per block the largest magnitude, the scale, and one multiply, round and
    cast of the float16 values to the integers (packed two to a byte for 4 bits);
- ours: `milcompress.ops.palettize` / `quantize`, then `ops.packing.pack_bits` of the indices
  (or 4-bit integers);
- coremltools: its static compress functions, `palettize_weights.blockwise_compress` and
  `linear_quantize_weights.blockwise_compress` (kmeans1d for float16 groups of 10,000+ values,
  scikit-learn for the rest, limited to one thread as ours is), then the same `pack_bits` (its
  own packing happens when it saves).

Reported per model and config: the three times, ours / floor and coremltools / ours, and each
library's signal-to-noise ratio over the weights both compressed. Vector palettes (`cluster_dim`
2) have no floor: they are timed against coremltools' scikit-learn path alone. Weights that
a library declines (a per-block size that does not divide the input channels, a group size that
does not divide the output channels) count for neither the floor nor that library; the table
says how many each compressed.

Then, on converted packages (ResNet50 normal and MobileNetV2; `--size-models`), milcompress's
`compress_to_size(model, 4.0)` data-free next to one int4-per-block-32 pass of the same model
(`linear_quantize_weights`), both through the library's call on the loaded model (the pass and
the rewrite; loading and saving the package excluded), each with `workers=1` so that this
process's CPU seconds are all of its work.

    python benchmarks/floor.py --quick      # every 6th ResNet50 tensor, MobileNetV2, a 100M decoder
    nice python benchmarks/floor.py         # ResNet50 (normal, Student-t), MobileNetV2, the 500M decoder

coremltools' palettes are not run on the decoder (hours there; `--coremltools-decoder` runs
them), nor vector palettes by either library (ten minutes of ours alone). Results go to
benchmarks/results/floor[_quick].{md,json}; a run of some models or configs only to
floor[_quick]_partial_<models>.{md,json} (`--models` alone: floor_partial_size_<size models>).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from milcompress.config import LinearQuantizeConfig, PalettizeConfig  # noqa: E402
from milcompress.errors import NotCompressible  # noqa: E402
from milcompress.ops import palettize, quantize  # noqa: E402
from milcompress.ops.packing import pack_bits  # noqa: E402

DECODER_PARAMETERS = 5e8
QUICK_DECODER_PARAMETERS = 1e8
MODELS = ("resnet50_normal", "resnet50_student_t", "mobilenet_v2", "random_llama")
SIZE_MODELS = ("resnet50_normal", "mobilenet_v2")
SIZE_TARGET = 4.0


def configs() -> Dict[str, object]:
    """Config label -> our config (coremltools gets the equivalent block sizes, `_coremltools_block_sizes`)."""
    result = {f"palettize {nbits}-bit per tensor": PalettizeConfig(nbits=nbits) for nbits in (1, 2, 3, 4, 6, 8)}
    result["palettize 4-bit groups of 16"] = PalettizeConfig(nbits=4, granularity="per_grouped_channel", group_size=16)
    result["palettize 4-bit vectors of 2"] = PalettizeConfig(nbits=4, cluster_dim=2)
    result["int8 per channel"] = LinearQuantizeConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    result["int4 per block 32"] = LinearQuantizeConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32)
    return result


# ------------------------------------------------------------------------------------------------
# Weights.


def model_weights(name: str, quick: bool) -> Dict[str, np.ndarray]:
    """The float16 weights (2-D and up, more than 2048 values) of a benchmark model, by name."""
    if name.startswith("resnet50_"):
        from benchmarks.models.resnet50 import resnet50_weights

        weights = resnet50_weights(name[len("resnet50_"):])
        return dict(list(weights.items())[::6]) if quick else weights
    if name == "mobilenet_v2":
        from benchmarks.models.mobilenet_v2 import pretrained_mobilenet_v2
        from benchmarks.models.base import fold_batch_norms

        return _float16_weights(fold_batch_norms(pretrained_mobilenet_v2()).state_dict())
    if name == "random_llama":
        from benchmarks.models.llama import llama_of_size, random_llama

        model = random_llama(llama_of_size(QUICK_DECODER_PARAMETERS if quick else DECODER_PARAMETERS))
        weights = _float16_weights(model.state_dict(), skip_tied=True)
        del model
        gc.collect()
        return weights
    raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}")


def _float16_weights(state: dict, skip_tied: bool = False) -> Dict[str, np.ndarray]:
    result, seen = {}, set()
    for name, tensor in state.items():
        if tensor.ndim < 2 or tensor.numel() <= 2048 or not tensor.is_floating_point():
            continue
        if skip_tied and tensor.data_ptr() in seen:  # a tied lm_head is the embedding's const
            continue
        seen.add(tensor.data_ptr())
        result[name] = tensor.detach().numpy().astype(np.float16)
    return result


# ------------------------------------------------------------------------------------------------
# The floor.


def _histogram_table(counts: np.ndarray, k: int) -> np.ndarray:
    """A table [..., codes] -> entry from per-code counts: each code's rank by cumulative count."""
    cumulative = np.cumsum(counts, axis=-1)
    total = np.maximum(cumulative[..., -1:], 1)
    return np.minimum(cumulative * k // total, k - 1).astype(np.uint8)


def floor_palette(weight: np.ndarray, nbits: int, group_size: Optional[int]) -> np.ndarray:
    """The least work of a palettization of a float16 `weight`: the packed indices (see the module
    docstring). Channel axis 0; `group_size` None for one table."""
    codes = weight.reshape(-1).view(np.uint16)
    k = 1 << nbits
    if group_size is None:
        table = _histogram_table(np.bincount(codes, minlength=1 << 16), k)
        return pack_bits(table[codes], nbits)
    groups = weight.shape[0] // group_size
    present = np.bincount(codes, minlength=1 << 16) > 0
    rank = (np.cumsum(present) - 1).astype(np.int32)
    distinct = int(present.sum())
    keys = rank[codes].reshape(groups, -1) + (np.arange(groups, dtype=np.int32) * distinct)[:, None]
    counts = np.bincount(keys.reshape(-1), minlength=groups * distinct).reshape(groups, distinct)
    table = _histogram_table(counts, k).reshape(-1)
    return pack_bits(table[keys.reshape(-1)], nbits)


def floor_quantize(weight: np.ndarray, nbits: int, block: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The least work of a symmetric linear quantization of `weight` (channel axis 0, input axis
    1): per channel (`block` None) or per block of `block` input channels. (data, scales)."""
    limit = (1 << (nbits - 1)) - 1
    channels = weight.shape[0]
    if block is None:
        x = weight.reshape(channels, 1, -1)
    else:
        x = weight.reshape(channels, weight.shape[1] // block, -1)  # a block: `block` input channels, all positions
    x = x.astype(np.float32)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float16)
    data = np.rint(x * (1.0 / scale.astype(np.float32))).astype(np.int8)
    if nbits == 4:
        return pack_bits(data.reshape(-1) & np.int8(0xF), 4), scale
    return data, scale


def floor_of(weight: np.ndarray, config) -> Optional[Callable[[], object]]:
    """The floor's work for `config` on `weight`; None for vector palettes (no floor: their
    least work is a nearest-vector search, not a histogram)."""
    if isinstance(config, PalettizeConfig) and config.cluster_dim > 1:
        return None
    if isinstance(config, PalettizeConfig):
        group = None if config.granularity == "per_tensor" else config.group_size
        return lambda: floor_palette(weight, config.nbits, group)
    block = None if config.granularity == "per_channel" else config.block_size
    return lambda: floor_quantize(weight, config.nbits, block)


# ------------------------------------------------------------------------------------------------
# The two libraries.


def ours_of(weight: np.ndarray, config) -> Callable[[], object]:
    """Our compression of `weight` with the packing of its integers: returns the params."""
    if isinstance(config, PalettizeConfig):

        def run():
            params = palettize(weight, config)
            pack_bits(params.indices, params.nbits)
            return params

        return run

    def run_quantize():
        params = quantize(weight, config)
        if params.nbits == 4:
            pack_bits(params.data.view(np.uint8) & np.uint8(0xF), 4)
        return params

    return run_quantize


def _coremltools_block_sizes(weight: np.ndarray, config) -> List[int]:
    sizes = [0] * weight.ndim
    if isinstance(config, PalettizeConfig):
        if config.granularity == "per_grouped_channel":
            sizes[0] = config.group_size
    else:
        sizes[0] = 1
        if config.granularity == "per_block":
            sizes[1] = config.block_size
    return sizes


def coremltools_of(weight: np.ndarray, config) -> Callable[[], object]:
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights, palettize_weights
    from threadpoolctl import threadpool_limits

    sizes = _coremltools_block_sizes(weight, config)
    if isinstance(config, PalettizeConfig):

        def run():
            # One thread, as ours: scikit-learn's OpenMP threads (its k-means for groups under
            # 10,000 values) spin while they wait, CPU seconds that depend on how busy the other
            # core is (its grouped palettes on ResNet50 read 23 to 75 s in three runs).
            with threadpool_limits(1):
                params = palettize_weights.blockwise_compress(weight, "KMEANS", config.nbits, sizes, cluster_dim=config.cluster_dim, channel_axis=0)
            if params is not None:
                pack_bits(params.indices, config.nbits)
            return params

        return run

    def run_quantize():
        params = linear_quantize_weights.blockwise_compress(weight, config.nbits, "LINEAR_SYMMETRIC", True, sizes)
        if params is not None and config.nbits == 4:
            pack_bits(params.data.view(np.uint8) & np.uint8(0xF), 4)
        return params

    return run_quantize


def coremltools_dense(params, config) -> np.ndarray:
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights, palettize_weights

    owner = palettize_weights if isinstance(config, PalettizeConfig) else linear_quantize_weights
    return owner.decompress(params)


def warm_up(all_configs: Dict[str, object]) -> None:
    """Run our kernels once on a small weight of every config before anything is timed: numba
    compiles them on a process's first call (once per installation; later processes load the
    machine code from its cache), which is not the work of any one compression."""
    rng = np.random.default_rng(0)
    for shape in ((64, 512), (64, 4096)):  # groups sorted, and counted by 16-bit pattern
        weight = rng.standard_normal(shape).astype(np.float16)
        for config in all_configs.values():
            ours_of(weight, config)()


def _timed(call: Callable[[], object]) -> Tuple[object, float]:
    """`call()` and the CPU seconds it took (this process, every thread): on a shared machine the
    work done, not the wait for a core."""
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def _squared_error(weight: np.ndarray, dense: np.ndarray) -> Tuple[float, float]:
    reference = weight.astype(np.float64)
    return float(((reference - np.asarray(dense, dtype=np.float64)) ** 2).sum()), float((reference**2).sum())


def _snr_db(noise: float, signal: float) -> Optional[float]:
    return None if noise <= 0 or signal <= 0 else 10 * math.log10(signal / noise)


def measure(weights: Dict[str, np.ndarray], config, with_coremltools: bool) -> dict:
    """CPU seconds of the floor, ours and (optionally) coremltools' over the weights, how many
    weights each library compressed, and the signal-to-noise ratio of each over the weights both
    compressed (total error against total energy). The floor counts the weights ours compressed."""
    floor = ours = theirs = 0.0
    ours_count = theirs_count = 0
    errors = {}  # weight name -> [our (noise, signal), theirs]
    for name, weight in weights.items():
        try:
            params, seconds = _timed(ours_of(weight, config))
        except NotCompressible:
            continue
        ours += seconds
        ours_count += 1
        errors[name] = [_squared_error(weight, params.decompress()), None]
        work = floor_of(weight, config)
        if work is not None:
            floor += min(_timed(work)[1] for _ in range(2))  # the better of two: a floor
    if with_coremltools:
        for name, weight in weights.items():
            params, seconds = _timed(coremltools_of(weight, config))
            if params is not None:
                theirs += seconds
                theirs_count += 1
                if name in errors:
                    errors[name][1] = _squared_error(weight, coremltools_dense(params, config))
    both = [e for e in errors.values() if e[1] is not None]
    has_floor = floor > 0
    return {
        "floor_seconds": floor if has_floor else None,
        "milcompress_seconds": ours,
        "coremltools_seconds": theirs if with_coremltools else None,
        "milcompress_weights": ours_count,
        "coremltools_weights": theirs_count if with_coremltools else None,
        "ours_over_floor": ours / floor if has_floor else None,
        "speedup_over_coremltools": theirs / ours if with_coremltools and ours > 0 else None,
        "milcompress_snr_db": _snr_db(sum(e[0][0] for e in both), sum(e[0][1] for e in both)) if both else None,
        "coremltools_snr_db": _snr_db(sum(e[1][0] for e in both), sum(e[1][1] for e in both)) if both else None,
    }


# ------------------------------------------------------------------------------------------------
# compress_to_size against one int4-per-block pass, on converted packages.


def size_against_int4(name: str, quick: bool) -> dict:
    """Seconds of `compress_to_size(model, SIZE_TARGET)` data-free and of one int4-per-block-32
    pass on the converted package of benchmark model `name`."""
    import importlib
    import tempfile

    import coremltools as ct
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    import milcompress
    from benchmarks import compare

    module_name, arguments = compare.MODELS[name]
    bench = importlib.import_module(module_name).load(quick=quick, **arguments)
    int4 = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32))
    with tempfile.TemporaryDirectory(prefix=f"floor-{name}-") as work:
        path = Path(work) / "dense.mlpackage"
        compare._convert(bench, path)
        del bench
        gc.collect()
        model = ct.models.MLModel(str(path), skip_model_load=True)
        # One process each (workers=1): the CPU seconds of this process are then all the work
        # (a pool's workers' CPU would not count).
        _, int4_seconds = _timed(lambda: milcompress.linear_quantize_weights(model, int4, workers=1))
        _, size_seconds = _timed(lambda: milcompress.compress_to_size(model, SIZE_TARGET, workers=1))
    return {
        "model": name,
        "int4_per_block_seconds": int4_seconds,
        "compress_to_size_seconds": size_seconds,
        "ratio": size_seconds / int4_seconds,
    }


# ------------------------------------------------------------------------------------------------
# Report.


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _times(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def report(results: List[dict], sizes: List[dict], command: str) -> str:
    from milcompress.tools.table import format_table

    import coremltools
    import torch

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one process; numpy {np.__version__}, "
               f"torch {torch.__version__}, coremltools {coremltools.__version__}")
    lines = [f"Produced by `{command}` ({machine}).", "",
             "Seconds are CPU seconds of this process (the machine is shared); ours/floor and ct/ours are their ratios. "
             "SNR: total energy over total squared error of the weights both libraries compressed (milcompress's palettes "
             "are outlier-aware by default: they weigh far-out values more, at a small cost in plain squared error). "
             "Vector palettes have no floor.", ""]
    for result in results:
        lines += [f"## {result['model']}: {result['weights']} weights, {result['values']:,} values", "", "```"]
        rows = []
        for label, r in result["configs"].items():
            rows.append([label, _fmt(r["floor_seconds"], ".3f"), f"{r['milcompress_seconds']:.3f}", _fmt(r["coremltools_seconds"]),
                         _times(r["ours_over_floor"]), _times(r["speedup_over_coremltools"]),
                         _fmt(r.get("milcompress_snr_db")), _fmt(r.get("coremltools_snr_db")),
                         f"{r['milcompress_weights']}/{_fmt(r['coremltools_weights'], 'd')}"])
        lines.append(format_table(["config", "floor s", "ours s", "coremltools s", "ours/floor", "ct/ours", "ours SNR dB", "ct SNR dB",
                                   "weights ours/ct"], rows, [False] + [True] * 8))
        lines += ["```", ""]
    if sizes:
        lines += [f"## compress_to_size({SIZE_TARGET}) data-free against one int4-per-block-32 pass", "", "```"]
        rows = [[s["model"], f"{s['int4_per_block_seconds']:.2f}", f"{s['compress_to_size_seconds']:.2f}", f"{s['ratio']:.1f}x"] for s in sizes]
        lines.append(format_table(["model", "int4 per block s", "compress_to_size s", "ratio"], rows, [False, True, True, True]))
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 6th ResNet50 tensor, a 100M decoder, a smaller evaluation set")
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--configs", nargs="*", choices=list(configs()), default=list(configs()))
    parser.add_argument("--size-models", nargs="*", choices=SIZE_MODELS, default=list(SIZE_MODELS),
                        help="converted models for compress_to_size against int4 per block (none: skip)")
    parser.add_argument("--no-coremltools", action="store_true", help="time the floor and ours only")
    parser.add_argument("--coremltools-decoder", action="store_true", help="run coremltools' palettes on the decoder too (hours)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import milcompress._coremltools  # noqa: F401  (imports coremltools without its notices)

    all_configs = configs()
    warm_up(all_configs)
    results = []
    for name in args.models:
        weights = model_weights(name, args.quick)
        values = sum(w.size for w in weights.values())
        print(f"{name}: {len(weights)} weights, {values:,} values", flush=True)
        result = {"model": name, "weights": len(weights), "values": values, "configs": {}}
        for label in args.configs:
            config = all_configs[label]
            if name == "random_llama" and isinstance(config, PalettizeConfig) and config.cluster_dim > 1:
                continue
            with_coremltools = not args.no_coremltools and (
                name != "random_llama" or args.coremltools_decoder or not isinstance(config, PalettizeConfig))
            r = measure(weights, config, with_coremltools)
            result["configs"][label] = r
            print(f"  {label:30s} floor {_fmt(r['floor_seconds'], '7.3f')} s  ours {r['milcompress_seconds']:7.3f} s "
                  f"({_times(r['ours_over_floor'])} floor)  coremltools {_fmt(r['coremltools_seconds'])} s", flush=True)
        results.append(result)
        del weights
        gc.collect()
    sizes = []
    for name in args.size_models:
        sizes.append(size_against_int4(name, args.quick))
        print(f"  {name}: int4 per block {sizes[-1]['int4_per_block_seconds']:.2f} s, "
              f"compress_to_size({SIZE_TARGET}) {sizes[-1]['compress_to_size_seconds']:.2f} s", flush=True)
    command = "python benchmarks/floor.py" + " ".join([""] + argv)
    text = report(results, sizes, command)
    suffix = "_quick" if args.quick else ""
    if any(a.startswith("--models") or a.startswith("--configs") for a in argv):
        suffix += "_partial_" + ("_".join(args.models) or "size_" + "_".join(args.size_models))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"floor{suffix}.md").write_text(text)
    (args.out / f"floor{suffix}.json").write_text(json.dumps({"models": results, "compress_to_size": sizes}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
