"""Run a MIL program with torch on the CPU: `Interpreter`.

The interpreter owns execution order and values; the op table (`kernels/`) owns what each op
computes. It walks a function's blocks in program order (the order a MIL block is already
topologically sorted in), keeps every value in one dictionary keyed by var name (MIL names are
unique within a function), and evaluates const and constexpr ops once, when it is built, since they
depend on no input; or, for a program whose weights are read on demand from its saved package,
each large one whenever an op reads it (`_StaticValues`). It never rewrites a program.

Two precisions:
- "float32": every float tensor is computed and kept in float32, whatever type the program declares
  (a `cast` to fp16 changes nothing). Weights stored in fp16 are exactly representable, so a
  program converted with fp16 weights runs with exactly those weights.
- "float16": as "float32", then every float output of every op is rounded to the nearest float16,
  as Core ML's GPU and Neural Engine store activations. Accumulation inside an op stays float32.

Every output is checked against the shape the program declares for it (where it is known), so a
kernel that gets an op wrong fails loudly at that op instead of producing a plausible wrong number.

Inputs are checked against the shapes the model accepts (`milcompress.signature`): a flexible
input (`ct.RangeDim`, `ct.EnumeratedShapes`) takes any conforming shape, and anything else is an
`InputError` naming the input and what it takes.

Stateful programs (`ct.StateType` inputs, such as a decoder's KV caches) run in a `Session`: its
states start at zeros or at values the caller gives, every `run` reads and updates them (ops run
in program order), and they carry over to the session's next `run`, as an app's `MLState` does:

    session = interpreter.new_session()               # or new_session({"key_cache": array, ...})
    prefill = session.run({"input_ids": prompt, "causal_mask": mask})
    step = session.run({"input_ids": next_id, "causal_mask": step_mask})
    session.states["key_cache"]                        # a copy, floats as float32

`Interpreter.run` on a stateful program runs one call from zero states. States are values like any
other: in "float32" precision a float16 state holds float32 values, in "float16" they are rounded.
"""

from __future__ import annotations

import contextlib
from collections import ChainMap
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from milcompress._coremltools import Block, Operation, Program, Var, blob_ref_of, is_symbolic, state_wrapped_type, types
from milcompress.errors import InputError, MilcompressError
from milcompress.reference.kernels import KERNELS, OpArgs, Value, supported_op_types, torch_dtype
from milcompress.reference.kernels.state import StateCell
from milcompress.signature import InputShape, declared_inputs, declared_states

PRECISIONS = ("float32", "float16")

# observer(op, args, outputs) is called after every op that runs per input (not const/constexpr).
Observer = Callable[[Operation, OpArgs, Tuple[Value, ...]], None]


class UnsupportedOpError(InputError):
    """The program holds op types the reference executor has no kernel for."""

    def __init__(self, unsupported: Mapping[str, str]):
        self.op_types = tuple(sorted(unsupported))
        where = "; ".join(f"'{op_type}' (first at {unsupported[op_type]})" for op_type in self.op_types)
        super().__init__(
            f"the reference executor does not support op type{'s' if len(unsupported) > 1 else ''} {where}. "
            f"Supported: {', '.join(supported_op_types())}"
        )


class ExecutionError(MilcompressError):
    """An op failed or produced a value that contradicts the program's declared type."""


def _blocks_and_ops(block: Block) -> Iterator[Tuple[Block, Operation]]:
    for op in block.operations:
        yield block, op
        for nested in op.blocks:
            yield from _blocks_and_ops(nested)


def _blocks_and_ops_of(op: Operation) -> Iterator[Tuple[Block, Operation]]:
    """`op` and every op of its nested blocks."""
    yield None, op
    for nested in op.blocks:
        yield from _blocks_and_ops(nested)


class Snapshot:
    """Every value one call computed (`Interpreter.snapshot`), their bytes and the call's outputs
    (as `run` gives them); for a stateful function also what its states held: `states` lists
    (top-level op index, state name, content after that op) for every op that changed one, in
    order, from the zero states it started at."""

    __slots__ = ("values", "nbytes", "outputs", "states")

    def __init__(self, values: Dict[str, Value], nbytes: int, outputs: Dict[str, np.ndarray],
                 states: Sequence[Tuple[int, str, torch.Tensor]] = ()):
        self.values = values
        self.nbytes = nbytes
        self.outputs = outputs
        self.states = tuple(states)


