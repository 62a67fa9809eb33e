"""A method's summary.json and timings.json from its cases table: what the evaluation writes for one job
and the merge stage for the joined shards (no torch: the merge jobs read and write tables only)."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from backlens.editing.columns import SUMMARY_COLUMNS
from backlens.io import write_json

log = logging.getLogger(__name__)


def summarise(cases: pd.DataFrame, hparams: dict, cfg: DictConfig, dataset: dict) -> dict:
    summary = {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "kind": cfg.method.kind,
        "label": str(cfg.method.label).format(**hparams),
        "paper_row": cfg.method.paper_row,
        "hparams": hparams,
        "dataset": dataset,
        "n_cases": len(cases),
        "n_skipped_already_predicted": int(cases["skipped"].sum()),
        "n_already_predicted_before_edit": int(cases["already_predicted"].sum()),
        "n_multi_token_target_new": int((cases["n_target_new_tokens"] > 1).sum()),
        "n_target_new_merged_with_prompt": int(cases["target_new_merged_with_prompt"].sum()),
        "n_target_new_space_sensitive": int(cases["target_new_space_sensitive"].sum()),
        "n_cases_without_paraphrase": int((cases["n_paraphrase_prompts"] == 0).sum()),
        "n_cases_without_neighborhood": int((cases["n_neighborhood_prompts"] == 0).sum()),
        "generation_sources": sorted(cases["generation_source"].unique()),
        "n_generation_cases": int(cases["generation_entropy"].notna().sum()),
        "n_perplexity_cases": int(cases["perplexity"].notna().sum()),
    }
    for column in SUMMARY_COLUMNS:
        # A cases table made before a column existed (gen_*: before issue 26) gives None, not an error.
        values = cases[column].dropna().astype(float) if column in cases else pd.Series(dtype=float)
        summary[f"{column}_mean"] = float(values.mean()) if len(values) else None
        summary[f"{column}_std"] = float(values.std(ddof=0)) if len(values) else None
    return summary


def write_summary(cases: pd.DataFrame, hparams: dict, cfg: DictConfig, dataset: dict) -> None:
    summary = summarise(cases, hparams, cfg, dataset)
    write_json(summary, cfg.paths.editing_summary)
    log.info(
        "%s on %s: %d cases; efficacy %.3f paraphrase %s neighborhood %s", cfg.method.name, cfg.model.name,
        len(cases), summary["efficacy_mean"], summary["paraphrase_mean"], summary["neighborhood_mean"],
    )


def write_timings(cases: pd.DataFrame, edit_seconds: list[float], setup_seconds: float, cfg: DictConfig) -> None:
    """Seconds per edit (per case, mean, std) and the editor's set-up time, apart from the results."""
    seconds = pd.Series(edit_seconds, dtype=float)
    write_json({"method": cfg.method.name, "setup_seconds": setup_seconds, "edit_seconds_mean": float(seconds.mean()),
                "edit_seconds_std": float(seconds.std(ddof=0)),
                "edit_seconds": dict(zip((str(c) for c in cases["case_id"]), edit_seconds))}, cfg.paths.editing_timings)
    log.info("%s: per-edit time %.3f s (setup %.1f s)", cfg.method.name, seconds.mean(), setup_seconds)
    print(f"per-edit time {cfg.method.name}: {seconds.mean():.4f} s")
