"""What a pass did to every const it looked at: one record per candidate, and totals.

Every const a compression pass sees is a candidate and gets exactly one record: compressed (with
its form, size and error) or skipped (with the reason of the first skip rule it met). Reports are
JSON-serialisable and are kept on the program they describe (`reports_of(prog)`), so they survive
`ct.convert`, where the pass object itself is discarded. `str(report)` is the command line's table
of the weights (2-D and up, float) and its totals; notebooks render it as Markdown or HTML.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from milcompress.table import format_table, html_table, kilobytes, markdown_table, shorten, snr_text

COMPRESSED, SKIPPED = "compressed", "skipped"
_ATTRIBUTE = "_milcompress_reports"
NAME_WIDTH = 48  # longer weight names are cut in the middle in tables (the JSON report has them whole)
SIZE_TABLE_WIDTH = 120  # a size allocation's table fits this many columns, names and reasons cut to fit
_HEADER = ("weight", "shape", "action", "bits/weight", "SNR dB")
_RIGHT = (False, False, False, True, True)
_KEPT_DENSE = "kept dense by the size allocation"


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

    def weights(self) -> List[ConstRecord]:
        """The records of weights proper: float, two dimensions or more."""
        return [r for r in self.records if len(r.shape) >= 2 and r.dtype.startswith("float")]

    def table(self) -> Tuple[Tuple[str, ...], List[List[str]], Tuple[bool, ...]]:
        """(header, rows, right-aligned columns): one row per weight. A size allocation's rows give
        each chosen form once, and fit `SIZE_TABLE_WIDTH` columns; its choices, errors and notes
        are in the JSON report."""
        weights = self.weights()
        several = len({r.function for r in weights}) > 1
        rows = []
        for r in weights:
            if r.action == COMPRESSED:
                action = r.form
                if r.notes and self.summary is None:
                    action += f" ({'; '.join(r.notes)})"
            elif self.summary is not None and (r.reason or "").startswith(_KEPT_DENSE):
                action = "dense (size allocation)"
            else:
                action = f"skipped: {r.reason}"
            name = f"{r.function}/{r.name}" if several else r.name
            rows.append([shorten(name, NAME_WIDTH), "x".join(map(str, r.shape)), action, f"{r.bits_per_weight:.2f}", snr_text(r.snr_db)])
        if self.summary is not None:
            rows = _fit(rows, SIZE_TABLE_WIDTH)
        return _HEADER, rows, _RIGHT

    def summary_lines(self) -> List[str]:
        """The totals under the table: weights compressed, bytes, the weights' warnings (what a form
        did that its SNR hides), and what a size allocation did."""
        weights = self.weights()
        lines = []
        rest = len(self.records) - len(weights)
        if rest:
            lines.append(f"({rest} other consts left as they are: scalars, shapes, vectors; their reasons are in the JSON report)")
        totals = self.totals()
        before, after = sum(r.bytes_before for r in weights), sum(r.bytes_after for r in weights)
        ratio = f"{before / after:.2f}x" if after else "-"
        lines.append(
            f"compressed {totals['compressed']} of {len(weights)} weights; weight bytes {kilobytes(before)} -> {kilobytes(after)} ({ratio}); "
            f"mean SNR {snr_text(totals['mean_snr_db'])} dB"
        )
        several = len({r.function for r in weights}) > 1
        lines += [f"warning: {f'{r.function}/{r.name}' if several else r.name}: {warning}" for r in weights for warning in r.warnings]
        if self.summary is not None:
            summary = self.summary
            lines.append(
                f"size allocation: {summary['bits_per_weight']:.3f} bits per weight, all weights counted "
                f"({summary['total_bytes']:,} of {summary['budget_bytes']:,} budget bytes)" + ("; activation-weighted" if summary["calibrated"] else "")
            )
            stages = summary.get("seconds") or {}
            if stages:
                lines.append("time: " + ", ".join(f"{stage} {t:.1f} s" for stage, t in stages.items()))
        return lines

    def __repr__(self) -> str:
        """One line (print the report for its table, `to_json()` for every record)."""
        return f"<Report {self.pass_name}: {len(self.compressed)} of {len(self.records)} consts compressed>"

    def __str__(self) -> str:
        header, rows, right = self.table()
        warnings = [f"warning: {warning}" for warning in self.warnings]  # config entries that match nothing
        return "\n".join([self.pass_name, *warnings, *([format_table(header, rows, right)] if rows else []), *self.summary_lines()])

    def _repr_markdown_(self) -> str:
        header, rows, right = self.table()
        table = markdown_table(header, rows, right) if rows else ""
        lines = "\n".join(f"- {line}" for line in [f"warning: {w}" for w in self.warnings] + self.summary_lines())
        return "\n\n".join(part for part in [f"**{self.pass_name}**", table, lines] if part)

    def _repr_html_(self) -> str:
        header, rows, right = self.table()
        table = html_table(header, rows, right) if rows else ""
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in [f"warning: {w}" for w in self.warnings] + self.summary_lines())
        return f"<div><strong>{html.escape(self.pass_name)}</strong>{table}<ul>{lines}</ul></div>"

    def write(self, path) -> None:
        """The JSON report to `path` (a pass's report_path option), atomically: never a partial file."""
        from milcompress.packages import write_text_atomically

        write_text_atomically(path, self.to_json())


def _fit(rows: List[List[str]], width: int) -> List[List[str]]:
    """`rows` cut to a table of at most `width` columns: the weight names first (down to 24
    characters, cut in the middle), then the actions (cut at the end)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(_HEADER, *rows)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    if excess <= 0:
        return rows
    name_width = max(24, widths[0] - excess)
    excess -= widths[0] - name_width
    action_width = max(len(_HEADER[2]), widths[2] - max(excess, 0))
    return [[shorten(row[0], name_width), row[1], row[2] if len(row[2]) <= action_width else row[2][: action_width - 3] + "...", *row[3:]]
            for row in rows]


def attach(prog, report, attribute: str = _ATTRIBUTE) -> None:
    """Keep `report` with the program it describes (under `attribute`: one list per kind of report)."""
    reports = getattr(prog, attribute, None)
    if reports is None:
        reports = []
        setattr(prog, attribute, reports)
    reports.append(report)


def reports_of(prog, attribute: str = _ATTRIBUTE) -> list:
    """The reports attached to `prog` under `attribute` (default: every milcompress weight pass's), oldest first."""
    return list(getattr(prog, attribute, None) or [])
