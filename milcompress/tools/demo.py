"""The built-in demonstration, the README's main job: a small model compressed every named way.

`demo_model()` is a small PyTorch network with deterministic weights: three convolutions with
batch norm, an attention block over 16 tokens (layer norm, QKV projection, scaled dot-product
attention, output projection, GELU MLP), and a 100-class classifier. Two of its layers are stored
the way training-time compression leaves them: the last convolution holds 16 distinct values
(palettized during training) and the MLP's first layer is 60% zeros (pruned during training), so
the lossless DEFAULT_* pipelines have something to do. `run_demo()` converts it once to an
iOS18 ML program and applies every named pipeline to the converted model, returning one row per
pipeline: weights compressed, stored weight bytes, ratio to float16, SNR, time. `save_demo(model,
directory)` writes the converted model with sample inputs and calibration inputs (different
random images), so that every command of the README can be tried on files of one's own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np


def demo_model():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class DemoNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
            self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64)
            self.conv3 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
            self.norm = nn.LayerNorm(128)
            self.qkv, self.proj = nn.Linear(128, 384), nn.Linear(128, 128)
            self.mlp1, self.mlp2 = nn.Linear(128, 512), nn.Linear(512, 128)
            self.head = nn.Linear(128, 100)

        def forward(self, image):
            x = F.relu(self.bn1(self.conv1(image)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.conv3(x))  # [1, 128, 4, 4]
            tokens = x.reshape(1, 128, 16).transpose(1, 2)  # [1, 16, 128]
            q, k, v = self.qkv(self.norm(tokens)).reshape(1, 16, 3, 4, 32).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(1, 16, 128)
            tokens = tokens + self.proj(attended)
            tokens = tokens + self.mlp2(F.gelu(self.mlp1(tokens)))
            return self.head(tokens.mean(dim=1))

    torch.manual_seed(2024)
    model = DemoNet().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
        table = torch.linspace(-0.08, 0.08, 16)
        model.conv3.weight.copy_(table[torch.randint(0, 16, model.conv3.weight.shape)])
        model.mlp1.weight.mul_(torch.rand(model.mlp1.weight.shape) > 0.6)
    return model


def convert_demo_model():
    """The demo model as an iOS18 ML program (coremltools' default passes, float16)."""
    import warnings

    import coremltools as ct
    import torch

    from milcompress._coremltools import quiet_progress_bars

    model = demo_model()
    example = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), quiet_progress_bars():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name="image", shape=example.shape)],
            outputs=[ct.TensorType(name="logits")],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
        )


INPUT_SHAPE = (1, 3, 32, 32)
SAMPLES, CALIBRATION_SAMPLES = 32, 16


def demo_inputs(count: int, seed: int) -> dict:
    """`count` images for the demo model's input, stacked along a new first axis (as `verify
    --inputs` and `--calibration` read them): uniform in [0, 1), as the model was traced with."""
    images = np.random.default_rng(seed).random((count, *INPUT_SHAPE), dtype=np.float32)
    return {"image": images}


def save_demo(mlmodel, directory, force: bool = False) -> List[Tuple[Path, str]]:
    """Write DIRECTORY/demo.mlpackage, inputs.npz and calibration.npz; (path, what it is) of each.
    Existing files are kept unless `force` (InputError naming the first)."""
    from milcompress.errors import InputError
    from milcompress.packages import save_model

    directory = Path(directory)
    package, inputs, calibration = directory / "demo.mlpackage", directory / "inputs.npz", directory / "calibration.npz"
    existing = [path for path in (package, inputs, calibration) if path.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: already exists (pass --force to replace it)")
    directory.mkdir(parents=True, exist_ok=True)
    save_model(mlmodel, package, force=force)
    np.savez(inputs, **demo_inputs(SAMPLES, seed=1))
    np.savez(calibration, **demo_inputs(CALIBRATION_SAMPLES, seed=2))
    return [
        (package, "the demo model, an iOS18 ML program with float16 weights"),
        (inputs, f"{SAMPLES} sample inputs, 'image' {list(INPUT_SHAPE)} stacked (for verify and sweep --inputs)"),
        (calibration, f"{CALIBRATION_SAMPLES} other inputs (for run --target-bpw --calibration)"),
    ]


@dataclass(frozen=True)
class DemoRow:
    pipeline: str
    compressed: int  # weights compressed
    weights: int  # weights considered (rank >= 2, float)
    bytes_before: int
    bytes_after: int
    mean_snr_db: Optional[float]
    worst_snr_db: Optional[float]
    seconds: float


def run_demo(mlmodel=None, pipelines: Optional[List[str]] = None) -> List[DemoRow]:
    from milcompress.api import run_passes
    from milcompress.passes.pipelines import PIPELINES, compression_passes

    mlmodel = mlmodel if mlmodel is not None else convert_demo_model()
    rows = []
    for name in pipelines or [p for p in PIPELINES if p != "DECOMPRESS"]:
        start = time.perf_counter()
        _, reports = run_passes(mlmodel, compression_passes(name), save=False)
        seconds = time.perf_counter() - start
        records = [r for report in reports for r in report.records if len(r.shape) >= 2 and r.dtype.startswith("float")]
        compressed = [r for r in records if r.action == "compressed"]
        snrs = [r.snr_db for r in compressed if r.snr_db is not None]
        finite = [s for s in snrs if math.isfinite(s)]
        rows.append(
            DemoRow(
                pipeline=name,
                compressed=len(compressed),
                weights=len(records),
                bytes_before=sum(r.bytes_before for r in records),
                bytes_after=sum(r.bytes_after for r in records),
                mean_snr_db=(float(np.mean(finite)) if finite else (math.inf if snrs else None)),
                worst_snr_db=(min(snrs) if snrs else None),
                seconds=seconds,
            )
        )
    return rows
