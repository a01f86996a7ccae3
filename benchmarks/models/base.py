"""What the side-by-side benchmark needs from a model: `BenchModel`.

A model module exposes `load(quick: bool = False) -> BenchModel`. The benchmark converts
`module` to an ML program, compresses the program's weights with each library, puts the
decompressed weights back into a copy of `module` by name, and calls `evaluate` on it.

Weight names: coremltools names a converted weight const after its `state_dict` key, dots made
underscores, plus `_to_fp16` (`features.0.0.weight` -> `features_0_0_weight_to_fp16`). Batch
norm must already be folded into the convolutions, or the conv weights lose their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn


@dataclass
class BenchModel:
    name: str
    module: nn.Module  # float32, eval mode, batch norm folded
    example_inputs: Tuple[torch.Tensor, ...]  # traced and converted with these shapes
    input_types: Sequence  # coremltools TensorTypes for ct.convert, in forward's order
    # Runs a module shaped like `module` (other weights) on the evaluation data and returns its
    # accuracy metrics, named as in `metrics`: the float32 module gets the perfect score.
    evaluate: Callable[[nn.Module], Dict[str, float]]
    metrics: Sequence[str]
    # Metric a higher value of which is better, per name (KL divergence is lower-better).
    higher_is_better: Dict[str, bool]
    # Calibration inputs for the converted program, by input name, samples stacked along a new
    # first axis; drawn from data the evaluation does not use. None where a model has none.
    calibration: Optional[Callable[[], Dict[str, "np.ndarray"]]] = None


def normalised_keys(module: nn.Module) -> Dict[str, str]:
    """state_dict key with dots made underscores -> state_dict key."""
    return {key.replace(".", "_"): key for key in module.state_dict()}


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing conv followed by bn (eval mode), with a bias."""
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True,
    )
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
    return folded.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d in an `nn.Sequential`
    into that conv. The batch norm's slot becomes an `nn.Identity`, so no index moves and the conv
    weights keep their state_dict keys. Raises if a batch norm is left over. Returns `model`."""
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        for index in range(1, len(container)):
            conv, bn = container[index - 1], container[index]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                container[index - 1] = fold_batch_norm(conv, bn)
                container[index] = nn.Identity()
    leftover = [name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ValueError(f"batch norms not directly after a conv in a Sequential: {leftover}")
    return model


class ProgramModule:
    """A converted (or compressed) program, called like the torch module it came from, so
    `BenchModel.evaluate` can score the program itself: positional inputs in the program's input
    order, batches of any size split into the batch the program was converted with (the last one
    padded), run by milcompress's reference executor. `precision="float16"` rounds every
    activation to float16, as Core ML's GPU and Neural Engine do."""

    def __init__(self, program, precision: str = "float16"):
        from milcompress.reference import Interpreter

        self.interpreter = Interpreter(program, precision=precision)
        spec = self.interpreter.input_spec()
        self.input_names = list(spec)
        self.batch = spec[self.input_names[0]][0][0]

    def eval(self) -> "ProgramModule":
        return self

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        dtypes = self.interpreter.input_spec()
        outputs = []
        for start in range(0, len(inputs[0]), self.batch):
            chunk = [tensor[start:start + self.batch] for tensor in inputs]
            count = len(chunk[0])
            if count < self.batch:
                chunk = [torch.cat([c, c.new_zeros((self.batch - count,) + tuple(c.shape[1:]))]) for c in chunk]
            feed = {name: c.numpy().astype(dtypes[name][1]) for name, c in zip(self.input_names, chunk)}
            (first, *_) = self.interpreter.run(feed).values()
            outputs.append(torch.from_numpy(first[:count]))
        return torch.cat(outputs)
