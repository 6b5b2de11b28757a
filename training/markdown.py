"""Markdown tables for the benchmark reports."""
from __future__ import annotations

import math


def cell(value) -> str:
    """A table cell: floats to 3 decimals, ``-`` for a missing value (None or NaN), anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
