"""The report names an element a compressed form clipped far beyond its weight's RMS error."""

import numpy as np

import milcompress  # noqa: F401  (registers the passes)
from milcompress._coremltools import IOS18, mb, types
from milcompress.config import CompressionConfig, PalettizeConfig
from milcompress.passes import compress_program


def program_with_super_weight():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.02, (512, 2048)).astype(np.float16)
    weight[507, 1473] = 0.3  # 15 RMS out, among a million: a least-squares 4-bit table clips it

    @mb.program(input_specs=[mb.TensorSpec((1, 2048), dtype=types.fp16)], opset_version=IOS18)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=weight, name="down_proj"), name="down")

    return prog


def test_the_report_flags_a_clipped_outlier_and_the_default_table_keeps_it():
    plain = program_with_super_weight()
    (record,) = [r for r in compress_program(plain, CompressionConfig(PalettizeConfig(nbits=4, outlier_aware=False))).records if r.name == "down_proj"]
    assert record.action == "compressed"
    assert len(record.warnings) == 1 and "[507, 1473]" in record.warnings[0] and "clipped outlier" in record.warnings[0]
    assert record.to_dict()["warnings"] == record.warnings

    aware = program_with_super_weight()
    (record,) = [r for r in compress_program(aware, CompressionConfig(PalettizeConfig(nbits=4))).records if r.name == "down_proj"]
    assert record.action == "compressed" and record.warnings == []
