"""A Llama-shaped decoder in plain torch, stateless or with a KV cache, and its conversion.

Owns: the architecture (RMSNorm, rotary embeddings in the rotate-half layout, grouped-query
attention through `F.scaled_dot_product_attention`, SwiGLU MLP, an lm_head tied to the token
embedding), random initialisation at any size, the causal masks callers feed it, and
`convert`, which turns either variant into an ML program as Apple's on-device Llama recipe does.
Module names follow the Hugging Face Llama checkpoints (`model.layers.0.self_attn.q_proj`, ...),
so real weights load by name and converted weight consts are named after them.

Both variants take the same inputs, token ids (batch, query_length) int32 and an additive causal
mask (batch, 1, query_length, end) float, where `end` is the number of positions seen so far,
this call's included, and return logits (batch, query_length, vocab):
- `LlamaForCausalLM` is stateless: every call sees the whole sequence (end == query_length).
- `StatefulLlamaForCausalLM` keeps float16 key and value caches, (layers, batch, kv_heads,
  max_context, head_dim) `register_buffer`s updated by slice assignment and declared as
  `ct.StateType`: a call writes its keys and values at positions end - query_length .. end - 1 and
  attends to the cache's first `end` positions (a prefill, then one token a call).
Converted with `ct.RangeDim` lengths, so one program serves any prompt length up to
`max_context`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_context: int = 256

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"heads must divide hidden_size and kv heads must divide heads: {self}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def parameters(self) -> int:
        """Parameters, the tied embedding counted once."""
        attention = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attention + mlp + 2 * self.hidden_size
        return self.vocab_size * self.hidden_size + self.num_layers * per_layer + self.hidden_size


# SmolLM2-135M(-Instruct): the real small decoder the benchmarks load (benchmarks/models/smollm2.py).
SMOLLM2_135M = LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
    num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
)


def llama_of_size(parameters: float, *, vocab_size: int = 32000, max_context: int = 256) -> LlamaConfig:
    """The Llama-shaped config closest to `parameters` parameters among widths that are multiples
    of 64: head size 64, 4 query heads per key/value head, an MLP 8/3 times as wide (rounded to
    64), one layer per 64 units of width (between SmolLM2-135M's 19 and Llama-2-7B's 128)."""

    def shaped(width: int) -> LlamaConfig:
        heads = width // 64
        kv_heads = max(d for d in range(1, heads + 1) if heads % d == 0 and d <= max(1, heads // 4))
        intermediate = 64 * round(width * 8 / 3 / 64)
        return LlamaConfig(vocab_size, width, intermediate, max(2, width // 64), heads, kv_heads, max_context=max_context)

    return min((shaped(64 * n) for n in range(4, 129)), key=lambda c: abs(c.parameters - parameters))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed as the layer norm of [x, -x] (mean 0, variance
    mean(x^2)), the first half kept: the same value, but a float16 program then never squares x
    in float16. Written as `x.pow(2).mean()`, SmolLM2's residual stream (which reaches 25,000 from
    layer 11 on, its massive activation) squares to infinity in float16, and its converted program
    run with float16 activations has perplexity 37,612 instead of 41."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = torch.cat([x, -x], dim=-1)
        normalized = F.layer_norm(doubled, (2 * self.size,), eps=self.eps)
        return normalized[..., : self.size] * self.weight


def rotary_tables(config: LlamaConfig):
    """cos and sin, (max_context, head_dim), for the rotate-half layout of Hugging Face's Llama."""
    inverse = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim))
    angles = torch.outer(torch.arange(config.max_context, dtype=torch.float64), inverse)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        d, h, kv = config.head_dim, config.num_heads, config.num_kv_heads
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache=None):
        """`cache`: None, or (key_cache, value_cache, layer, start, end) of the stateful model."""
        c = self.config
        batch = x.shape[0]
        q = self.q_proj(x).reshape(batch, -1, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(batch, -1, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).reshape(batch, -1, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            key_cache, value_cache, layer, start, end = cache
            key_cache[layer, :, :, start:end, :] = k.to(key_cache.dtype)
            value_cache[layer, :, :, start:end, :] = v.to(value_cache.dtype)
            k = key_cache[layer, :, :, :end, :].to(q.dtype)
            v = value_cache[layer, :, :, :end, :].to(q.dtype)
        repeat = c.num_heads // c.num_kv_heads
        if repeat > 1:
            k = k.unsqueeze(2).repeat(1, 1, repeat, 1, 1).reshape(batch, c.num_heads, -1, c.head_dim)
            v = v.unsqueeze(2).repeat(1, 1, repeat, 1, 1).reshape(batch, c.num_heads, -1, c.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, -1, c.num_heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The stateless decoder: logits of every position of the whole sequence given."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied
        cos, sin = rotary_tables(config)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def _caches(self, start, end):
        return [None] * self.config.num_layers

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        end = causal_mask.shape[-1]
        start = end - input_ids.shape[-1]
        cos = self.rotary_cos[start:end]
        sin = self.rotary_sin[start:end]
        x = self.model.embed_tokens(input_ids)
        for layer, cache in zip(self.model.layers, self._caches(start, end)):
            x = layer(x, cos, sin, causal_mask, cache)
        return self.lm_head(self.model.norm(x))


class StatefulLlamaForCausalLM(LlamaForCausalLM):
    """The decoder with float16 key/value caches as buffers (Core ML states once converted)."""

    def __init__(self, config: LlamaConfig, batch: int = 1):
        super().__init__(config)
        shape = (config.num_layers, batch, config.num_kv_heads, config.max_context, config.head_dim)
        self.register_buffer("key_cache", torch.zeros(shape, dtype=torch.float16))
        self.register_buffer("value_cache", torch.zeros(shape, dtype=torch.float16))

    def _caches(self, start, end):
        return [(self.key_cache, self.value_cache, i, start, end) for i in range(self.config.num_layers)]

    def reset(self) -> None:
        self.key_cache.zero_()
        self.value_cache.zero_()


def random_llama(config: LlamaConfig, *, stateful: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """A decoder with random weights of trained-model scale: linear weights ~ N(0, 0.02),
    norms 1, in eval mode."""
    torch.manual_seed(seed)
    model = (StatefulLlamaForCausalLM if stateful else LlamaForCausalLM)(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.02)
    return model.eval()


def causal_mask(query_length: int, end: Optional[int] = None, batch: int = 1) -> np.ndarray:
    """The additive mask (batch, 1, query_length, end) float32 for queries at positions
    end - query_length .. end - 1: 0 where a query may attend, -inf after its own position."""
    end = query_length if end is None else end
    positions = np.arange(end - query_length, end)[:, None]
    mask = np.where(np.arange(end)[None, :] <= positions, 0.0, -np.inf).astype(np.float32)
    return np.broadcast_to(mask, (batch, 1, query_length, end)).copy()


def convert(model: LlamaForCausalLM, *, example_length: int = 8, flexible: bool = True, pass_pipeline=None):
    """The model as an iOS18 float16 ML program, as Apple's on-device Llama recipe converts it:
    traced on `example_length` tokens; inputs `input_ids` (1, L) int32 and `causal_mask`
    (1, 1, L, end) float16, with `ct.RangeDim` lengths from 1 to max_context when `flexible`;
    the stateful model's caches as `ct.StateType` float16 states `key_cache` / `value_cache`."""
    import coremltools as ct

    c = model.config
    ids = torch.zeros((1, example_length), dtype=torch.int32)
    mask = torch.from_numpy(causal_mask(example_length))
    if isinstance(model, StatefulLlamaForCausalLM):
        model.reset()
    traced = torch.jit.trace(model.eval(), (ids, mask))
    if isinstance(model, StatefulLlamaForCausalLM):
        model.reset()  # tracing ran the model once and wrote the caches
    if flexible:
        query = ct.RangeDim(lower_bound=1, upper_bound=c.max_context, default=example_length)
        end = ct.RangeDim(lower_bound=1, upper_bound=c.max_context, default=example_length)
    else:
        query = end = example_length
    inputs = [
        ct.TensorType(name="input_ids", shape=(1, query), dtype=np.int32),
        ct.TensorType(name="causal_mask", shape=(1, 1, query, end), dtype=np.float16),
    ]
    states = None
    if isinstance(model, StatefulLlamaForCausalLM):
        shape = tuple(model.key_cache.shape)
        states = [
            ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name="key_cache"),
            ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name="value_cache"),
        ]
    kwargs = {} if pass_pipeline is None else {"pass_pipeline": pass_pipeline}
    return ct.convert(
        traced, inputs=inputs, states=states, outputs=[ct.TensorType(name="logits", dtype=np.float16)],
        minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16,
        convert_to="mlprogram", skip_model_load=True, **kwargs,
    )


def perplexity_and_agreement(logits: np.ndarray, ids: np.ndarray, reference: Optional[np.ndarray] = None):
    """Perplexity of `ids` under `logits` (..., L, vocab) predicting each next token, and, with
    `reference` logits, the fraction of positions whose top-1 next token agrees."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    loss = F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]), ids[..., 1:].reshape(-1))
    agreement = None
    if reference is not None:
        reference = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        agreement = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
    return math.exp(float(loss)), agreement
