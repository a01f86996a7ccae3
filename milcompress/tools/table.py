"""Plain-text tables for the command line (they live in `milcompress.table`)."""

from milcompress.table import format_table

__all__ = ["format_table"]
