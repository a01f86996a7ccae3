"""Plain-text tables for the command line."""

from __future__ import annotations

from typing import List, Sequence


def format_table(header: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """Columns padded to their widest cell; `right[i]` right-aligns column i (numbers)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align = list(right) + [False] * (len(header) - len(right))

    def line(row):
        return "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
