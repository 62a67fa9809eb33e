"""Rule ``compare_runs``: one figure over several runs, from their result tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from backlens.figures.common import save_figure
from backlens.figures.compare import compare_editing, compare_fig3, compare_fig6
from backlens.runs import parse_run, run_of, varying_overrides

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    kind = str(cfg.compare.kind)
    tables = OmegaConf.to_container(cfg.compare.tables, resolve=True)
    if not tables:
        raise ValueError("compare.tables is empty: pass ++compare.tables.<table>=[one path per run]")
    first = next(iter(tables.values()))
    labels = varying_overrides([parse_run(run_of(p)) for p in first])
    if kind == "fig3":
        fig = compare_fig3([pd.read_parquet(p) for p in tables["gradient_ranks"]], labels)
    elif kind == "fig6":
        fig = compare_fig6([pd.read_parquet(p) for p in tables["target_ranks"]],
                           [pd.read_parquet(p) for p in tables["prompts"]], labels)
    elif kind.startswith("editing_"):
        fig = compare_editing([json.loads(Path(p).read_text()) for p in tables["editing_summary"]], labels)
    else:
        raise ValueError(f"compare.kind={kind!r} is unknown; use fig3, fig6 or editing_<method>")
    pdf, png = save_figure(fig, cfg.paths.figure)
    log.info("compared %d runs (%s) in %s and %s", len(labels), ", ".join(labels), pdf, png)
