"""The one place milcompress reaches into coremltools' private (underscore or undocumented) APIs.

Everything else imports MIL types and helpers from here, so a coremltools upgrade that moves them
touches only this file. Checked against coremltools 8.x and 9.x.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from typing import Iterator, Union

import numpy as np


def _import_coremltools_quietly() -> None:
    """Import coremltools without its import-time notices about the native Core ML runtime (absent
    on Linux, and unused by milcompress) and untested torch/scikit-learn versions, unless the
    application has configured logging itself."""
    logger = logging.getLogger("coremltools")
    if logger.handlers or logging.getLogger().handlers:
        import coremltools  # noqa: F401
        return
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools  # noqa: F401
        import coremltools.optimize.coreml  # noqa: F401
    finally:
        logger.setLevel(previous)


_import_coremltools_quietly()

from coremltools.converters.mil import Builder as mb  # noqa: E402, F401  (re-exported)
from coremltools.converters.mil._deployment_compatibility import AvailableTarget  # noqa: E402
from coremltools.converters.mil.mil import Block, Function, Operation, Program, Var, types  # noqa: E402, F401
from coremltools.converters.mil.mil import block as _block_module  # noqa: E402
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass  # noqa: E402, F401
from coremltools.converters.mil.mil.passes.helper import block_context_manager  # noqa: E402, F401
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass  # noqa: E402, F401
from coremltools.converters.mil.mil.types.symbolic import is_symbolic  # noqa: E402, F401  (re-exported)

IOS15 = AvailableTarget.iOS15
IOS16 = AvailableTarget.iOS16
IOS17 = AvailableTarget.iOS17
IOS18 = AvailableTarget.iOS18


def function_of(node: Union[Block, Operation, Var]) -> Function:
    """The function enclosing a block, an op or a var (through nested blocks)."""
    block = node.op.enclosing_block if isinstance(node, Var) else node.enclosing_block if isinstance(node, Operation) else node
    while not isinstance(block, Function):
        block = block.outer_op.enclosing_block
    return block


def opset_of(node: Union[Block, Operation, Var]) -> AvailableTarget:
    """The opset (deployment target) of the function holding `node`; iOS13 when unset."""
    version = function_of(node).opset_version
    return AvailableTarget.iOS13 if version is None else version


def target_name(target: AvailableTarget) -> str:
    return target.name


@contextlib.contextmanager
def building_in(block: Block) -> Iterator[None]:
    """Make `block` the block that `mb` ops go into, unless it already is (entering a block is
    costly on exit, so passes enter each block once and lowering reuses it)."""
    if _block_module.BLOCK_STACK and _block_module.BLOCK_STACK[-1] is block:
        yield
    else:
        with block:
            yield


def unsigned_dtype(nbits: int) -> np.dtype:
    """The numpy dtype coremltools uses for MIL uint`nbits` (sub-byte types carry metadata)."""
    return types.nptype_from_builtin(types.string_to_builtin(f"uint{nbits}"))


def integer_dtype(nbits: int, signed: bool) -> np.dtype:
    return types.nptype_from_builtin(types.string_to_builtin(f"{'' if signed else 'u'}int{nbits}"))


def builtin_bitwidth(var: Var) -> int:
    """Bits per element of an integer var's MIL dtype (uint4 -> 4)."""
    return var.dtype.get_bitwidth()


def is_unsigned(var: Var) -> bool:
    return var.dtype.is_unsigned()


def is_float_var(var: Var) -> bool:
    return types.is_float(var.dtype)


def default_pipeline_pass_ids():
    """The pass ids of coremltools' default conversion pipeline."""
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

    return list(PassPipeline.DEFAULT.passes)


def new_pass_pipeline(pass_ids, name: str):
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

    return PassPipeline(list(pass_ids), pipeline_name=name)


def register_named_pipeline(name: str, pass_ids) -> None:
    """Add a named pipeline to coremltools' table (it has no public registration API)."""
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

    PassPipeline._PIPELINE_NAME_TO_PASSES[name] = list(pass_ids)


