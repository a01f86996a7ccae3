"""The Llama-shaped decoder of benchmarks/models/llama.py: its forward against a hand-computed
numpy reference on a tiny random config, the KV-cache variant run step by step against the
stateless one on the whole sequence, and llama.cpp's rotary row permutation undone exactly.
Fast: no files, no conversion."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.models import llama
from benchmarks.models.smollm2 import permute_rotary_rows, unpermute_rotary_rows

TINY = llama.LlamaConfig(
    vocab_size=37, hidden_size=24, intermediate_size=40, num_layers=2, num_heads=6, num_kv_heads=2,
    rope_theta=500.0, rms_norm_eps=1e-5, max_context=16,
)


def _rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate(x, positions, theta):
    """Rotary embedding written pair by pair: element j and j + d/2 of each head turn by the
    angle position * theta^(-2j/d) (Hugging Face's rotate-half layout). x: (L, heads, d)."""
    d = x.shape[-1]
    out = np.empty_like(x)
    for j in range(d // 2):
        angle = positions * theta ** (-2.0 * j / d)
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
        first, second = x[:, :, j], x[:, :, j + d // 2]
        out[:, :, j] = first * cos - second * sin
        out[:, :, j + d // 2] = second * cos + first * sin
    return out


def _reference_logits(model: llama.LlamaForCausalLM, ids: np.ndarray) -> np.ndarray:
    """The decoder's logits for one sequence of ids, by hand in float64 numpy."""
    c = model.config
    w = {key: value.double().numpy() for key, value in model.state_dict().items()}
    length, d = len(ids), c.head_dim
    positions = np.arange(length, dtype=np.float64)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps)
        q = _rotate((h @ w[p + "self_attn.q_proj.weight"].T).reshape(length, c.num_heads, d), positions, c.rope_theta)
        k = _rotate((h @ w[p + "self_attn.k_proj.weight"].T).reshape(length, c.num_kv_heads, d), positions, c.rope_theta)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(length, c.num_kv_heads, d)
        heads = []
        for head in range(c.num_heads):
            kv = head // (c.num_heads // c.num_kv_heads)  # grouped-query attention
            scores = q[:, head] @ k[:, kv].T / np.sqrt(d)
            scores = np.where(np.tril(np.ones((length, length), dtype=bool)), scores, -np.inf)
            probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probabilities /= probabilities.sum(axis=-1, keepdims=True)
            heads.append(probabilities @ v[:, kv])
        x = x + np.concatenate(heads, axis=-1) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], c.rms_norm_eps)
    return x @ w["model.embed_tokens.weight"].T  # the tied head


def _random_model(stateful=False):
    model = llama.random_llama(TINY, stateful=stateful, seed=3)
    with torch.no_grad():  # norms away from 1 and larger weights, so every term matters
        for name, parameter in model.named_parameters():
            parameter.mul_(10.0) if parameter.ndim >= 2 else parameter.uniform_(0.5, 1.5)
    return model


def test_forward_matches_a_hand_computed_reference():
    model = _random_model()
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, size=11)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids[None].astype(np.int32)), torch.from_numpy(llama.causal_mask(len(ids))))
    reference = _reference_logits(model, ids)
    assert np.abs(reference).max() > 1.0  # not a near-zero comparison
    np.testing.assert_allclose(logits[0].numpy(), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_lm_head_is_the_embedding():
    model = _random_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert TINY.parameters == sum(p.numel() for p in model.parameters())  # counted once


def test_stateful_prefill_then_decode_steps_equal_the_whole_sequence():
    stateless, stateful = _random_model(), _random_model(stateful=True)
    stateful.load_state_dict(stateless.state_dict(), strict=False)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, TINY.vocab_size, size=(1, 9)).astype(np.int32))
    with torch.no_grad():
        whole = stateless(ids, torch.from_numpy(llama.causal_mask(9)))
        stateful.reset()
        steps = [stateful(ids[:, :5], torch.from_numpy(llama.causal_mask(5)))]
        for end in range(6, 10):
            steps.append(stateful(ids[:, end - 1:end], torch.from_numpy(llama.causal_mask(1, end))))
    # The cache holds float16 keys and values: equal to float16 precision.
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=2e-3, atol=2e-3 * float(whole.abs().max()))
    assert float(stateful.key_cache[:, :, :, 9:].abs().max()) == 0.0  # nothing written past the end


def test_causal_mask_of_a_decode_step_sees_every_earlier_position():
    mask = llama.causal_mask(2, 5, batch=3)
    assert mask.shape == (3, 1, 2, 5)
    np.testing.assert_array_equal(mask[0, 0], [[0, 0, 0, 0, -np.inf], [0, 0, 0, 0, 0]])


def test_llama_of_size_lands_near_the_asked_size():
    config = llama.llama_of_size(5e8)
    assert abs(config.parameters - 5e8) < 0.1 * 5e8
    assert config.hidden_size % 64 == 0 and config.num_heads % config.num_kv_heads == 0


@given(heads=st.integers(1, 6), half=st.integers(1, 5), inputs=st.integers(1, 4))
def test_rotary_row_permutation_is_undone_exactly(heads, half, inputs):
    weight = np.arange(heads * 2 * half * inputs, dtype=np.float32).reshape(heads * 2 * half, inputs)
    permuted = permute_rotary_rows(weight, heads)
    np.testing.assert_array_equal(unpermute_rotary_rows(permuted, heads), weight)
    if half > 1:
        # llama.cpp's layout interleaves each head's two halves: row 1 is the second half's first.
        np.testing.assert_array_equal(permuted[1], weight[half])


@pytest.mark.parametrize("heads", [1, 3])
def test_unpermuted_rotary_rows_rotate_as_llama_cpp_does(heads):
    """llama.cpp rotates adjacent pairs (2i, 2i + 1) of its permuted rows; after unpermuting, the
    rotate-half rotation (i, i + d/2) of llama.py gives the same rotated vector, reordered back."""
    d, inputs = 8, 5
    rng = np.random.default_rng(heads)
    weight = rng.standard_normal((heads * d, inputs))
    x = rng.standard_normal(inputs)
    positions = np.array([3.0])
    stored = permute_rotary_rows(weight, heads)
    # llama.cpp: the projection with its stored rows, then each adjacent pair turned.
    y = (stored @ x).reshape(heads, d)
    angles = 3.0 * 10000.0 ** (-2.0 * np.arange(d // 2) / d)
    pairs = y.reshape(heads, d // 2, 2)
    cpp = np.stack([pairs[..., 0] * np.cos(angles) - pairs[..., 1] * np.sin(angles),
                    pairs[..., 1] * np.cos(angles) + pairs[..., 0] * np.sin(angles)], axis=-1).reshape(heads, d)
    # llama.py's layout: the unpermuted rows, the rotate-half rotation.
    ours = _rotate((unpermute_rotary_rows(stored, heads) @ x).reshape(1, heads, d), positions, 10000.0)[0]
    np.testing.assert_allclose(permute_rotary_rows(ours.reshape(heads * d, 1), heads).reshape(heads, d), cpp, rtol=1e-12, atol=1e-12)
