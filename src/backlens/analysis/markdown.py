"""Result tables as Markdown, the format of every generated report."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """``frame`` without its index (reports index nothing by position), floats to ``floatfmt``."""
    return frame.to_markdown(index=False, floatfmt=floatfmt)
