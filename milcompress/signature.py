"""What a program's functions accept: each input's shapes and default shape (`InputShape`).

A MIL program knows a flexible dimension only as a symbol. Its bounds (`ct.RangeDim`), the list
of shapes an input takes (`ct.EnumeratedShapes`) and the default shape live in what the program
was converted with: a Program straight from `ct.convert` keeps its input types
(`Function.input_types`), and an ML program model keeps them in its description (`shape` is the
default shape, `shapeRange` or `enumeratedShapes` the flexibility), which the program loaded from
the model does not. `_coremltools.program_from_mlmodel` reads them from the description and keeps
them with the program (`attach_description`); `declared_inputs(function)` gives them from whichever
is there, and otherwise from the program's own declarations (a symbolic dimension then takes any
size of at least 1 and has no default).

States (`ct.StateType`) are not inputs here: their shapes are fixed and the program declares them.
Owns no execution and walks no program; the reference executor and the runner read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from milcompress._coremltools import function_input_types, is_state, is_symbolic, state_wrapped_type, types
from milcompress.errors import ConfigError, InputError

_ATTRIBUTE = "_milcompress_declared_inputs"
Range = Tuple[int, Optional[int]]  # (lower bound, upper bound or None: unbounded)


@dataclass(frozen=True)
class InputShape:
    """The shapes one input accepts: a range per dimension, or one of `enumerated` shapes."""

    name: str
    dtype: np.dtype
    ranges: Tuple[Range, ...]
    enumerated: Tuple[Tuple[int, ...], ...] = ()  # sorted
    default: Optional[Tuple[int, ...]] = None  # None where nothing declares one

    @property
    def rank(self) -> int:
        return len(self.ranges)

    @property
    def flexible(self) -> bool:
        return bool(self.enumerated) or any(lower != upper for lower, upper in self.ranges)

    @property
    def shape(self) -> Tuple[Optional[int], ...]:
        """The shape with None for every dimension that is not fixed."""
        return tuple(lower if lower == upper else None for lower, upper in self.ranges)

    def accepts(self, shape: Sequence[int]) -> bool:
        shape = tuple(int(size) for size in shape)
        if self.enumerated:
            return shape in self.enumerated
        return len(shape) == self.rank and all(
            lower <= size and (upper is None or size <= upper) for size, (lower, upper) in zip(shape, self.ranges)
        )

    def describe(self) -> str:
        """What it accepts, as a reader writes it: (1, 1..256), (1, 3, 224, 224), one of (1, 8), (1, 16)."""
        if self.enumerated:
            return "one of " + ", ".join(_tuple_text(shape) for shape in self.enumerated)
        parts = [str(lower) if lower == upper else f"{lower}..{'' if upper is None else upper}" for lower, upper in self.ranges]
        return _tuple_text(parts)

    def check(self, shape: Sequence[int]) -> None:
        if not self.accepts(shape):
            raise InputError(f"input '{self.name}' has shape {list(int(s) for s in shape)}; the model takes {self.describe()}")


def _tuple_text(parts) -> str:
    parts = [str(p) for p in parts]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def parse_shape(text: str) -> Tuple[int, ...]:
    """'1x8' -> (1, 8) (the command line's --shape NAME=1x8)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(size < 0 for size in shape):
        raise ConfigError(f"a shape is sizes joined by 'x', such as 1x8, not {text!r}", field="shape")
    return shape


# -- from a model's description ------------------------------------------------------------------


def _from_feature(feature, dtype: np.dtype) -> Optional[InputShape]:
    """The InputShape a multi-array feature description declares; None for other feature kinds."""
    if feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    array = feature.type.multiArrayType
    default = tuple(int(size) for size in array.shape)
    flexibility = array.WhichOneof("ShapeFlexibility")
    if flexibility == "shapeRange":
        ranges = tuple(
            (int(r.lowerBound), None if int(r.upperBound) < 0 else int(r.upperBound)) for r in array.shapeRange.sizeRanges
        )
        return InputShape(feature.name, dtype, ranges, default=default or None)
    if flexibility == "enumeratedShapes":
        shapes = tuple(sorted(tuple(int(size) for size in shape.shape) for shape in array.enumeratedShapes.shapes))
        rank = len(shapes[0]) if shapes else len(default)
        ranges = tuple(
            (min(s[axis] for s in shapes), max(s[axis] for s in shapes)) for axis in range(rank)
        ) if shapes else tuple((size, size) for size in default)
        return InputShape(feature.name, dtype, ranges, enumerated=shapes, default=default or (shapes[0] if shapes else None))
    return InputShape(feature.name, dtype, tuple((size, size) for size in default), default=default)


def attach_description(prog, description) -> None:
    """Keep with `prog` the input shapes a model description (`spec.description`) declares, per
    function (a multi-function description describes each function; otherwise it is `main`'s,
    or the default function's)."""
    if len(description.functions) > 0:
        described = {function.name: function.input for function in description.functions}
    else:
        name = getattr(prog, "default_function_name", None) or "main"
        if name not in prog.functions and len(prog.functions) == 1:
            name = next(iter(prog.functions))
        described = {name: description.input}
    declared: Dict[str, Dict[str, InputShape]] = {}
    for function_name, features in described.items():
        function = prog.functions.get(function_name)
        if function is None:
            continue
        shapes = {}
        for feature in features:
            var = function.inputs.get(feature.name)
            if var is None or is_state(var):
                continue
            found = _from_feature(feature, np.dtype(types.nptype_from_builtin(var.dtype)))
            if found is not None and found.rank == len(var.shape):
                shapes[feature.name] = found
        declared[function_name] = shapes
    setattr(prog, _ATTRIBUTE, declared)


# -- from the program ----------------------------------------------------------------------------


def _from_input_type(name: str, input_type, dtype: np.dtype) -> Optional[InputShape]:
    """The InputShape of a coremltools TensorType (`ct.convert`'s inputs), None if it has none."""
    shape = getattr(input_type, "shape", None)
    if shape is None:
        return None
    if hasattr(shape, "shapes"):  # EnumeratedShapes
        shapes = tuple(sorted(tuple(int(size) for size in s.shape) for s in shape.shapes))
        ranges = tuple((min(s[axis] for s in shapes), max(s[axis] for s in shapes)) for axis in range(len(shapes[0])))
        return InputShape(name, dtype, ranges, enumerated=shapes, default=tuple(int(size) for size in shape.default))
    ranges = []
    for size in shape.shape:
        if hasattr(size, "lower_bound"):  # RangeDim
            ranges.append((int(size.lower_bound), None if int(size.upper_bound) < 0 else int(size.upper_bound)))
        else:
            ranges.append((int(size), int(size)))
    return InputShape(name, dtype, tuple(ranges), default=tuple(int(size) for size in shape.default))


def declared_inputs(prog, function_name: str) -> Dict[str, InputShape]:
    """Every tensor input of the function (states excluded), in the function's order, with the
    shapes it accepts: from the model description kept with `prog`, else from `ct.convert`'s
    input types, else from the program's declared shapes."""
    function = prog.functions[function_name]
    described = (getattr(prog, _ATTRIBUTE, None) or {}).get(function_name, {})
    converted = {t.name: t for t in function_input_types(function) if getattr(t, "name", None)}
    declared: Dict[str, InputShape] = {}
    for name, var in function.inputs.items():
        if is_state(var):
            continue
        dtype = np.dtype(types.nptype_from_builtin(var.dtype))
        found = described.get(name)
        if found is None and name in converted:
            found = _from_input_type(name, converted[name], dtype)
            found = found if found is not None and found.rank == len(var.shape) else None
        if found is None:
            ranges = tuple((1, None) if is_symbolic(size) else (int(size), int(size)) for size in var.shape)
            fixed = all(lower == upper for lower, upper in ranges)
            found = InputShape(name, dtype, ranges, default=tuple(lower for lower, _ in ranges) if fixed else None)
        declared[name] = found
    return declared


def declared_states(prog, function_name: str) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """Every state of the function: name -> (shape, numpy dtype of the tensor it wraps)."""
    states = {}
    for name, var in prog.functions[function_name].inputs.items():
        if is_state(var):
            wrapped = state_wrapped_type(var)
            states[name] = (tuple(int(d) for d in wrapped.get_shape()), np.dtype(types.nptype_from_builtin(wrapped.get_primitive())))
    return states


def describe_io(prog) -> Dict[str, Dict[str, Dict[str, str]]]:
    """Per function, each input's and each state's dtype and shapes, as a reader writes them:
    {"main": {"inputs": {"input_ids": "int32 (1, 1..256)"}, "states": {"key_cache": "float16 (30, 1, 3, 256, 64)"}}}."""
    described = {}
    for function_name in prog.functions:
        inputs = {name: f"{d.dtype} {d.describe()}" + ("" if d.default is None or not d.flexible else f", default {_tuple_text(d.default)}")
                  for name, d in declared_inputs(prog, function_name).items()}
        states = {name: f"{dtype} {_tuple_text(shape)}" for name, (shape, dtype) in declared_states(prog, function_name).items()}
        described[function_name] = {"inputs": inputs, "states": states}
    return described


def shapes_with(declared: Mapping[str, InputShape], overrides: Optional[Mapping[str, Sequence[int]]]) -> Dict[str, Tuple[int, ...]]:
    """Each input's shape for made-up inputs: its default, or the one `overrides` gives (checked
    against what the input accepts). InputError for an input with no default and no override."""
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if name not in declared]
    if unknown:
        raise InputError(f"--shape/shapes: no input named {', '.join(unknown)}; the model takes {', '.join(declared)}")
    shapes = {}
    for name, found in declared.items():
        if name in overrides:
            shape = tuple(int(size) for size in overrides[name])
            found.check(shape)
        elif found.default is not None:
            shape = found.default
        else:
            raise InputError(
                f"input '{name}' has a flexible shape {found.describe()} and no default: give its shape "
                f"(shapes={{'{name}': ...}}, --shape {name}=...)"
            )
        shapes[name] = shape
    return shapes