def _where(function_name: str, block: Block, op: Operation) -> str:
    return f"op '{op.name}' in function '{function_name}'" + ("" if block.outer_op is None else f", block '{block.name}'")


def _known(dimension) -> bool:
    """A declared dimension that is a number (coremltools declares -1 for some it cannot infer)."""
    return not is_symbolic(dimension) and int(dimension) >= 0


def _fits(declared, shape) -> bool:
    """Whether a value of `shape` has the declared rank and every known declared dimension."""
    return len(declared) == len(shape) and all(not _known(d) or int(d) == size for d, size in zip(declared, shape))


class _StaticValues(Mapping):
    """The values of a function's const and constexpr ops, by output name. A program held in
    memory has them computed once, when the interpreter is built (`hold_all`); a program whose
    weights are read on demand from its package (`packages.program_of`) has only its small ones
    held, and each large one (a weight, dense or decompressed) computed from the package whenever
    an op reads it and dropped after that op, so running a model takes the memory of one weight
    at a time, not of them all. Many runs in a row (the size allocation's what-if runs) may `hold`
    large ones too, up to a number of bytes, for as long as they need them."""

    SMALL_BYTES = 1 << 16

    def __init__(self, execute: Callable[[Block, Operation, Dict[str, Value]], None], static: List[Tuple[Block, Operation]], hold_all: bool):
        self._execute = execute  # the interpreter's: runs one op, storing its outputs in an environment
        self._ops = {var.name: (block, op) for block, op in static for var in op.outputs}
        self._hold_all = hold_all
        self._held: Dict[str, Value] = {}
        self._large: Dict[str, Value] = {}  # large values held while `hold` allows
        self._budget = 0  # bytes of large values that may still be held
        if hold_all:
            for block, op in static:
                self._execute(block, op, self._held)

    @contextlib.contextmanager
    def hold(self, max_bytes: int):
        """Within the block, keep each large value computed while the ones kept hold at most
        `max_bytes` in all; released after it."""
        self._budget = int(max_bytes)
        try:
            yield
        finally:
            self._budget = 0
            self._large.clear()

    def __getitem__(self, name: str) -> Value:
        if name in self._held:
            return self._held[name]
        if name in self._large:
            return self._large[name]
        block, op = self._ops[name]
        computed: Dict[str, Value] = ChainMap({}, self)
        self._execute(block, op, computed)
        for var in op.outputs:
            value = computed.maps[0][var.name]
            if isinstance(value, torch.Tensor):
                nbytes = value.numel() * value.element_size()
                if nbytes <= self.SMALL_BYTES:
                    self._held[var.name] = value
                elif nbytes <= self._budget:
                    self._large[var.name] = value
                    self._budget -= nbytes
        return computed.maps[0][name]

    def output_var(self, name: str) -> Var:
        """The var of const output `name`, whose value is computed only when asked for."""
        _, op = self._ops[name]
        return next(var for var in op.outputs if var.name == name)

    def release(self, name: str) -> None:
        """Let go of large value `name` if it is held, returning its bytes to the budget (a
        replacement stands in for it: holding both would double the largest working set)."""
        value = self._large.pop(name, None)
        if value is not None:
            self._budget += value.numel() * value.element_size()

    def __contains__(self, name) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)


def _is_static(op: Operation) -> bool:
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def value_from_numpy(value) -> Value:
    """A const's value as the executor holds it."""
    if isinstance(value, (str, np.str_)):
        return str(value)
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return str(array) if array.ndim == 0 else tuple(str(v) for v in array.reshape(-1))
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 1:
        # int8, uint8 and coremltools' sub-byte dtypes (uint4, int4, ...): one value per byte.
        array = array.view(np.int8 if array.dtype.kind == "i" else np.uint8)
    elif array.dtype.kind in "iu":
        array = array.astype(np.int64, copy=False)
    elif array.dtype != np.bool_:
        raise TypeError(f"const of numpy dtype {array.dtype} has no executor value")
    # np.ascontiguousarray would make a 0-d array 1-d; copy keeps the shape.
    return torch.from_numpy(array if array.flags.c_contiguous and array.flags.writeable else array.copy())


