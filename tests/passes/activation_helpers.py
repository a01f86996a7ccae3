"""Helpers for the activation quantization tests: coremltools' own passes run on a program, and a
view of any program that says, for every use of a tensor, through which quantize pair it reads."""

from __future__ import annotations

import zlib

import numpy as np

from milcompress._coremltools import PASS_REGISTRY


def fake_ranges(prog):
    """A distinct, deterministic (rmin, rmax) for every non-const tensor and function input."""
    ranges = {}
    for function in prog.functions.values():
        names = list(function.inputs) + [v.name for op in function.operations if op.op_type != "const" for v in op.outputs]
        for name in names:
            seed = zlib.crc32(name.encode()) % 1000
            ranges[name] = (-(seed % 7) * 0.37 - 0.01 * (seed % 3), 0.5 + seed / 100.0)
    return ranges


def run_coremltools_passes(prog, config, ranges):
    """coremltools' `linear_quantize_activations` graph passes, with `ranges` as its activation_stats."""
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.optimize.coreml import _quantization_passes  # noqa: F401  (registers the prefix pass)

    stats = {name: {"rmin": low, "rmax": high} for name, (low, high) in ranges.items()}
    prefix = PASS_REGISTRY["compression::insert_prefix_quantize_dequantize_pair"]
    prefix.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
    suffix = PASS_REGISTRY["compression::insert_suffix_quantize_dequantize_pair"]
    suffix.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
    for graph_pass in (prefix, suffix, PASS_REGISTRY["common::dequantize_quantize_pair_elimination"], PASS_REGISTRY["common::dead_code_elimination"]):
        graph_pass(prog)


def quantized_uses(prog):
    """{(op name, input name, position): (tensor name, scale, zero point)} for every use, by an op
    other than quantize/dequantize, of a value that went through quantize -> dequantize: the
    tensor it started as, followed back through every pair."""
    found = {}
    for function in prog.functions.values():
        for op in function.operations:
            if op.op_type in ("quantize", "dequantize", "const"):
                continue
            for name, value in op.inputs.items():
                items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
                for position, var in items:
                    params = None
                    while var.op is not None and var.op.op_type == "dequantize" and var.op.input.op.op_type == "quantize":
                        quantize = var.op.input.op
                        zero_point = 0 if quantize.zero_point is None else int(quantize.zero_point.val)  # absent means 0
                        params = (float(quantize.scale.val), zero_point)
                        var = quantize.input
                    if params is not None:
                        found[(op.name, name, position)] = (var.name,) + params
    return found


def tensor_names(prog):
    """Every tensor's name in program order (function inputs, then op outputs): two builds of one
    program builder hold the same tensors at the same positions under different names."""
    return [name for f in prog.functions.values() for name in list(f.inputs) + [v.name for op in f.operations for v in op.outputs]]


def renamed(uses, names_from, names_to):
    """`quantized_uses` of one build in the names of another (op names are their outputs' names)."""
    rename = dict(zip(names_from, names_to))
    return {(rename[op], input_name, position): (rename[tensor], *params) for (op, input_name, position), (tensor, *params) in uses.items()}
