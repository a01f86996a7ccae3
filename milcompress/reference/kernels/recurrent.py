"""Kernels for the recurrent layers `gru`, `lstm` and `rnn` (coremltools `defs/iOS15/recurrent.py`;
iOS17 only adds fp16; iOS18's `gru` adds `reset_after` and `input_bias`).

Layouts, as coremltools documents them (its torch frontend reorders torch's weights into them):
- `x` is (sequence, batch, input); states are (batch, hidden), or (batch, 2 * hidden) for a
  bidirectional lstm, the forward direction's half first.
- lstm stacks its gates' weights and biases as [input, forget, output, cell] (torch: input, forget,
  cell, output) and its peephole as [input, forget, output]; `bias` is the input-hidden bias plus
  the hidden-hidden bias.
- gru stacks them as [reset, output, update] (torch: reset, update, new).

What the op docstrings leave open is taken from coremltools' own op tests, which compare with Core
ML (`ops/tests/iOS14/test_recurrent.py`, `iOS18/test_recurrent.py`), and from its NeuralNetwork
backend's layer mapping:
- gru applies the reset gate to the hidden state before the hidden-hidden matmul:
  o_t = activation(W_io x_t + W_ho (r_t * h_{t-1}) + b_o). Torch's GRU computes
  r_t * (W_ho h_{t-1} + b_ho) instead; iOS18's `reset_after=True` selects that form, with
  `input_bias` as the input-hidden bias and `bias` as the hidden-hidden bias (both all zeros when
  absent).
- lstm's `clip` clips the cell state c_t after each update (as TensorFlow's cell_clip), and the
  output gate's peephole looks at the updated c_t, the input and forget gates' at c_{t-1}.
- `direction="reverse"` reads `x` from its last step to its first and returns the hidden states in
  that processing order (not flipped back). A bidirectional lstm's backward half, in contrast, is
  aligned with the input's steps, as torch's is. With `output_sequence=False` the first output is
  each direction's final hidden state, shaped (1, batch, directions * hidden).
- activations: `scaled_tanh` is tanh (Core ML's default alpha = beta = 1), `hard_sigmoid` (also
  spelled `sigmoid_hard`) is clip(0.2 x + 0.5, 0, 1), `linear` is the identity.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

from milcompress.reference.kernels import OpArgs, kernel

Activation = Callable[[torch.Tensor], torch.Tensor]


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


_ACTIVATIONS: Dict[str, Activation] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "scaled_tanh": torch.tanh,
    "hard_sigmoid": _hard_sigmoid,
    "sigmoid_hard": _hard_sigmoid,
    "relu": torch.relu,
    "linear": lambda x: x,
}


def _activation(args: OpArgs, name: str) -> Activation:
    activation = args.str(name)
    try:
        return _ACTIVATIONS[activation.lower()]
    except KeyError:
        raise ValueError(f"unsupported {name} '{activation}'; supported: {', '.join(sorted(_ACTIVATIONS))}") from None


def _in_processing_order(x: torch.Tensor, direction: str) -> torch.Tensor:
    if direction not in ("forward", "reverse"):
        raise ValueError(f"unsupported direction '{direction}'")
    return x.flip(0) if direction == "reverse" else x


def _sequence_output(hidden_states: List[torch.Tensor], output_sequence: bool) -> torch.Tensor:
    """Every step's hidden state, (sequence, batch, hidden), or the last one, (1, batch, hidden)."""
    return torch.stack(hidden_states) if output_sequence else hidden_states[-1].unsqueeze(0)