def value_to_numpy(value: Value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Interpreter:
    """Executes one function of a program. Build once, `run` many times.

    `observers` are called after each op (see `Observer`); `ChannelStatistics` is one.
    `perturbing({var name: function})` changes computed values, as `replace` changes consts.
    """

    def __init__(
        self,
        program: Program,
        function_name: Optional[str] = None,
        precision: str = "float32",
        observers: Sequence[Observer] = (),
    ):
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        names = list(program.functions)
        if function_name is None:
            function_name = getattr(program, "default_function_name", None) or "main"
            if function_name not in program.functions and len(names) == 1:
                function_name = names[0]
        if function_name not in program.functions:
            raise InputError(f"no function named '{function_name}'; the program has {', '.join(names)}")
        self.function_name = function_name
        self.function = program.functions[function_name]
        self.precision = precision
        self.observers = list(observers)
        self.inputs: Dict[str, InputShape] = declared_inputs(program, function_name)
        self._states: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = declared_states(program, function_name)
        self._check_supported()
        self._readers: Optional[Dict[str, int]] = None
        self._perturb: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        static = [(block, op) for block, op in _blocks_and_ops(self.function) if _is_static(op)]
        self._static = _StaticValues(self._execute, static, hold_all=not any(blob_ref_of(op.outputs[0]) is not None for _, op in static))

    # -- what the function expects and returns ----------------------------------------------

    @property
    def input_names(self) -> List[str]:
        """The tensor inputs a run takes (states are not among them)."""
        return list(self.inputs)

    @property
    def output_names(self) -> List[str]:
        return [var.name for var in self.function.outputs]

    def input_spec(self) -> Dict[str, Tuple[Tuple, np.dtype]]:
        """Input name -> (shape, numpy dtype); a dimension that is not fixed is None. States are
        not inputs (see `state_spec`); `inputs` says what shapes a flexible input accepts."""
        return {name: (declared.shape, declared.dtype) for name, declared in self.inputs.items()}

    def state_spec(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """State name -> (shape, numpy dtype of what it wraps); empty for a stateless program."""
        return dict(self._states)

    @property
    def stateful(self) -> bool:
        return bool(self._states)

    # -- running --------------------------------------------------------------------------------

    def new_session(self, initial_states: Optional[Mapping[str, object]] = None, replace: Optional[Mapping[str, np.ndarray]] = None) -> "Session":
        """A session whose states start at zeros, or at `initial_states` (by state name; others
        zeros); `replace` (as `run` takes it) holds for every call of the session."""
        return Session(self, initial_states, replace)

    def run(self, inputs: Mapping[str, object], replace: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Output name -> value (floats as float32) for one set of input values.

        `replace` maps names of const (or constexpr) outputs to values used instead of theirs for
        this run only, without touching the program: what-if runs such as one weight compressed.
        A stateful program runs from zero states (a fresh session's first call).
        """
        return self.new_session(replace=replace).run(inputs) if self.stateful else self.run_with(inputs, self.converted_replacements(replace))

    def converted_replacements(self, replace: Optional[Mapping[str, np.ndarray]]) -> Dict[str, Value]:
        """`replace` (as `run` takes it) checked and converted to the values the executor holds,
        for `run_with` (a session converts its own once for all its calls)."""
        converted = {}
        for name, value in (replace or {}).items():
            if name not in self._static:
                raise InputError(f"replace: '{name}' is not the output of a const or constexpr op")
            var = self._static.output_var(name)  # its value is not read: a weight on demand stays on disk
            if tuple(np.shape(value)) != tuple(var.shape):
                raise InputError(f"replace: '{name}' has shape {list(var.shape)}, not {list(np.shape(value))}")
            self._static.release(name)
            converted[name] = self._stored(var, value_from_numpy(np.asarray(value)))
        return converted

    def run_with(self, inputs: Mapping[str, object], replacements: Mapping[str, Value], states: Optional[Mapping[str, StateCell]] = None) -> Dict[str, np.ndarray]:
        """One call with converted `replacements` and the given state cells, which it updates: what
        `run` and `Session.run` do. A stateful function needs a cell for every state."""
        states = dict(states or {})
        missing = [name for name in self._states if name not in states]
        if missing:
            raise InputError(f"state(s) {', '.join(missing)} missing: run a stateful program through a session (new_session)")
        env: Dict[str, Value] = ChainMap({}, self._static)  # this run's values first, then the consts'
        env.update(replacements)
        self._bind_inputs(inputs, env)
        env.update(states)
        outputs = self._run_block(self.function, env, ())
        return {var.name: value_to_numpy(value) for var, value in zip(self.function.outputs, outputs)}

    @contextlib.contextmanager
    def perturbing(self, functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]):
        """A context in which each named value (an input, or the output of an op that runs per
        call) is `functions[name](value)` instead, from the moment it is computed, for every op
        that reads it: what-if runs on activations (one tensor's quantization noise, say), as
        `replace` is for consts. The result is stored as the var's type says (float16 rounding
        included)."""
        unknown = sorted(set(functions) - set(self.inputs) - self._computed_names())
        if unknown:
            raise InputError(f"perturbing: {', '.join(repr(n) for n in unknown)} {'is' if len(unknown) == 1 else 'are'} not an input or the output of an op that runs per call")
        saved, self._perturb = self._perturb, dict(functions)
        try:
            yield self
        finally:
            self._perturb = saved

    def _computed_names(self) -> set:
        return {var.name for _, op in _blocks_and_ops(self.function) if not _is_static(op) for var in op.outputs}

    def release(self, name: str) -> None:
        """Let go of const output `name` if `holding` keeps it (a caller about to replace it)."""
        self._static.release(name)

    def weight_bytes(self) -> int:
        """Bytes of the const and constexpr values the function's ops read, as the executor holds
        them (floats in float32): what `holding` would need to keep them all."""
        total = 0
        for _, op in _blocks_and_ops(self.function):
            if _is_static(op):
                for var in op.outputs:
                    if types.is_tensor(var.sym_type) and any(not _is_static(child) for child in var.child_ops):
                        elements = int(np.prod([int(d) for d in var.shape], dtype=np.int64))
                        total += elements * torch_dtype(var.dtype).itemsize
        return total

    def holding(self, max_bytes: int):
        """A context in which the weights a run reads from the package stay in memory, up to
        `max_bytes` in all, for the runs that follow (a program held in memory holds them all
        anyway): many runs in a row then read and convert each weight once."""
        return self._static.hold(max_bytes)

    def snapshot(self, inputs: Mapping[str, object]) -> "Snapshot":
        """One call, keeping every value it computed, so that what-if runs on the same inputs
        (`resume`) recompute only what a replaced const changes. A stateful function's call is a
        new session's first (zero states): the snapshot also keeps what the states held after
        each op that wrote one, for `resume` to start from the states of that moment."""
        env: Dict[str, Value] = ChainMap({}, self._static)  # this call's values first, then the consts'
        self._bind_inputs(inputs, env)
        cells = self.zero_states()
        env.update(cells)
        history, held = [], {name: cell.value for name, cell in cells.items()}
        for index, op in enumerate(self.function.operations):
            if _is_static(op):
                continue
            self._execute(self.function, op, env)
            for name, cell in cells.items():
                if cell.value is not held[name]:
                    held[name] = cell.value
                    history.append((index, name, cell.value))
        computed = {name: value for name, value in env.maps[0].items() if name not in self._static and name not in cells}
        tensors = {id(v): v for v in [*computed.values(), *(value for _, _, value in history)] if isinstance(v, torch.Tensor)}
        nbytes = sum(v.element_size() * v.numel() for v in tensors.values())
        outputs = {var.name: value_to_numpy(env[var.name]) for var in self.function.outputs}
        return Snapshot(computed, nbytes, outputs, history)

    def resume(self, snapshot: "Snapshot", replace: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """`run` on the snapshot's inputs with `replace`, computing only from the first top-level op
        that reads a replaced const on: every op before it computed what it did in the snapshot
        (and left the states as they were then)."""
        replacements = self.converted_replacements(replace)
        readers, operations = self._first_readers(), list(self.function.operations)
        start = min((readers.get(name, len(operations)) for name in replacements), default=len(operations))
        env: Dict[str, Value] = ChainMap({**snapshot.values, **replacements}, self._static)
        cells = self.zero_states()
        for index, name, value in snapshot.states:
            if index < start:
                cells[name].value = value
        env.update(cells)
        for op in operations[start:]:
            if not _is_static(op):
                self._execute(self.function, op, env)
        return {var.name: value_to_numpy(env[var.name]) for var in self.function.outputs}

    def state_dtype(self, name: str) -> torch.dtype:
        """The torch dtype the executor keeps state `name` in."""
        return torch_dtype(state_wrapped_type(self.function.inputs[name]).get_primitive())

    def zero_states(self) -> Dict[str, StateCell]:
        """A cell of zeros for every state: a new session's."""
        return {name: StateCell(name, torch.zeros(shape, dtype=self.state_dtype(name))) for name, (shape, _) in self._states.items()}

    def _first_readers(self) -> Dict[str, int]:
        """Var name -> index of the first top-level op that reads it (itself or in a nested block)."""
        if self._readers is None:
            self._readers = {}
            for index, top in enumerate(self.function.operations):
                for _, op in _blocks_and_ops_of(top):
                    for name, var in op.inputs.items():
                        if not name.startswith("_"):  # coremltools' internal inputs are not values
                            for v in var if isinstance(var, (list, tuple)) else (var,):
                                self._readers.setdefault(v.name, index)
        return self._readers

    def _bind_inputs(self, inputs: Mapping[str, object], env: Dict[str, Value]) -> None:
        expected = self.inputs
        missing = [name for name in expected if name not in inputs]
        unknown = [name for name in inputs if name not in expected]
        if missing or unknown:
            spec = ", ".join(f"{name} {declared.describe()}" for name, declared in expected.items())
            states = [name for name in unknown if name in self.function.inputs]
            raise InputError(
                (f"missing input(s) {', '.join(missing)}" if missing else f"unknown input(s) {', '.join(unknown)}")
                + f"; the function '{self.function_name}' takes {spec}"
                + (f" ({', '.join(states)}: state(s), given to a session, not to a run)" if states else "")
            )
        for name, declared in expected.items():
            value = inputs[name]
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
            declared.check(tensor.shape)
            env[name] = self._stored(self.function.inputs[name], tensor)
            if name in self._perturb:
                env[name] = self._stored(self.function.inputs[name], self._perturb[name](env[name]))

    def _run_block(self, block: Block, env: Dict[str, Value], inputs: Sequence[Value]) -> List[Value]:
        for var, value in zip(block.inputs, inputs):
            env[var.name] = value
        for op in block.operations:
            if not _is_static(op):
                self._execute(block, op, env)
        return [env[var.name] for var in block.outputs]

    def _execute(self, block: Block, op: Operation, env: Dict[str, Value]) -> None:
        values = {}
        for name, var in op.inputs.items():
            if name.startswith("_"):
                continue  # coremltools' internal inputs (python functions building nested blocks)
            values[name] = tuple(env[v.name] for v in var) if isinstance(var, (list, tuple)) else env[var.name]
        args = OpArgs(op, values, lambda nested, block_inputs: self._run_block(nested, env, block_inputs))
        try:
            result = KERNELS[op.op_type](args)
        except MilcompressError:
            raise
        except Exception as error:
            raise ExecutionError(
                f"{_where(self.function_name, block, op)} ({op.op_type}) failed: {type(error).__name__}: {error}"
            ) from error
        results = tuple(result) if isinstance(result, (tuple, list)) else (result,)  # outputs are never tuples
        if len(results) != len(op.outputs):
            raise ExecutionError(
                f"{_where(self.function_name, block, op)} ({op.op_type}): kernel gave {len(results)} outputs, op has {len(op.outputs)}"
            )
        stored = tuple(self._checked(block, op, var, value) for var, value in zip(op.outputs, results))
        if self._perturb:
            stored = tuple(
                self._checked(block, op, var, self._perturb[var.name](value)) if var.name in self._perturb else value
                for var, value in zip(op.outputs, stored)
            )
        for var, value in zip(op.outputs, stored):
            env[var.name] = value
        if self.observers and not _is_static(op):
            for observer in self.observers:
                observer(op, args, stored)

    def _checked(self, block: Block, op: Operation, var: Var, value: Value) -> Value:
        if isinstance(value, str) or (isinstance(value, tuple) and not types.is_tensor(var.sym_type)):
            return value
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.asarray(value)) if not isinstance(value, (bool, int, float)) else torch.tensor(value)
        if not _fits(var.shape, value.shape):
            raise ExecutionError(
                f"{_where(self.function_name, block, op)} ({op.op_type}): output '{var.name}' has shape "
                f"{list(value.shape)}; the program declares {list(var.shape)}"
            )
        return self._stored(var, value)

    def _stored(self, var: Var, value: torch.Tensor) -> torch.Tensor:
        dtype = torch_dtype(var.dtype)
        if value.dtype != dtype:
            value = value.to(dtype)
        if dtype == torch.float32 and self.precision == "float16":
            value = value.to(torch.float16).to(torch.float32)
        return value

    def _check_supported(self) -> None:
        unsupported: Dict[str, str] = {}
        for block, op in _blocks_and_ops(self.function):
            if op.op_type not in KERNELS and op.op_type not in unsupported:
                unsupported[op.op_type] = _where(self.function_name, block, op)
        if unsupported:
            raise UnsupportedOpError(unsupported)


class Session:
    """Several runs of one interpreter's function sharing its states, as an app's `MLState` does
    (a prefill, then decode steps). Made by `Interpreter.new_session(initial_states)`.

    `initial_states` maps state names to values of the state's shape (a float state takes any
    float array, an integer state any integer array); states not given start at zeros. A value
    that does not fit is an InputError naming the state. `read_state` / `write_state` are
    `MLState`'s; `states` is a copy of them all. `replace` (const name -> value, as
    `Interpreter.run` takes it) holds for every call, converted once.
    """

    def __init__(self, interpreter: Interpreter, initial_states: Optional[Mapping[str, object]] = None,
                 replace: Optional[Mapping[str, np.ndarray]] = None):
        self.interpreter = interpreter
        self._replacements = interpreter.converted_replacements(replace)
        self._cells = interpreter.zero_states()
        for name, value in (initial_states or {}).items():
            self.write_state(name, value)

    def run(self, inputs: Mapping[str, object], replace: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """One call: outputs as `Interpreter.run` gives them; the states keep what it wrote.
        `replace` adds to (or overrides) the session's own for this call."""
        replacements = self._replacements if not replace else {**self._replacements, **self.interpreter.converted_replacements(replace)}
        return self.interpreter.run_with(inputs, replacements, self._cells)

    def read_state(self, name: str) -> np.ndarray:
        self._check_name(name)
        return value_to_numpy(self._cells[name].value).copy()

    def write_state(self, name: str, value) -> None:
        """Set state `name` to `value`; InputError naming the state if it does not fit."""
        self._check_name(name)
        shape, dtype = self.interpreter.state_spec()[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        given = "b" if tensor.dtype == torch.bool else "f" if tensor.is_floating_point() else "i"
        if given != {"f": "f", "i": "i", "u": "i", "b": "b"}[dtype.kind]:
            raise InputError(f"state '{name}' holds {dtype} {list(shape)}; the value given is {str(tensor.dtype).replace('torch.', '')}")
        if tuple(tensor.shape) != shape:
            raise InputError(f"state '{name}' holds {dtype} {list(shape)}; the value given has shape {list(tensor.shape)}")
        stored = tensor.to(self.interpreter.state_dtype(name))
        if stored.dtype == torch.float32 and self.interpreter.precision == "float16":
            stored = stored.to(torch.float16).to(torch.float32)
        self._cells[name] = StateCell(name, stored)

    @property
    def states(self) -> Dict[str, np.ndarray]:
        """State name -> a copy of its content (floats as float32)."""
        return {name: value_to_numpy(cell.value).copy() for name, cell in self._cells.items()}

    def _check_name(self, name: str) -> None:
        spec = self.interpreter.state_spec()
        if name not in spec:
            raise InputError(
                f"no state named '{name}'; the function '{self.interpreter.function_name}' has "
                + (", ".join(f"{n} {list(s)} {d}" for n, (s, d) in spec.items()) or "no states")
            )
