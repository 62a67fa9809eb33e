"""Rule ``figure``: draw one registered figure from its result tables (never from a model)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
from omegaconf import DictConfig

from backlens.figures.common import save_figure
from backlens.figures.registry import ALL_FIGURES

log = logging.getLogger(__name__)


def read_tables(paths: str | Sequence[str]) -> pd.DataFrame:
    """One table, or several (e.g. one per model for a comparison figure) stacked."""
    if isinstance(paths, str):
        return pd.read_parquet(paths)
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


def run(cfg: DictConfig) -> None:
    name = cfg.figure
    if name not in ALL_FIGURES:
        raise ValueError(f"figure={name!r} is not registered; choose one of {', '.join(ALL_FIGURES)}")
    spec = ALL_FIGURES[name]
    tables = {table: read_tables(cfg.paths[table]) for table in spec.tables}
    pdf, png = save_figure(spec.draw(tables), cfg.paths.figure)
    log.info("wrote %s and %s", pdf, png)