def _lstm_direction(
    steps: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: Optional[torch.Tensor],
    peephole: Optional[torch.Tensor],
    activations: Tuple[Activation, Activation, Activation],
    clip: Optional[float],
) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One direction of an lstm over `steps` in order: (hidden state after each step, final h, c)."""
    recurrent_activation, cell_activation, activation = activations
    hidden_size = weight_hh.shape[1]
    input_projections = steps @ weight_ih.T + (0.0 if bias is None else bias)
    if peephole is None:
        peephole = weight_hh.new_zeros(3 * hidden_size)
    peephole_input, peephole_forget, peephole_output = peephole.split(hidden_size)
    hidden_states = []
    for input_projection in input_projections:
        gates = input_projection + h @ weight_hh.T
        input_gate, forget_gate, output_gate, cell_gate = gates.split(hidden_size, dim=-1)
        input_gate = recurrent_activation(input_gate + peephole_input * c)
        forget_gate = recurrent_activation(forget_gate + peephole_forget * c)
        c = forget_gate * c + input_gate * cell_activation(cell_gate)
        if clip is not None:
            c = torch.clamp(c, -clip, clip)
        output_gate = recurrent_activation(output_gate + peephole_output * c)
        h = output_gate * activation(c)
        hidden_states.append(h)
    return hidden_states, h, c


@kernel("lstm")
def lstm(args: OpArgs):
    x = args["x"]
    direction = args.str("direction")
    output_sequence = args.bool("output_sequence")
    activations = tuple(_activation(args, name) for name in ("recurrent_activation", "cell_activation", "activation"))
    clip = args.float("clip")
    forward_weights = (args["weight_ih"], args["weight_hh"], args.get("bias"), args.get("peephole"))
    if direction != "bidirectional":
        steps = _in_processing_order(x, direction)
        hidden_states, h, c = _lstm_direction(
            steps, args["initial_h"], args["initial_c"], *forward_weights, activations, clip
        )
        return _sequence_output(hidden_states, output_sequence), h, c

    hidden_size = args["weight_hh"].shape[1]
    forward_h, backward_h = args["initial_h"].split(hidden_size, dim=-1)
    forward_c, backward_c = args["initial_c"].split(hidden_size, dim=-1)
    backward_weights = (args["weight_ih_back"], args["weight_hh_back"], args.get("bias_back"), args.get("peephole_back"))
    forward_states, forward_h, forward_c = _lstm_direction(
        x, forward_h, forward_c, *forward_weights, activations, clip
    )
    backward_states, backward_h, backward_c = _lstm_direction(
        x.flip(0), backward_h, backward_c, *backward_weights, activations, clip
    )
    if output_sequence:
        output = torch.cat([torch.stack(forward_states), torch.stack(backward_states).flip(0)], dim=-1)
    else:
        output = torch.cat([forward_h, backward_h], dim=-1).unsqueeze(0)
    return output, torch.cat([forward_h, backward_h], dim=-1), torch.cat([forward_c, backward_c], dim=-1)


@kernel("gru")
def gru(args: OpArgs):
    weight_ih, weight_hh = args["weight_ih"], args["weight_hh"]
    hidden_size = weight_hh.shape[1]
    recurrent_activation = _activation(args, "recurrent_activation")
    activation = _activation(args, "activation")
    reset_after = args.bool("reset_after", False)
    zeros = weight_hh.new_zeros(3 * hidden_size)
    input_bias, hidden_bias = args.get("input_bias", zeros), args.get("bias", zeros)

    steps = _in_processing_order(args["x"], args.str("direction"))
    input_projections = steps @ weight_ih.T + input_bias
    hidden_reset_weight, hidden_output_weight, hidden_update_weight = weight_hh.split(hidden_size)
    hidden_reset_bias, hidden_output_bias, hidden_update_bias = hidden_bias.split(hidden_size)
    h = args["initial_h"]
    hidden_states = []
    for input_projection in input_projections:
        input_reset, input_output, input_update = input_projection.split(hidden_size, dim=-1)
        reset_gate = recurrent_activation(input_reset + h @ hidden_reset_weight.T + hidden_reset_bias)
        update_gate = recurrent_activation(input_update + h @ hidden_update_weight.T + hidden_update_bias)
        if reset_after:
            hidden_output = reset_gate * (h @ hidden_output_weight.T + hidden_output_bias)
        else:
            hidden_output = (reset_gate * h) @ hidden_output_weight.T + hidden_output_bias
        output_gate = activation(input_output + hidden_output)
        h = (1 - update_gate) * output_gate + update_gate * h
        hidden_states.append(h)
    return _sequence_output(hidden_states, args.bool("output_sequence")), h


@kernel("rnn")
def rnn(args: OpArgs):
    weight_hh = args["weight_hh"]
    activation = _activation(args, "activation")
    steps = _in_processing_order(args["x"], args.str("direction"))
    input_projections = steps @ args["weight_ih"].T + args.get("bias", 0.0)
    h = args["initial_h"]
    hidden_states = []
    for input_projection in input_projections:
        h = activation(input_projection + h @ weight_hh.T)
        hidden_states.append(h)
    return _sequence_output(hidden_states, args.bool("output_sequence")), h
