"""Decoder LLMs in the reference executor: recognising one and running it a token at a time.

`Decoder.of(interpreter)` recognises a decoder from its program (None when it is not one):
- token ids: an integer input of rank 2, (batch, length), that indexes a `gather` (through
  layout-only ops); the gathered axis' size is the vocabulary;
- a causal mask: a float input of rank 4, (batch, 1, query length, end), that reaches the
  `attn_mask` of a `scaled_dot_product_attention` (through layout-only ops) or, where attention is
  written out in matmuls, whose name contains "mask";
- logits: a float output whose last dimension is the vocabulary;
- no other inputs. States (KV caches) or none.
The mask is the additive one of Apple's on-device Llama recipe (and `benchmarks/models/llama.py`):
0 where a query may attend, -inf after its own position, `end` the number of positions seen so
far, this call's included.

`DecoderRun` runs it as an app does, batch 1: `prefill(ids)` gives the logits of every prompt
position, then `step(token)` the next position's. A stateful decoder does this in one session (the
prompt in one call, then one token a call); a stateless one reruns the whole growing sequence at
every step and takes its last position. Both give the same logits, up to float rounding.

`sequence_calls(ids, steps)` turns one row of token ids into the calls an app would make (the
calibration format for decoders, see `passes/size.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np

from milcompress._coremltools import Var, types
from milcompress.errors import InputError
from milcompress.reference.interpreter import Interpreter

LAYOUT_ONLY = ("cast", "identity", "reshape", "expand_dims", "squeeze", "transpose")


def gather_bound(var: Var) -> Optional[int]:
    """The size of the axis a `gather` indexes with `var`, following layout-only ops."""
    bounds = []
    for op in var.child_ops:
        if op.op_type in LAYOUT_ONLY:
            bound = gather_bound(op.outputs[0])
        elif op.op_type == "select" and op.inputs.get("a") is var:
            # torch's negative-index wrap, `select(ids >= 0, ids, ids + vocabulary)`, before the gather
            bound = gather_bound(op.outputs[0])
        elif op.op_type == "gather" and op.inputs.get("indices") is var:
            axis = int(op.inputs["axis"].val) if "axis" in op.inputs else 0
            shape = op.inputs["x"].shape
            bound = int(shape[axis]) if isinstance(shape[axis], (int, np.integer)) else None
        else:
            bound = None
        if bound is not None:
            bounds.append(bound)
    return min(bounds) if bounds else None


def _reaches_attention_mask(var: Var) -> bool:
    for op in var.child_ops:
        if op.op_type in LAYOUT_ONLY and _reaches_attention_mask(op.outputs[0]):
            return True
        if op.op_type == "scaled_dot_product_attention" and op.inputs.get("attn_mask") is var:
            return True
    return False


def causal_mask(query_length: int, end: int, dtype=np.float32) -> np.ndarray:
    """The additive mask (1, 1, query_length, end) for queries at positions end - query_length ..
    end - 1: 0 where a query may attend, -inf after its own position."""
    positions = np.arange(end - query_length, end)[:, None]
    mask = np.where(np.arange(end)[None, :] <= positions, 0.0, -np.inf)
    return mask.astype(dtype)[None, None]


@dataclass(frozen=True)
class Decoder:
    """A decoder's roles in one interpreter's function (see the module docstring)."""

    interpreter: Interpreter
    ids: str
    mask: str
    logits: str
    vocabulary: int

    @classmethod
    def of(cls, interpreter: Interpreter) -> Optional["Decoder"]:
        declared = interpreter.inputs
        function_inputs = interpreter.function.inputs
        ids = [name for name, d in declared.items() if d.dtype.kind in "iu" and d.rank == 2 and gather_bound(function_inputs[name])]
        floats = [name for name, d in declared.items() if d.dtype.kind == "f" and d.rank == 4]
        masks = [name for name in floats if _reaches_attention_mask(function_inputs[name])] or [n for n in floats if "mask" in n.lower()]
        if len(ids) != 1 or len(masks) != 1 or len(declared) != 2:
            return None
        vocabulary = gather_bound(function_inputs[ids[0]])
        logits = [
            var.name for var in interpreter.function.outputs
            if types.is_tensor(var.sym_type) and np.dtype(types.nptype_from_builtin(var.dtype)).kind == "f" and len(var.shape) >= 1 and var.shape[-1] == vocabulary
        ]
        if len(logits) != 1:
            return None
        return cls(interpreter, ids[0], masks[0], logits[0], int(vocabulary))

    @property
    def stateful(self) -> bool:
        return self.interpreter.stateful

    @property
    def max_positions(self) -> Optional[int]:
        """The most positions a sequence may reach: the mask's `end` bound (None: unbounded)."""
        return self.interpreter.inputs[self.mask].ranges[-1][1]

    @property
    def default_length(self) -> Optional[int]:
        default = self.interpreter.inputs[self.ids].default
        return None if default is None else int(default[-1])

    def check_ids(self, ids, steps: int = 0) -> np.ndarray:
        """`ids` as a 1-D int64 array; InputError if one is outside the vocabulary or the sequence
        (with `steps` more tokens) is longer than the model takes."""
        ids = np.asarray(ids)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.size == 0:
            raise InputError(f"token ids for '{self.ids}' must be a non-empty 1-D array of integers, not {ids.dtype} {list(ids.shape)}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocabulary))
        if bad.size:
            raise InputError(
                f"token id {int(ids[bad[0]])} at position {int(bad[0])} of '{self.ids}' is outside the vocabulary (0..{self.vocabulary - 1})"
            )
        limit = self.max_positions
        if limit is not None and ids.size + steps > limit:
            raise InputError(
                f"{ids.size} tokens" + (f" and {steps} decode steps" if steps else "")
                + f" make {ids.size + steps} positions; the model takes at most {limit} ('{self.mask}' {self.interpreter.inputs[self.mask].describe()})"
            )
        return ids.astype(np.int64)

    def call(self, ids: np.ndarray, end: int) -> Dict[str, np.ndarray]:
        """The inputs of one call: `ids` (1-D) at positions end - len(ids) .. end - 1."""
        declared = self.interpreter.inputs
        return {
            self.ids: np.asarray(ids, dtype=declared[self.ids].dtype)[None],
            self.mask: causal_mask(len(ids), end, declared[self.mask].dtype),
        }

    def sequence_calls(self, ids, steps: int) -> List[Dict[str, np.ndarray]]:
        """The calls an app makes to run `ids`: a stateful decoder's prefill of all but the last
        `steps` tokens, then one call per token; a stateless decoder's one call on all of them."""
        ids = self.check_ids(ids)
        if not self.stateful:
            return [self.call(ids, len(ids))]
        prefill = max(1, len(ids) - steps)
        return [self.call(ids[:prefill], prefill)] + [self.call(ids[end - 1 : end], end) for end in range(prefill + 1, len(ids) + 1)]


class DecoderRun:
    """One sequence through a decoder: `prefill(ids)`, then `step(token)` (see the module docstring).
    `replace` is the interpreter's what-if replacement of consts, for every call."""

    def __init__(self, decoder: Decoder, replace: Optional[Mapping[str, np.ndarray]] = None):
        self.decoder = decoder
        self.session = decoder.interpreter.new_session(replace=replace)  # a stateless one keeps nothing between calls
        self.ids = np.zeros(0, dtype=np.int64)

    def _run(self, inputs) -> np.ndarray:
        logits = self.session.run(inputs)[self.decoder.logits]
        return np.asarray(logits).reshape(-1, logits.shape[-1])

    def prefill(self, ids) -> np.ndarray:
        """Logits (len(ids), vocabulary) of every prompt position."""
        if self.ids.size:
            raise InputError("prefill starts a sequence: make a new DecoderRun for another")
        self.ids = self.decoder.check_ids(ids)
        return self._run(self.decoder.call(self.ids, self.ids.size))

    def step(self, token: int) -> np.ndarray:
        """Logits (vocabulary,) of the next position, `token` fed at it."""
        if not self.ids.size:
            raise InputError("a decode step follows a prefill")
        self.ids = self.decoder.check_ids(np.append(self.ids, int(token)))
        if self.decoder.stateful:
            return self._run(self.decoder.call(self.ids[-1:], self.ids.size))[-1]
        return self._run(self.decoder.call(self.ids, self.ids.size))[-1]
