"""A small CNN trained on scikit-learn's 8x8 digits, as a `BenchModel` scored on real labels.

Owns the architecture, the fixed train/test split, deterministic training (seeded, one thread,
fixed epochs) and the on-disk cache of the trained weights in benchmarks/.cache/ (git-ignored).
The cache holds the trained state_dict before folding; `load` folds the batch norms each time
(cheap), so the unfolded model stays available to compare with. Training is deterministic, so
the cache is only a speed-up; its version string must change whenever the architecture,
split or training recipe does. Several conv/linear weights have more than 2048 elements, the
size below which compression skips a weight.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from benchmarks.models.base import BenchModel, fold_batch_norms

logger = logging.getLogger(__name__)

CACHE_VERSION = "digits_cnn-v1"
CACHE_PATH = Path(__file__).resolve().parents[1] / ".cache" / "digits_cnn.pt"
SPLIT_SEED = 0
TRAINING_SEED = 0
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
EVALUATION_BATCH_SIZE = 256
PIXEL_MAX = 16.0  # load_digits pixels are counts 0..16


class DigitsCNN(nn.Module):
    """Three 3x3 conv + batch norm + ReLU layers (32, 64, 64 channels, two 2x2 max pools:
    8x8 -> 2x2), then Linear(256, 256), ReLU, Linear(256, 10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def digits_split() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images (N, 1, 8, 8) float32 in
    [0, 1]. The test set is the first quarter of a permutation seeded with SPLIT_SEED (449 of
    1797)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / PIXEL_MAX).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    test, train = order[: len(order) // 4], order[len(order) // 4:]
    return images[train], labels[train], images[test], labels[test]


def train(images: torch.Tensor, labels: torch.Tensor) -> DigitsCNN:
    """A DigitsCNN trained with Adam (cosine learning-rate decay) for EPOCHS epochs on one thread,
    from TRAINING_SEED; the global RNG state and thread count are restored afterwards. Returned in
    eval mode."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRAINING_SEED)
            model = DigitsCNN()
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
            model.train()
            for _ in range(EPOCHS):
                for batch in torch.randperm(len(labels)).split(BATCH_SIZE):
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                    loss.backward()
                    optimizer.step()
                schedule.step()
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


def trained_digits_cnn() -> DigitsCNN:
    """The trained model, batch norms not folded, float32, eval mode: from the cache when its
    version matches, otherwise trained and cached."""
    model = DigitsCNN()
    if CACHE_PATH.is_file():
        cached = torch.load(CACHE_PATH, map_location="cpu", weights_only=True)
        if cached.get("version") == CACHE_VERSION:
            model.load_state_dict(cached["state_dict"], strict=True)
            return model.eval()
    train_images, train_labels, _, _ = digits_split()
    start = time.perf_counter()
    model = train(train_images, train_labels)
    logger.info("trained %s in %.1f s", CACHE_VERSION, time.perf_counter() - start)
    CACHE_PATH.parent.mkdir(parents=True, exist_ok=True)
    partial = CACHE_PATH.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"version": CACHE_VERSION, "state_dict": model.state_dict()}, partial)
    os.replace(partial, CACHE_PATH)
    return model


def logits_of(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(batch) for batch in images.split(EVALUATION_BATCH_SIZE)])


def load(quick: bool = False) -> BenchModel:
    """The trained DigitsCNN with batch norms folded, scored on the whole test split (449
    images, cheap, so `quick` changes nothing)."""
    module = fold_batch_norms(trained_digits_cnn())
    _, _, test_images, test_labels = digits_split()
    reference_predictions = logits_of(module, test_images).argmax(dim=1)

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        predictions = logits_of(candidate, test_images).argmax(dim=1)
        return {
            "test_accuracy": float((predictions == test_labels).double().mean()),
            "top1_agreement": float((predictions == reference_predictions).double().mean()),
        }

    import coremltools as ct

    return BenchModel(
        name="digits_cnn",
        module=module,
        example_inputs=(torch.zeros(1, 1, 8, 8),),
        input_types=[ct.TensorType(name="digits", shape=(1, 1, 8, 8))],
        evaluate=evaluate,
        metrics=["test_accuracy", "top1_agreement"],
        higher_is_better={"test_accuracy": True, "top1_agreement": True},
    )
