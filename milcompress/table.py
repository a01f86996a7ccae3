"""Tables as plain text (the command line, `str(report)`), Markdown and HTML (notebooks)."""

from __future__ import annotations

import html
import math
from typing import List, Optional, Sequence


def format_table(header: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """Columns padded to their widest cell; `right[i]` right-aligns column i (numbers)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align = list(right) + [False] * (len(header) - len(right))

    def line(row):
        return "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def markdown_table(header: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A GitHub-flavoured Markdown table; `|` in cells escaped."""
    align = list(right) + [False] * (len(header) - len(right))

    def line(row):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    rule = "|" + "|".join("---:" if a else "---" for a in align) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def html_table(header: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """An HTML table, every cell escaped; `right[i]` right-aligns column i."""
    align = list(right) + [False] * (len(header) - len(right))

    def cell(tag, value, a):
        style = ' style="text-align:right"' if a else ""
        return f"<{tag}{style}>{html.escape(str(value))}</{tag}>"

    head = "<tr>" + "".join(cell("th", h, a) for h, a in zip(header, align)) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", c, a) for c, a in zip(row, align)) + "</tr>" for row in rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def shorten(text: str, width: int) -> str:
    """`text` cut in the middle to at most `width` characters (long weight names keep both ends)."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2 :]


def kilobytes(count: int) -> str:
    return f"{count / 1024:,.1f} KB"


def snr_text(value: Optional[float]) -> str:
    """An SNR in dB for a table: "lossless" for an exact form, "-" for none."""
    if value is None:
        return "-"
    return "lossless" if value == math.inf else f"{value:.1f}"
