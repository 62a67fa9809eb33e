"""Rule ``figure``: draw one registered figure from its result tables (never from a model)."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from backlens.figures.common import save_figure
from backlens.figures.registry import FIGURES

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    name = cfg.figure
    if name not in FIGURES:
        raise ValueError(f"figure={name!r} is not registered; choose one of {', '.join(FIGURES)}")
    spec = FIGURES[name]
    tables = {table: pd.read_parquet(cfg.paths[table]) for table in spec.tables}
    pdf, png = save_figure(spec.draw(tables), cfg.paths.figure)
    log.info("wrote %s and %s", pdf, png)
