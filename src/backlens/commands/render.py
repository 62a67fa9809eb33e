"""Plain-text tables for the terminal (no colours, fixed-width columns)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

SHADES = " .:-=+*#%@"


def token_text(text: object, width: int = 14) -> str:
    """A token quoted so leading spaces show (' Paris'), control characters escaped, cut to ``width``."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return "-"
    shown = "[byte]" if "\ufffd" in str(text) else repr(str(text))  # a piece of a multi-byte character
    return shown if len(shown) <= width else shown[: width - 2] + "..'"


def table(frame: pd.DataFrame, columns: Sequence[str] | None = None, *, headers: dict | None = None,
          right: Sequence[str] = (), gap_on: str | None = None) -> str:
    """``frame`` as fixed-width text; numbers (and ``right`` columns) right-aligned, floats in 3
    significant digits; a blank line wherever the ``gap_on`` column changes value."""
    columns = list(columns or frame.columns)
    headers = headers or {}
    cells = []
    for column in columns:
        values = []
        for value in frame[column]:
            if isinstance(value, float):
                values.append(f"{value:.3g}")
            else:
                values.append(str(value))
        cells.append(values)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) or c in right for c in columns]
    names = [headers.get(c, c) for c in columns]
    widths = [max([len(n), *map(len, v)]) for n, v in zip(names, cells)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(i.rjust(w) if num else i.ljust(w) for i, w, num in zip(items, widths, numeric)).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    groups = list(frame[gap_on]) if gap_on else [None] * len(frame)
    for index, row in enumerate(zip(*cells)):
        if index and groups[index] != groups[index - 1]:
            out.append("")
        out.append(line(row))
    return "\n".join(out)


def shade_grid(grid: pd.DataFrame, *, low: float, high: float) -> list[str]:
    """One line per row: a character per column from ' ' (<= low) to '@' (>= high)."""
    span = (high - low) or 1.0
    lines = []
    for label, row in grid.iterrows():
        chars = []
        for value in row.tolist():
            if pd.isna(value):
                chars.append(" ")
                continue
            level = (value - low) / span
            chars.append(SHADES[max(0, min(len(SHADES) - 1, int(level * (len(SHADES) - 1) + 0.5)))])
        lines.append((str(label), "".join(chars)))
    width = max(len(label) for label, _ in lines) if lines else 0
    return [f"{label.ljust(width)}  |{chars}|" for label, chars in lines]
