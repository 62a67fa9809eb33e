"""Rule ``tracing_figures``: the causal-tracing figures, from the tracing tables only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.figures import tracing as figures
from backlens.figures.common import save_figure

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    paths = cfg.paths
    facts = pd.read_parquet(paths.tracing_facts)
    tokens = pd.read_parquet(paths.tracing_tokens)
    effects = pd.read_parquet(paths.tracing_effects)
    averages = pd.read_parquet(paths.tracing_average_effects)
    summary = json.loads(Path(paths.tracing_summary).read_text(encoding="utf-8"))
    drawn = {
        paths.tracing_fig_examples: figures.tracing_examples(facts, tokens, effects, int(cfg.tracing.example_facts)),
        paths.tracing_fig_avg: figures.tracing_avg(averages, summary),
        paths.tracing_fig_avg_lines: figures.tracing_avg_lines(averages, summary),
        paths.tracing_fig_severed: figures.tracing_severed(averages, summary),
    }
    for path, fig in drawn.items():
        pdf, png = save_figure(fig, path)
        log.info("wrote %s and %s", pdf, png)
    log.info("peak average indirect effects:\n%s", figures.peak_cells(averages).to_string(index=False))
