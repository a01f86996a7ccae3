"""The reference executor: run MIL programs with torch on the CPU, where Core ML cannot run.

- `run_program(model, inputs)`: one function of a program (from `ct.convert`, a saved .mlpackage,
  or after our passes) on one set of inputs, in float32 or float16 emulation.
- `Interpreter`: the same, built once and run many times, with observers; `Session`
  (`interpreter.new_session(initial_states)`): calls of a stateful program (KV caches) sharing
  their states, as an app's `MLState` does.
- `Decoder`, `DecoderRun`: a decoder LLM recognised from its program and run a token at a time.
- `ChannelStatistics`: an observer recording, per weight, what multiplies it (calibration).
- `verify(original, compressed, inputs)`: what compression did to every output; on a decoder
  given token ids, prefill and greedy decode steps compared step by step (`verify_decoder`).

The op table lives in `kernels/`, one torch function per MIL op type; `supported_op_types()` lists
them. Needs torch (`pip install milcompress[reference]`).
"""

from typing import Dict, Mapping, Optional

import numpy as np

try:
    import torch  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("milcompress.reference runs programs with torch: pip install 'milcompress[reference]'") from error

from milcompress.reference.decoder import Decoder, DecoderRun
from milcompress.reference.interpreter import PRECISIONS, ExecutionError, Interpreter, Session, UnsupportedOpError
from milcompress.reference.kernels import supported_op_types
from milcompress.reference.statistics import ChannelRecord, ChannelStatistics
from milcompress.reference.verify import (
    DecoderReport,
    OutputComparison,
    StepComparison,
    VerifyReport,
    load_program,
    random_samples,
    run_sequence,
    sequences_of,
    verify,
    verify_decoder,
)


def run_program(model, inputs: Mapping[str, np.ndarray], precision: str = "float32", function_name: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Output name -> value of `model` (a Program, an MLModel or an .mlpackage path) on `inputs`."""
    return Interpreter(load_program(model), function_name, precision).run(inputs)


__all__ = [
    "PRECISIONS",
    "ChannelRecord",
    "ChannelStatistics",
    "Decoder",
    "DecoderReport",
    "DecoderRun",
    "ExecutionError",
    "Interpreter",
    "OutputComparison",
    "UnsupportedOpError",
    "VerifyReport",
    "load_program",
    "random_samples",
    "run_program",
    "run_sequence",
    "sequences_of",
    "Session",
    "StepComparison",
    "supported_op_types",
    "verify",
    "verify_decoder",
]
