"""Why a const is left alone: named rules, in the order they are tried, each returning a reason.

A rule sees a `Candidate` (the const, its value, where it is used, and the config that applies)
and returns None or a short reason. The first rule that returns a reason is recorded. Rules that
need the compressed form (it does not fit the shape, the opset cannot hold it, it is too lossy)
are applied by the pass after computing it, with reasons in the same style.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from milcompress._coremltools import Operation
from milcompress.config import AlgorithmConfig
from milcompress.lowering import is_constexpr
from milcompress.passes.graph import Use
from milcompress.passes.weights import is_weight_input


@dataclass(frozen=True, eq=False)
class Candidate:
    """`held`: the dense value where the candidate computed it (a compressed chain's); None for a
    const, whose `value` is read from the const whenever asked (so a program read on demand from
    its package is never held whole)."""

    const: Operation
    function: str
    held: Optional[np.ndarray]
    uses: Tuple[Use, ...]
    config: Optional[AlgorithmConfig] = None
    config_source: Optional[str] = None  # where its config came from; None until resolved (not a weight)
    stored_bytes: Optional[int] = None  # what the weight takes now, where it is not a dense const
    prior: Optional[object] = None  # the form a constexpr chain holds (joint compression), else None

    @property
    def value(self) -> np.ndarray:
        return self.held if self.held is not None else np.asarray(self.const.outputs[0].val)

    @property
    def is_chain(self) -> bool:
        """A constexpr chain already compressed (joint compression), rather than a const."""
        return self.stored_bytes is not None

    @property
    def stored(self) -> int:
        return int(self.value.nbytes) if self.stored_bytes is None else self.stored_bytes

    @property
    def weight_uses(self) -> Tuple[Use, ...]:
        return tuple(u for u in self.uses if is_weight_input(u))


def already_compressed(c: Candidate) -> Optional[str]:
    readers = sorted({u.op.op_type for u in c.uses if u.op is not None and is_constexpr(u.op)})
    if readers:
        return f"already compressed: part of {', '.join(readers)}"
    return None


def unused(c: Candidate) -> Optional[str]:
    return None if c.uses else "not used by any op"


def block_output(c: Candidate) -> Optional[str]:
    if any(u.op is None for u in c.uses):
        return "a block output (Core ML cannot output a constexpr op directly)"
    return None


def not_weight_input(c: Candidate) -> Optional[str]:
    others = [u.describe() for u in c.uses if not is_weight_input(u)]
    if not others:
        return None
    if len(others) == len(c.uses):
        return f"not a weight input: {', '.join(others)}"
    return f"also read as a non-weight input: {', '.join(others)}"


def not_float(c: Candidate) -> Optional[str]:
    if c.value.dtype in (np.float16, np.float32):
        return None
    return f"dtype {c.value.dtype} is not float16 or float32"


def low_rank(c: Candidate) -> Optional[str]:
    return None if c.value.ndim >= 2 else f"rank {c.value.ndim} < 2 (vectors such as biases stay dense)"


def no_config(c: Candidate) -> Optional[str]:
    if c.config is not None:
        return None
    if c.config_source == "global_config":
        return "no config applies (global_config is None)"
    return f"config is None ({c.config_source})"


def too_small(c: Candidate) -> Optional[str]:
    threshold = c.config.weight_threshold
    if c.value.size > threshold:
        return None
    return f"{c.value.size:,} elements <= weight_threshold {threshold:,}"


def non_finite(c: Candidate) -> Optional[str]:
    bad = int(c.value.size - np.count_nonzero(np.isfinite(c.value)))
    return f"{bad:,} non-finite values (inf or nan)" if bad else None


SKIP_RULES: List[Tuple[str, Callable[[Candidate], Optional[str]]]] = [
    ("already_compressed", already_compressed),
    ("unused", unused),
    ("block_output", block_output),
    ("not_weight_input", not_weight_input),
    ("not_float", not_float),
    ("low_rank", low_rank),
    ("no_config", no_config),
    ("too_small", too_small),
    ("non_finite", non_finite),
]

# Rules that need the config are not tried before it is known.
SELECTION_RULES = [rule for rule in SKIP_RULES if rule[0] not in ("no_config", "too_small", "non_finite")]
CONFIG_RULES = [rule for rule in SKIP_RULES if rule[0] in ("no_config", "too_small", "non_finite")]


def first_reason(candidate: Candidate, rules=SKIP_RULES) -> Optional[str]:
    for _, rule in rules:
        reason = rule(candidate)
        if reason is not None:
            return reason
    return None
