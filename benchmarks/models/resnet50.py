"""ResNet50 written out by hand (torchvision cannot be imported here), with torchvision's module
names so a torchvision checkpoint would load with strict=True.

`resnet50_weights(init)` gives the compressible weights (conv and linear) as float16 arrays, the
way a converted ML program stores them, for "normal" (torchvision's Kaiming initialisation) or
"student_t" (the same spread from a Student-t with 3 degrees of freedom: heavy tails).
`load(init)` gives the model for benchmarks/compare.py, batch norms folded.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from benchmarks.models.base import BenchModel, fold_batch_norm


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 6, stride=2)
        self.layer4 = self._layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(init: str = "normal", seed: int = 0) -> ResNet50:
    torch.manual_seed(seed)
    model = ResNet50().eval()
    if init == "student_t":
        generator = np.random.default_rng(seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    std = float(module.weight.std())
                    t = generator.standard_t(3, module.weight.shape) / np.sqrt(3.0)
                    module.weight.copy_(torch.from_numpy(t * std))
    elif init != "normal":
        raise ValueError(f"init must be normal or student_t, got {init!r}")
    return model


def resnet50_weights(init: str = "normal", seed: int = 0, min_size: int = 2048) -> Dict[str, np.ndarray]:
    """The conv and linear weights of more than `min_size` elements, as float16 arrays."""
    model = resnet50(init, seed)
    return {
        name: p.detach().numpy().astype(np.float16)
        for name, p in model.state_dict().items()
        if name.endswith("weight") and p.ndim >= 2 and p.numel() > min_size
    }


def _fold(model: ResNet50) -> ResNet50:
    """Each conv with its batch norm folded in (the batch norms become identities)."""
    pairs = [(model, "conv1", "bn1")]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fold_batch_norm(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return model


def load(init: str = "normal", quick: bool = False) -> BenchModel:
    """ResNet50 with random weights: the speed workhorse. Its accuracy metric is the cosine of its
    logits to the float32 model's on a few random images (the weights are random: there is no
    class to agree on)."""
    module = _fold(resnet50(init))
    images = torch.randn(4 if quick else 8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    reference = {}

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        with torch.no_grad():
            if "logits" not in reference:
                reference["logits"] = module(images)
            logits = candidate(images)
        cosine = torch.nn.functional.cosine_similarity(logits, reference["logits"], dim=1)
        return {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}

    import coremltools as ct

    return BenchModel(
        name=f"resnet50_{init}",
        module=module,
        example_inputs=(torch.zeros(1, 3, 224, 224),),
        input_types=[ct.TensorType(name="image", shape=(1, 3, 224, 224))],
        evaluate=evaluate,
        metrics=["mean_cosine", "min_cosine"],
        higher_is_better={"mean_cosine": True, "min_cosine": True},
    )
