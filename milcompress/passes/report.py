"""What a pass did to every const it looked at: one record per candidate, and totals.

Every const a compression pass sees is a candidate and gets exactly one record: compressed (with
its form, size and error) or skipped (with the reason of the first skip rule it met). Reports are
JSON-serialisable and are kept on the program they describe (`reports_of(prog)`), so they survive
`ct.convert`, where the pass object itself is discarded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional

COMPRESSED, SKIPPED = "compressed", "skipped"
_ATTRIBUTE = "_milcompress_reports"


@dataclass
class ConstRecord:
    name: str
    function: str
    consumers: List[str]
    shape: List[int]
    dtype: str
    action: str
    reason: Optional[str] = None  # why it was skipped
    form: Optional[str] = None  # what it became
    notes: List[str] = field(default_factory=list)  # adjustments made to compress it at all
    bytes_before: int = 0
    bytes_after: int = 0
    snr_db: Optional[float] = None
    warnings: List[str] = field(default_factory=list)  # what the compressed form did that its SNR hides

    @property
    def elements(self) -> int:
        return int(math.prod(self.shape))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_after / self.elements if self.elements else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bits_per_weight"] = round(self.bits_per_weight, 4)
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            data["snr_db"] = "inf" if self.snr_db > 0 else "-inf"
        return data


@dataclass
class Report:
    pass_name: str
    records: List[ConstRecord] = field(default_factory=list)
    # What a whole-program pass decided beyond each const (the size allocation's choices).
    summary: Optional[dict] = None
    # What the user most likely did not mean (a config entry that matches nothing).
    warnings: List[str] = field(default_factory=list)

    @property
    def compressed(self) -> List[ConstRecord]:
        return [r for r in self.records if r.action == COMPRESSED]

    @property
    def skipped(self) -> List[ConstRecord]:
        return [r for r in self.records if r.action == SKIPPED]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.records)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.records)

    def totals(self) -> dict:
        compressed = self.compressed
        weights = sum(r.elements for r in compressed)
        snrs = [r.snr_db for r in compressed if r.snr_db is not None and math.isfinite(r.snr_db)]
        return {
            "candidates": len(self.records),
            "compressed": len(compressed),
            "skipped": len(self.skipped),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "ratio": round(self.bytes_before / self.bytes_after, 4) if self.bytes_after else None,
            "compressed_bits_per_weight": round(8.0 * sum(r.bytes_after for r in compressed) / weights, 4) if weights else None,
            "mean_snr_db": round(sum(snrs) / len(snrs), 4) if snrs else None,
        }

    def to_dict(self) -> dict:
        data = {"pass": self.pass_name, "totals": self.totals(), "consts": [r.to_dict() for r in self.records]}
        if self.summary is not None:
            data["summary"] = self.summary
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def write(self, path) -> None:
        """The JSON report to `path` (a pass's report_path option), atomically: never a partial file."""
        from milcompress.packages import write_text_atomically

        write_text_atomically(path, self.to_json())


def attach(prog, report: Report) -> None:
    """Keep `report` with the program it describes."""
    reports = getattr(prog, _ATTRIBUTE, None)
    if reports is None:
        reports = []
        setattr(prog, _ATTRIBUTE, reports)
    reports.append(report)


def reports_of(prog) -> List[Report]:
    """The reports of every milcompress pass run on `prog`, oldest first."""
    return list(getattr(prog, _ATTRIBUTE, None) or [])
