"""Rules ``attention_report`` and ``ft_trace_report`` (issue 16): the markdown reports of the
``attention`` and ``ft_trace`` rules, from their tables only. Apart from those stages' modules, which
load a model, so the report jobs load no torch."""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from backlens.analysis.beyond_summary import attention_markdown, ft_trace_markdown
from backlens.io import write_text
from backlens.table_names import ATTENTION_TABLES


def attention_report(cfg: DictConfig) -> None:
    """results/{run}/attention.md from the attention tables and the prompt table."""
    paths = cfg.paths
    tables = {name: pd.read_parquet(paths[name]) for name in (*ATTENTION_TABLES, "attention_lemma", "prompts")}
    write_text(attention_markdown(tables, cfg.model.name), paths.attention_report)


def ft_trace_report(cfg: DictConfig) -> None:
    """results/{run}/ft_trace.md from the trace table."""
    write_text(ft_trace_markdown(pd.read_parquet(cfg.paths.ft_trace), cfg.model.name), cfg.paths.ft_trace_report)
