"""Llama-shaped decoder packages of any size with random float16 weights, written with bounded memory.

`write_llama_package(config, path)` builds the decoder's MIL program directly (no torch model: the
op sequence of `benchmarks/models/llama.py`'s converted stateless program, RMSNorm as the layer
norm of [x, -x], rotary embeddings in the rotate-half layout, grouped-query attention through
`scaled_dot_product_attention`, a SwiGLU MLP and an lm_head tied to the embedding) whose weight
consts hold no values: each is drawn from its own seeded generator whenever it is read (a
`RandomWeight`, drawn once into a scratch weight file next to the output), so coremltools'
writer pulls one weight at a time while it writes the weight file, and memory stays near the
largest weight's worth whatever the parameter count (disk: twice the package while it is written). The
package loads in coremltools and in milcompress's executor. Inputs `input_ids` (1, L) int32 and
`causal_mask` (1, 1, L, L) float16 (`llama.causal_mask`), output `logits` (1, L, vocab) float16,
for a fixed length L (`sequence_length`).

`python -m benchmarks.models.llama_package 430M out.mlpackage` writes one from the command line.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from benchmarks.models.llama import LlamaConfig, llama_of_size, rotary_tables


@dataclass(frozen=True)
class RandomWeight:
    """A float16 weight drawn from N(mean, std) by its own generator (`seed`), on every read;
    read as `milcompress.storage.BlobRef`s are, so a const can hold it instead of its value."""

    seed: int
    shape: Tuple[int, ...]
    std: float = 0.02
    mean: float = 0.0

    def load(self, what: Optional[str] = None) -> np.ndarray:
        values = np.random.default_rng(self.seed).standard_normal(self.shape, dtype=np.float32)
        values *= self.std
        values += self.mean
        return values.astype(np.float16)

    def check(self, what: Optional[str] = None) -> None:
        return None


def build_program(config: LlamaConfig, sequence_length: int = 8, seed: int = 0, scratch=None):
    """The decoder's MIL program (iOS18), weights read on demand from `RandomWeight`s, or, with
    `scratch` (a `milcompress.storage.ScratchSpace`), drawn once each and read back from it
    (coremltools reads a const's value several times while it writes a model)."""
    from milcompress._coremltools import IOS18, mb, read_on_demand, types

    c, L = config, sequence_length
    d, h, kv = c.head_dim, c.num_heads, c.num_kv_heads
    counter = [seed * 1_000_003]

    def weight(name: str, shape, std: float = 0.02, mean: float = 0.0):
        counter[0] += 1
        var = mb.const(val=np.broadcast_to(np.float16(0), shape), name=name)
        source = RandomWeight(counter[0], tuple(shape), std, mean)
        read_on_demand(var, source if scratch is None else scratch.keep_array(source.load()))
        return var

    cos_table, sin_table = (table[:L].numpy().astype(np.float16) for table in rotary_tables(c))

    def rms_norm(x, name: str):
        scale = weight(f"{name}_weight", (c.hidden_size,), std=0.0, mean=1.0)
        doubled = mb.concat(values=[x, mb.mul(x=x, y=np.float16(-1))], axis=-1)
        normalized = mb.layer_norm(x=doubled, axes=[-1], epsilon=np.float16(c.rms_norm_eps))
        half = mb.slice_by_index(x=normalized, begin=[0, 0, 0], end=[1, L, c.hidden_size])
        return mb.mul(x=half, y=scale)

    def heads(x, count: int):
        return mb.transpose(x=mb.reshape(x=x, shape=[1, L, count, d]), perm=[0, 2, 1, 3])

    def rotate(x, count: int):
        first = mb.slice_by_index(x=x, begin=[0, 0, 0, 0], end=[1, count, L, d // 2])
        second = mb.slice_by_index(x=x, begin=[0, 0, 0, d // 2], end=[1, count, L, d])
        rotated = mb.concat(values=[mb.mul(x=second, y=np.float16(-1)), first], axis=-1)
        return mb.add(x=mb.mul(x=x, y=tables["cos"]), y=mb.mul(x=rotated, y=tables["sin"]))

    tables = {}

    def repeat_kv(x):
        if h == kv:
            return x
        tiled = mb.tile(x=mb.expand_dims(x=x, axes=[2]), reps=[1, 1, h // kv, 1, 1])
        return mb.reshape(x=tiled, shape=[1, h, L, d])

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, L), dtype=types.int32), mb.TensorSpec(shape=(1, 1, L, L), dtype=types.fp16)],
        opset_version=IOS18,
    )
    def program(input_ids, causal_mask):
        tables["cos"] = mb.const(val=cos_table, name="rotary_cos")  # one const each, as coremltools' deduplication leaves them
        tables["sin"] = mb.const(val=sin_table, name="rotary_sin")
        embedding = weight("model_embed_tokens_weight", (c.vocab_size, c.hidden_size))
        x = mb.gather(x=embedding, indices=input_ids, axis=0)
        for i in range(c.num_layers):
            prefix = f"model_layers_{i}"
            normed = rms_norm(x, f"{prefix}_input_layernorm")
            q = rotate(heads(mb.linear(x=normed, weight=weight(f"{prefix}_self_attn_q_proj_weight", (h * d, c.hidden_size))), h), h)
            k = rotate(heads(mb.linear(x=normed, weight=weight(f"{prefix}_self_attn_k_proj_weight", (kv * d, c.hidden_size))), kv), kv)
            v = heads(mb.linear(x=normed, weight=weight(f"{prefix}_self_attn_v_proj_weight", (kv * d, c.hidden_size))), kv)
            attended = mb.scaled_dot_product_attention(query=q, key=repeat_kv(k), value=repeat_kv(v), attn_mask=causal_mask)
            merged = mb.reshape(x=mb.transpose(x=attended, perm=[0, 2, 1, 3]), shape=[1, L, h * d])
            x = mb.add(x=x, y=mb.linear(x=merged, weight=weight(f"{prefix}_self_attn_o_proj_weight", (c.hidden_size, h * d))))
            normed = rms_norm(x, f"{prefix}_post_attention_layernorm")
            gate = mb.silu(x=mb.linear(x=normed, weight=weight(f"{prefix}_mlp_gate_proj_weight", (c.intermediate_size, c.hidden_size))))
            up = mb.linear(x=normed, weight=weight(f"{prefix}_mlp_up_proj_weight", (c.intermediate_size, c.hidden_size)))
            down = weight(f"{prefix}_mlp_down_proj_weight", (c.hidden_size, c.intermediate_size))
            x = mb.add(x=x, y=mb.linear(x=mb.mul(x=gate, y=up), weight=down))
        logits = mb.linear(x=rms_norm(x, "model_norm"), weight=embedding, name="logits")
        return logits

    return program


def write_llama_package(config: LlamaConfig, path, *, sequence_length: int = 8, seed: int = 0) -> Path:
    """Write the decoder as an .mlpackage at `path` (replaced if it exists); returns the path."""
    import coremltools as ct

    from milcompress._coremltools import quiet_progress_bars

    from milcompress.storage import ScratchSpace

    path = Path(path)
    scratch = ScratchSpace(path.parent)
    try:
        program = build_program(config, sequence_length, seed, scratch)
        with quiet_progress_bars():
            model = ct.convert(
                program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True,
            )
    finally:
        scratch.close()
    # coremltools made the package in a temporary directory: move it rather than copy it.
    if path.exists():
        shutil.rmtree(path)
    shutil.move(model.package_path, path)
    model.is_temp_package = False  # it is ours now: its finaliser must not remove it
    return path


def parse_size(text: str) -> float:
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}
    text = text.strip().upper()
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parameters", help="parameter count, e.g. 125M, 430M, 8B")
    parser.add_argument("output", help="the .mlpackage to write")
    parser.add_argument("--sequence-length", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = llama_of_size(parse_size(args.parameters))
    start = time.perf_counter()
    write_llama_package(config, args.output, sequence_length=args.sequence_length, seed=args.seed)
    size = sum(f.stat().st_size for f in Path(args.output).rglob("*") if f.is_file())
    print(f"wrote {args.output}: {config.parameters:,} parameters ({config}), {size / 1e9:.2f} GB, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
