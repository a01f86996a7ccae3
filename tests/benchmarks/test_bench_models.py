"""The MobileNetV2 and digits CNN benchmark models: weights load strictly, folding batch norms
keeps the outputs, the float32 module scores perfectly and a perturbed copy worse, and every
conv/linear weight keeps its name through conversion. Slow (real weights, training, ct.convert):
run with -m slow."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.models import digits_cnn, mobilenet_v2
from milcompress._coremltools import program_from_mlmodel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mobilenet():
    return mobilenet_v2.load(quick=True)


@pytest.fixture(scope="module")
def digits():
    return digits_cnn.load()


def _perturbed(module: nn.Module, relative_noise: float) -> nn.Module:
    """A copy with Gaussian noise of `relative_noise` times each conv/linear weight's std added."""
    perturbed = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in perturbed.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                noise = torch.randn(layer.weight.shape, generator=generator)
                layer.weight.add_(noise * layer.weight.std() * relative_noise)
    return perturbed


def _weight_names_lost_in_conversion(bench) -> set:
    """The conv/linear weight keys with no `<key, dots made underscores>_to_fp16` const of the
    same shape in the converted ML program."""
    import coremltools as ct

    traced = torch.jit.trace(bench.module, bench.example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            traced, inputs=bench.input_types, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
        )
    const_shapes = {
        op.name: op.outputs[0].val.shape
        for op in program_from_mlmodel(mlmodel).functions["main"].operations
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 100
    }
    weights = {
        f"{name}.weight": layer.weight.shape
        for name, layer in bench.module.named_modules()
        if isinstance(layer, (nn.Conv2d, nn.Linear))
    }
    return {
        key for key, shape in weights.items() if const_shapes.get(key.replace(".", "_") + "_to_fp16") != tuple(shape)
    }


def _assert_float32_module_scores_perfectly(bench, perfect):
    scores = bench.evaluate(bench.module)
    assert set(scores) == set(bench.metrics) == set(bench.higher_is_better)
    assert scores == pytest.approx(perfect, abs=1e-9)


# MobileNetV2


def test_mobilenet_checkpoint_loads_strictly():
    result = mobilenet_v2.MobileNetV2().load_state_dict(mobilenet_v2.checkpoint_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_mobilenet_folded_module_has_no_batch_norm_and_same_outputs(mobilenet):
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in mobilenet.module.modules())
    images = mobilenet_v2.evaluation_images(quick=True)
    assert images.shape == (33, 3, 224, 224)
    unfolded = mobilenet_v2.logits_of(mobilenet_v2.pretrained_mobilenet_v2(), images)
    folded = mobilenet_v2.logits_of(mobilenet.module, images)
    assert float((folded - unfolded).abs().max()) <= 1e-4 * float(unfolded.abs().max())


def test_mobilenet_float32_module_scores_perfectly(mobilenet):
    _assert_float32_module_scores_perfectly(mobilenet, {"top1_agreement": 1.0, "kl_divergence": 0.0})


def test_mobilenet_perturbed_copy_scores_worse(mobilenet):
    scores = mobilenet.evaluate(_perturbed(mobilenet.module, 0.02))
    assert scores["top1_agreement"] < 1.0
    assert scores["kl_divergence"] > 1e-3


def test_mobilenet_weights_keep_their_names_through_conversion(mobilenet):
    assert _weight_names_lost_in_conversion(mobilenet) == set()


# Digits CNN


def test_digits_cache_loads_strictly_and_matches_fresh_training(digits):
    cached = torch.load(digits_cnn.CACHE_PATH, map_location="cpu", weights_only=True)
    assert cached["version"] == digits_cnn.CACHE_VERSION
    result = digits_cnn.DigitsCNN().load_state_dict(cached["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    train_images, train_labels, _, _ = digits_cnn.digits_split()
    trained = digits_cnn.train(train_images, train_labels).state_dict()
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert trained.keys() == cached["state_dict"].keys()
    for key, value in trained.items():
        torch.testing.assert_close(value, cached["state_dict"][key], rtol=0, atol=0, msg=key)


def test_digits_folded_module_has_no_batch_norm_and_same_outputs(digits):
    assert not any(isinstance(layer, nn.BatchNorm2d) for layer in digits.module.modules())
    _, _, test_images, _ = digits_cnn.digits_split()
    unfolded = digits_cnn.logits_of(digits_cnn.trained_digits_cnn(), test_images)
    folded = digits_cnn.logits_of(digits.module, test_images)
    assert float((folded - unfolded).abs().max()) <= 1e-4 * float(unfolded.abs().max())


def test_digits_split_is_fixed():
    _, train_labels, test_images, test_labels = digits_cnn.digits_split()
    assert len(test_labels) == 1797 // 4 and len(train_labels) == 1797 - 1797 // 4
    assert test_images.shape[1:] == (1, 8, 8) and 0.0 <= float(test_images.min()) <= float(test_images.max()) <= 1.0
    assert torch.equal(digits_cnn.digits_split()[2], test_images)


def test_digits_float32_module_scores_perfectly_and_accurately(digits):
    scores = digits.evaluate(digits.module)
    assert scores["test_accuracy"] >= 0.97
    _assert_float32_module_scores_perfectly(digits, {"test_accuracy": scores["test_accuracy"], "top1_agreement": 1.0})


def test_digits_perturbed_copy_scores_worse(digits):
    reference = digits.evaluate(digits.module)
    scores = digits.evaluate(_perturbed(digits.module, 0.5))
    assert scores["test_accuracy"] < reference["test_accuracy"] - 0.05
    assert scores["top1_agreement"] < 0.95


def test_digits_weights_keep_their_names_through_conversion(digits):
    assert _weight_names_lost_in_conversion(digits) == set()