def program_from_mlmodel(mlmodel, at_least_ios16: bool = False, lazy_weights: bool = False) -> Program:
    """The MIL program inside an ML program model (a fresh copy: the model is not touched).

    `lazy_weights`: the values of consts stored in the weight file are not read now: each is read
    from the file (memory-mapped) whenever it is asked for and dropped when its reader lets go
    (see `_read_on_demand`), so the program takes the memory of its structure, not its weights.
    The package must stay on disk, unchanged, while the program is used.

    `at_least_ios16`: load an older model's program at the iOS16 opset, as coremltools'
    compression functions do (`_apply_graph_pass`), so constexpr ops can be written into it; the
    model saved from it is then an iOS16 model."""
    from coremltools import _SPECIFICATION_VERSION_IOS_16
    from coremltools.converters.mil.frontend.milproto import load as milproto

    spec = mlmodel.get_spec()
    version = max(spec.specificationVersion, _SPECIFICATION_VERSION_IOS_16) if at_least_ios16 else spec.specificationVersion
    if lazy_weights:
        with _blob_values_on_demand(mlmodel.weights_dir):
            prog = milproto.load(model_spec=spec, specification_version=version, file_weights_dir=mlmodel.weights_dir)
    else:
        prog = milproto.load(model_spec=spec, specification_version=version, file_weights_dir=mlmodel.weights_dir)
    # The loader names the functions but forgets which one is the default and that the model
    # describes each function separately; the backend needs both to write the model back.
    if len(spec.description.functions) > 0:
        prog.default_function_name = spec.description.defaultFunctionName
        prog.export_as_multifunction = True
    # Flexible input shapes (bounds, enumerated shapes, defaults) live only in the description.
    from milcompress.signature import attach_description

    attach_description(prog, spec.description)
    return prog


def function_input_types(function: Function) -> tuple:
    """The input types `ct.convert` was given for a function (TensorType, StateType ...); empty
    for a program loaded from a model."""
    return tuple(getattr(function, "input_types", None) or ())


def is_state(var: Var) -> bool:
    """Whether a function input is a state (`ct.StateType`) rather than a tensor."""
    return types.is_state(var.sym_type)


def state_wrapped_type(var: Var):
    """The tensor type a state var wraps."""
    return var.sym_type.wrapped_type()


def model_type(mlmodel) -> str:
    return mlmodel.get_spec().WhichOneof("Type")


