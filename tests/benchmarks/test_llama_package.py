"""The generated Llama-shaped package is the decoder of benchmarks/models/llama.py: the same logits
as the torch model holding the package's weights, and coremltools reads it."""

import numpy as np
import torch

from benchmarks.models import llama
from benchmarks.models.llama_package import RandomWeight, parse_size, write_llama_package
from milcompress import _coremltools as ct_private
from milcompress.packages import load_model
from milcompress.passes.graph import walk_ops
from milcompress.reference import Interpreter

CONFIG = llama.LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2)


def test_the_package_computes_the_torch_decoder(tmp_path):
    path = write_llama_package(CONFIG, tmp_path / "tiny.mlpackage", sequence_length=6)
    model, prog = load_model(path)
    weights = {op.name: op.outputs[0].val for op, _ in walk_ops(prog) if op.op_type == "const" and op.name.endswith("_weight")}
    torch_model = llama.LlamaForCausalLM(CONFIG).eval()
    state = {}
    for name in torch_model.state_dict():
        const = name.replace(".", "_")
        if name == "lm_head.weight":
            const = "model_embed_tokens_weight"  # tied
        state[name] = torch.from_numpy(weights[const].astype(np.float32))
    torch_model.load_state_dict(state, strict=True)
    ids = np.array([[3, 141, 59, 26, 5, 319]], dtype=np.int32)
    mask = llama.causal_mask(6)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = Interpreter(prog).run({"input_ids": ids, "causal_mask": mask.astype(np.float16)})["logits"]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    spec = model.get_spec()
    assert [i.name for i in spec.description.input] == ["input_ids", "causal_mask"] and spec.description.output[0].name == "logits"
    assert ct_private.model_type(model) == "mlProgram"


def test_random_weights_are_reproducible_and_of_the_asked_scale():
    weight = RandomWeight(7, (300, 200), std=0.02)
    first, second = weight.load(), weight.load()
    assert first.dtype == np.float16 and np.array_equal(first, second)
    assert abs(float(first.astype(np.float32).std()) - 0.02) < 0.001
    assert not np.array_equal(first, RandomWeight(8, (300, 200)).load())
    assert parse_size("430M") == 430e6 and parse_size("8B") == 8e9
