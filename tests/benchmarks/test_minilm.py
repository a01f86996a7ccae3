"""The all-MiniLM-L6-v2 benchmark model: real weights load strictly, the embedding is the
sentence-transformers one, the metrics rank a perturbed copy below the float32 module, and the
converted program keeps the weights' names. Slow (real weights, ct.convert): run with -m slow."""

import copy
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.nn import functional as F

from benchmarks.models import minilm
from milcompress._coremltools import program_from_mlmodel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    return minilm.load(quick=True)


def _embed_texts(module, texts):
    return minilm.embed(module, *minilm.tokenize(texts))


def _reference_embedding(module, input_ids, attention_mask):
    """sentence-transformers' computation, written apart from the module's forward: BERT with
    positions 0..L-1 and transformers' finfo.min attention mask, then mean pooling over tokens
    with mask 1 (count clamped at 1e-9) and L2 normalisation."""
    embeddings = module.embeddings
    mask = attention_mask.to(torch.float32)
    with torch.no_grad():
        hidden = embeddings.LayerNorm(
            embeddings.word_embeddings(input_ids.long())
            + embeddings.position_embeddings.weight[: minilm.SEQUENCE_LENGTH]
            + embeddings.token_type_embeddings.weight[0]
        )
        score_mask = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        for layer in module.encoder.layer:
            hidden = layer(hidden, score_mask)
        pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=1)


def test_checkpoint_loads_strictly():
    module = minilm.MiniLMSentenceEmbedder()
    result = module.load_state_dict(minilm.checkpoint_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with safe_open(str(minilm.model_directory() / "model.safetensors"), "pt") as checkpoint:
        dropped = set(checkpoint.keys()) - set(module.state_dict())
    assert dropped == {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def test_evaluation_set_is_deterministic_prose(bench):
    passages = minilm.evaluation_passages(minilm.QUICK_PASSAGES)
    assert passages == minilm.evaluation_passages(minilm.QUICK_PASSAGES)
    assert len(set(passages)) == minilm.QUICK_PASSAGES
    input_ids, attention_mask = bench.example_inputs
    assert input_ids.shape == attention_mask.shape == (minilm.CONVERSION_BATCH, minilm.SEQUENCE_LENGTH)
    assert input_ids.dtype == attention_mask.dtype == torch.int32


def test_embedding_matches_reference_computation(bench):
    texts = minilm.evaluation_passages(8)
    input_ids, attention_mask = minilm.tokenize(texts)
    assert attention_mask.sum(dim=1).min() < minilm.SEQUENCE_LENGTH  # some padding
    embedding = minilm.embed(bench.module, input_ids, attention_mask)
    reference = _reference_embedding(bench.module, input_ids, attention_mask)
    torch.testing.assert_close(embedding, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(len(texts)))


def test_embedding_ignores_padding_token_values(bench):
    input_ids, attention_mask = minilm.tokenize(["Lists are mutable sequences."])
    scrambled = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, 2023))
    torch.testing.assert_close(
        minilm.embed(bench.module, input_ids, attention_mask),
        minilm.embed(bench.module, scrambled, attention_mask),
    )


def test_related_sentences_are_closer_than_unrelated(bench):
    weather, sunny, stadium = _embed_texts(bench.module, [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ])
    # The similarities sentence-transformers' quickstart (README) prints for this model.
    assert float(weather @ sunny) == pytest.approx(0.6660, abs=5e-4)
    assert float(weather @ stadium) == pytest.approx(0.1046, abs=5e-4)
    assert float(sunny @ stadium) == pytest.approx(0.1411, abs=5e-4)


def test_float32_module_scores_perfectly(bench):
    scores = bench.evaluate(bench.module)
    assert set(scores) == set(bench.metrics) == set(bench.higher_is_better)
    assert scores["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert scores["min_cosine"] == pytest.approx(1.0, abs=1e-5)


def test_perturbed_copy_scores_lower(bench):
    perturbed = copy.deepcopy(bench.module)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in perturbed.state_dict().values():
            if weight.ndim == 2:
                weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 0.2)
    scores = bench.evaluate(perturbed)
    assert scores["min_cosine"] <= scores["mean_cosine"] < 0.999


def test_weights_keep_their_names_through_conversion(bench):
    import coremltools as ct

    traced = torch.jit.trace(bench.module, bench.example_inputs)
    # cast_optimization compares int32 and float16 ranges with numpy, which warns of overflow.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            traced,
            inputs=bench.input_types,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
        )
    weight_consts = {
        op.name: op.outputs[0].val.shape
        for op in program_from_mlmodel(mlmodel).functions["main"].operations
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 2048
    }
    state = bench.module.state_dict()
    const_names = {key: key.replace(".", "_") + "_to_fp16" for key, value in state.items() if value.ndim == 2}
    lost = {key for key, name in const_names.items() if weight_consts.get(name) != tuple(state[key].shape)}
    # Only row 0 of the token type table is used; it folds into a 384-value constant.
    assert lost == {"embeddings.token_type_embeddings.weight"}
    # Every large constant is a state_dict weight, so the benchmark can put each back by name.
    assert set(weight_consts) == {const_names[key] for key in const_names if key not in lost}