# coremltools' own progress bars (module-level names bound to tqdm.tqdm), silenced inside our calls.
_PROGRESS_BARS = (
    ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
    ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
    ("coremltools.converters.mil.backend.nn.op_mapping", "_tqdm"),
)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Within the block, coremltools draws none of its progress bars (passes, conversion); the
    caller draws its own. Other users of tqdm are untouched."""
    import functools
    import sys

    replaced = []
    for module_name, attribute in _PROGRESS_BARS:
        module = sys.modules.get(module_name)
        bar = getattr(module, attribute, None)
        if bar is not None and not isinstance(bar, functools.partial):
            replaced.append((module, attribute, bar))
            setattr(module, attribute, functools.partial(bar, disable=True))
    try:
        yield
    finally:
        for module, attribute, bar in replaced:
            setattr(module, attribute, bar)


def mlmodel_from_program(prog: Program, like):
    """An ML program model holding `prog`, with `like`'s description (inputs, outputs, metadata).

    No further graph passes run (beyond the backend's own), so the program is saved as it is.
    """
    from coremltools import _SPECIFICATION_VERSION_IOS_16
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

    spec = like.get_spec()
    if prog.export_as_multifunction:
        # Weights identical across functions share one blob again, as `save_multifunction` wrote them.
        PASS_REGISTRY["common::const_deduplication"]._deduplicate_const_across_functions(prog)
    with quiet_progress_bars():
        return mil_convert(
            prog,
            convert_to="mlprogram",
            convert_from="milinternal",
            specification_version=max(spec.specificationVersion, _SPECIFICATION_VERSION_IOS_16),
            compute_units=like.compute_unit,
            model_description=spec.description,
            skip_model_load=True,
            pass_pipeline=PassPipeline.EMPTY,
        )


def stored_bytes(var: Var) -> int:
    """Bytes a const var's value takes in the model file (sub-byte types packed)."""
    value = var.val
    if value is None:
        return 0
    size = int(np.size(value))
    get_bitwidth = getattr(var.dtype, "get_bitwidth", None)
    bits = get_bitwidth() if get_bitwidth is not None else 8 * np.asarray(value).dtype.itemsize
    return -(-size * bits // 8)


def op_config_field_types(type_name: str) -> dict:
    """The declared type of each field of one of coremltools' op config classes
    (`OpPalettizerConfig`, ...), as typing objects, for a strict check of values from a file."""
    import typing

    import attrs
    from coremltools.optimize.coreml import _config

    cls = getattr(_config, type_name)
    hints = typing.get_type_hints(cls, vars(_config))
    return {field.name: hints.get(field.name, typing.Any) for field in attrs.fields(cls)}


def op_config_from_dict(type_name: str, fields: dict):
    """One of coremltools' op configs parsed (and validated) by coremltools from a dict, as
    `OptimizationConfig.from_dict` does it (a private classmethod)."""
    from coremltools.optimize import coreml as cto

    return getattr(cto, type_name)._from_dict(fields)


def dtype_name(dtype) -> str:
    """A MIL dtype (types.int8, ...) by name ("int8")."""
    return types.builtin_to_string(dtype)


def op_selector_form(optimization_config):
    """(whether a coremltools OptimizationConfig is the deprecated `ct.compression_utils` form, its
    op_selector function or None)."""
    return bool(getattr(optimization_config, "_is_deprecated", False)), getattr(optimization_config, "_op_selector", None)


def attached_program(model):
    """The MIL program an MLModel made by `ct.convert` keeps (None for one loaded from disk); any
    other object is returned as it is (it may be a Program)."""
    return getattr(model, "_mil_program", model)


def blob_storage_writer(path: str):
    """coremltools' own weight blob writer (C++), for checking ours against it."""
    from coremltools.libmilstoragepython import _BlobStorageWriter

    return _BlobStorageWriter(path)


def blob_storage_reader(path: str):
    """coremltools' own weight blob reader (C++), for checking ours against it."""
    from coremltools.libmilstoragepython import _BlobStorageReader

    return _BlobStorageReader(path)


def _blob_method(dtype: str) -> str:
    return {"fp16": "fp16", "fp32": "float"}.get(dtype, dtype)


def write_blob(writer, values: np.ndarray, dtype: str) -> int:
    """Append `values` as MIL `dtype` ("fp16", "uint4", ...) with coremltools' writer; its offset."""
    flat = np.ascontiguousarray(np.asarray(values).reshape(-1))
    if dtype == "fp16":
        flat = flat.view(np.uint16)
    elif types.is_sub_byte(types.string_to_builtin(dtype)):
        flat = flat.astype(types.nptype_from_builtin(types.string_to_builtin(dtype)))
    return getattr(writer, f"write_{_blob_method(dtype)}_data")(flat)


def read_blob(reader, offset: int, dtype: str) -> np.ndarray:
    """The values of the blob at `offset` as coremltools' reader gives them (flat)."""
    values = getattr(reader, f"read_{_blob_method(dtype)}_data")(offset)
    return values.view(np.float16) if dtype == "fp16" else values


# Weights read on demand. coremltools' milproto loader reads every blob into memory (three copies
# of a float16 weight on the way). Instead, while it loads a `const` op, each blob-file value is a
# placeholder taking no memory (a zero broadcast to the value's shape, enough for type inference),
# and the const's value is replaced at once, before any op reading it is built, by a value object
# whose `val` reads the blob (so ops that look at their inputs' values while they are built, such
# as `constexpr_sparse_to_dense` counting its mask's ones, see the real ones). A constexpr op of
# the iOS16 form holds its data inline, not in const ops: it is loaded as coremltools loads it.


@contextlib.contextmanager
def _blob_values_on_demand(weights_dir: str) -> Iterator[None]:
    from coremltools.converters.mil.frontend.milproto import load as milproto

    from milcompress.storage import BlobRef

    placeholders = {}  # id(placeholder) -> (placeholder, BlobRef), for the const being loaded
    original_value, original_const = milproto._load_value, milproto._load_const_op

    def load_value(context, value_spec):
        if value_spec.WhichOneof("value") != "blobFileValue" or value_spec.type.WhichOneof("type") != "tensorType":
            return original_value(context, value_spec)
        valuetype = milproto.proto_to_types(value_spec.type)
        dtype, shape = valuetype.get_primitive(), tuple(int(d) for d in valuetype.get_shape())
        blob = value_spec.blobFileValue
        path = os.path.join(weights_dir, blob.fileName.split("/")[-1])
        ref = BlobRef(path, int(blob.offset), types.builtin_to_string(dtype), shape)
        placeholder = np.broadcast_to(np.zeros((), types.nptype_from_builtin(dtype)), shape)
        placeholders[id(placeholder)] = (placeholder, ref)
        return placeholder

    def load_const_op(context, op_spec):
        if op_spec.type != "const":
            milproto._load_value = original_value
            try:
                return original_const(context, op_spec)
            finally:
                milproto._load_value = load_value
        original_const(context, op_spec)
        var = context.get_var_from_name(op_spec.outputs[0].name)
        value = var._sym_val.val if var._sym_val is not None else None
        held = placeholders.pop(id(value), None)
        placeholders.clear()
        if held is not None and held[0] is value:
            held[1].check(what=f"const '{var.op.name}'")  # a damaged file is found now, before any work
            read_on_demand(var, held[1])

    milproto._load_value, milproto._load_const_op = load_value, load_const_op
    try:
        yield
    finally:
        milproto._load_value, milproto._load_const_op = original_value, original_const


def blob_ref_of(var: Var):
    """The BlobRef a const's value is read from, if it is read on demand (and no value was set
    since); else None."""
    held = getattr(var, "_sym_val", None)
    return held.blob_ref if isinstance(held, _OnDemand) and held._set is None else None


def const_value(var: Var):
    """A const output's value, as `var.val` gives it, read from its blob once: coremltools' `val`
    asks its holder twice (once to see whether it is symbolic), which would read a weight read on
    demand twice."""
    held = getattr(var, "_sym_val", None)
    return held._read() if isinstance(held, _OnDemand) else var.val


def read_on_demand(var: Var, ref) -> None:
    """Make const `var` read its value from `ref` whenever asked, instead of holding it: the value
    it holds now is dropped. `ref`: a `storage.BlobRef`, or anything with its `load(what=...)`."""
    dtype = types.nptype_from_builtin(var.dtype) if types.is_sub_byte(var.dtype) else None
    var._sym_val = _on_demand_class(type(var._sym_val))(ref, var.op.name, dtype)
    var.op.val._sym_val = _OnDemandUnknown(ref, var.op.name, dtype)


class _OnDemand:
    """A const's value read from its blob when asked; the array last read is kept only while
    someone else holds it (a weak reference), so memory follows what the caller holds. Setting
    `val` replaces the blob with the value set."""

    def __init__(self, ref, what: str, sub_byte_dtype=None):
        self.blob_ref, self._what, self._dtype, self._last, self._set = ref, what, sub_byte_dtype, None, None

    def _read(self):
        if self._set is not None:
            return self._set
        last = self._last() if self._last is not None else None
        if last is None:
            last = self.blob_ref.load(what=f"const '{self._what}'")
            if self._dtype is not None:  # coremltools marks sub-byte arrays by their dtype's metadata
                last = last.view(self._dtype)
            self._last = weakref.ref(last)
        return last


class _OnDemandUnknown(_OnDemand, types.unknown):
    """The const op's own `val` input (an InternalVar of type unknown), read the same way."""

    @property
    def val(self):
        return self._read()

    @val.setter
    def val(self, value):
        self._set = value


@functools.lru_cache(maxsize=None)
def _on_demand_class(tensor_type):
    def get(self):
        return self._read()

    def set(self, value):
        holder = tensor_type()
        tensor_type.val.fset(holder, value)  # coremltools' checks and casts
        self._set = holder.val

    return type(f"OnDemand{tensor_type.__name__}", (_OnDemand, tensor_type), {"val": property(get, set)})


def copy_scope_info(source: Var, new: Var) -> None:
    """Give `new` (and the ops a pass just built to compute it) `source`'s scope information, as
    `Block.replace_uses_of_var_after_op` does: during `ct.convert`, every op must carry its
    frontend scope, and a pass that moves only some uses of a var has to do it itself."""
    Block._copy_scope_info(source, new)
