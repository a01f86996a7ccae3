"""What Python users see when they print results: a report as the command line's table (and as
Markdown or HTML in a notebook), weight metadata without its arrays."""

import math

import numpy as np

from milcompress.passes.report import COMPRESSED, SKIPPED, ConstRecord, Report
from milcompress.table import shorten


def _record(name, shape, action, **fields):
    return ConstRecord(name=name, function="main", consumers=["op(linear)"], shape=list(shape), dtype="float16", action=action, **fields)


def _report(summary=None):
    return Report(
        "milcompress::palettize_weights",
        [
            _record("conv_weight", (64, 32, 3, 3), COMPRESSED, form="LUT 4-bit", bytes_before=36864, bytes_after=9248, snr_db=22.5,
                    notes=["group_size 16 -> 8"]),
            _record("a_weight_with_a_name_much_longer_than_any_table_column_should_be", (128, 128), COMPRESSED, form="int8 per channel (axis 0)",
                    bytes_before=32768, bytes_after=16640, snr_db=math.inf),
            _record("small", (32, 3), SKIPPED, reason="96 elements <= weight_threshold 2,048", bytes_before=192, bytes_after=192),
            _record("shape", (4,), SKIPPED, reason="not a weight input", bytes_before=8, bytes_after=8),
        ],
        summary,
    )


def test_str_is_the_command_lines_table():
    assert str(_report()) == "\n".join(
        [
            "milcompress::palettize_weights",
            "weight                                            shape      action                                          bits/weight    SNR dB",
            "------------------------------------------------  ---------  ----------------------------------------------  -----------  --------",
            "conv_weight                                       64x32x3x3  LUT 4-bit (group_size 16 -> 8)                         4.01      22.5",
            "a_weight_with_a_name_mu...table_column_should_be  128x128    int8 per channel (axis 0)                              8.12  lossless",
            "small                                             32x3       skipped: 96 elements <= weight_threshold 2,048        16.00         -",
            "(1 other consts left as they are: scalars, shapes, vectors; their reasons are in the JSON report)",
            "compressed 2 of 3 weights; weight bytes 68.2 KB -> 25.5 KB (2.68x); mean SNR 22.5 dB",  # 69,824 -> 26,080 bytes
        ]
    )


def test_repr_is_one_line():
    assert repr(_report()) == "<Report milcompress::palettize_weights: 2 of 4 consts compressed>"


def test_a_size_allocations_table_gives_each_form_once():
    summary = {"bits_per_weight": 6.0, "total_bytes": 51200, "budget_bytes": 51300, "calibrated": True, "choices": [],
               "seconds": {"evaluation": 1.25, "rewrite": 0.5}}
    report = _report(summary)
    report.records[0].notes = ["chosen by the size allocation: palette 4-bit, weighted error 0.01"]
    report.records.append(_record("kept", (64, 64), SKIPPED, reason="kept dense by the size allocation: its 9 compressed forms cost more"))
    report.records.append(_record("odd", (3, 5), SKIPPED, reason="a reason of a length no table of 120 columns can hold " + "x" * 40))
    text = str(report)
    assert "conv_weight" in text and "chosen by the size allocation" not in text
    assert "\nkept  " in text and "64x64      dense (size allocation)  " in text
    assert "\na_weight_wi..._should_be  128x128  " in text  # names cut first (to 24 at most), in the middle
    assert "\nodd                       3x5        skipped: a reason of a length no table of 120 columns can...  " in text  # then reasons
    assert text.endswith("size allocation: 6.000 bits per weight, all weights counted (51,200 of 51,300 budget bytes); "
                         "activation-weighted\ntime: evaluation 1.2 s, rewrite 0.5 s")
    assert all(len(line) <= 120 for line in text.splitlines())


def test_notebooks_render_markdown_and_escaped_html():
    report = _report()
    report.records[0].notes = ["a <b> | c"]
    markdown = report._repr_markdown_()
    assert markdown.startswith("**milcompress::palettize_weights**\n\n| weight | shape | action | bits/weight | SNR dB |\n|---|---|---|---:|---:|\n")
    assert "| conv_weight | 64x32x3x3 | LUT 4-bit (a <b> \\| c) | 4.01 | 22.5 |" in markdown
    assert "- compressed 2 of 3 weights" in markdown
    html = report._repr_html_()
    assert "<td>LUT 4-bit (a &lt;b&gt; | c)</td>" in html and '<td style="text-align:right">4.01</td>' in html
    assert html.count("<tr>") == 4 and "<li>compressed 2 of 3 weights" in html


def test_shorten_keeps_both_ends():
    assert shorten("abcdefghij", 10) == "abcdefghij"
    assert shorten("abcdefghijk", 10) == "abcd...ijk" and len(shorten("x" * 100, 48)) == 48


def test_weight_metadata_prints_without_its_array():
    from milcompress.api import OpMetadata, WeightMetadata

    value = np.arange(4096, dtype=np.float16).reshape(64, 64)
    entry = WeightMetadata(val=value, sparsity=0.0, unique_values=4096, child_ops=[OpMetadata("linear", "fc1", {"weight": "w"})],
                           form="LUT 4-bit", nbytes=2080)
    assert repr(entry) == ("WeightMetadata(val=<float16 array 64x64>, form='LUT 4-bit', bits_per_weight=4.06, sparsity=0.000, "
                           "unique_values=4096, child_ops=[linear(fc1)])")
    assert str({"w": entry}) == "{'w': " + repr(entry) + "}"
