"""Rule ``edit_evaluate``: one method on the evaluation range, one row per case (resumable)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from backlens import sharding
from backlens.artifacts import shard_meta_path
from backlens.data.sources import identity_from_config
from backlens.editing.evaluation import CaseLog, evaluate_editor
from backlens.editing.free_generation import FREE_GENERATION_METRICS
from backlens.editing.run_config import evaluation_requests, load_editor
from backlens.io import write_json, write_table

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "efficacy", "paraphrase", "neighborhood", "efficacy_success", "paraphrase_success",
    "neighborhood_success", "generation_entropy", "perplexity",
    # Efficacy by free generation (issue 26, editing.free_generation).
    *FREE_GENERATION_METRICS,
]


def case_log_path(cases_path: str | Path, fingerprint: str) -> Path:
    """The JSON-lines progress file kept beside the final table, one per configuration: a job rerun
    after another data file or setting starts afresh, and switching back finds its own rows."""
    cases_path = Path(cases_path)
    return cases_path.with_name(f"{cases_path.stem}.{fingerprint}.jsonl")


def fingerprint(cfg: DictConfig, hparams: dict) -> str:
    """Changes whenever something that alters a case's numbers changes."""
    settings = {
        "model": cfg.model.name,
        "dtype": cfg.dtype,
        "method": cfg.method.kind,
        "hparams": {k: v for k, v in hparams.items() if k not in ("stats_path", "checkpoint")},
        "evaluation": OmegaConf.to_container(cfg.editing.evaluation, resolve=True),
        "n_generation_cases": int(cfg.editing.n_generation_cases),
        "n_perplexity_cases": int(cfg.editing.n_perplexity_cases),
        "corpus": OmegaConf.to_container(cfg.editing.corpus, resolve=True),
        "dataset": identity_from_config(cfg.dataset, "CounterFact"),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


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


def shard_range(cfg: DictConfig, n_requests: int) -> tuple[int, int]:
    """[start, stop) positions in the evaluation range this job evaluates (editing.shard, or all)."""
    return sharding.shard_range(cfg.editing.get("shard"), n_requests, "editing.shard", "evaluation cases")


def run(cfg: DictConfig) -> None:
    """Evaluate the method on the evaluation range, or on the editing.shard part of it.

    A shard writes its cases table and a small JSON (hyper-parameters, set-up time); the
    ``merge`` stage joins the shards into the same cases table and summary a single job writes.
    Which cases get generation entropy and perplexity depends on their position in the whole
    range, never on the shard, so any shard size gives the same rows.
    """
    requests = evaluation_requests(cfg)
    start, stop = shard_range(cfg, len(requests))
    _, editor, hparams, setup_seconds = load_editor(cfg)
    n_gen, n_ppl = int(cfg.editing.n_generation_cases), int(cfg.editing.n_perplexity_cases)
    heldout = None
    if n_ppl > 0 and start < n_ppl:
        heldout_path = Path(cfg.paths.editing_heldout)
        if not heldout_path.exists():
            raise FileNotFoundError(f"no held-out corpus at {heldout_path}: run the edit_covariance rule, or set editing.n_perplexity_cases=0")
        heldout = torch.load(heldout_path)["blocks"]
    config_fingerprint = fingerprint(cfg, hparams)
    case_log = CaseLog(case_log_path(cfg.paths.editing_cases, config_fingerprint), config_fingerprint)
    rows = evaluate_editor(
        editor,
        requests[start:stop],
        case_log,
        cfg.editing.evaluation,
        generation_case_ids={r.case_id for r in requests[:n_gen]},
        perplexity_case_ids={r.case_id for r in requests[:n_ppl]},
        perplexity_blocks=heldout,
        label=f"{cfg.method.name} cases {start}-{stop - 1}",
    )
    cases = pd.DataFrame(rows)
    cases.insert(0, "method", cfg.method.name)
    cases.insert(0, "model", cfg.model.name)
    # Timings vary run to run: they go to the shard meta / timings.json, so the cases table and
    # summary of a rerun are byte-identical.
    edit_seconds = [float(x) for x in cases.pop("edit_seconds")]
    write_table(cases, cfg.paths.editing_cases)
    dataset = identity_from_config(cfg.dataset, "CounterFact")
    if cfg.editing.get("shard") is not None:
        write_json({"shard": [start, stop], "hparams": hparams, "dataset": dataset, "setup_seconds": setup_seconds,
                    "edit_seconds": edit_seconds}, shard_meta_path(cfg.paths.editing_cases))
        log.info("%s cases %d-%d: per-edit time %.3f s", cfg.method.name, start, stop - 1, sum(edit_seconds) / len(edit_seconds))
        return
    write_summary(cases, hparams, cfg, dataset)
    write_timings(cases, edit_seconds, setup_seconds, cfg)


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


def merge(cfg: DictConfig) -> None:
    """Join the shard tables (paths.editing_shards, in order) into cases.parquet and summary.json."""
    shard_paths = [Path(p) for p in cfg.paths.editing_shards]
    metas = [json.loads(shard_meta_path(p).read_text()) for p in shard_paths]
    n_cases = int(cfg.editing.n_cases)
    covered = [position for meta in metas for position in range(*meta["shard"])]
    if covered != list(range(n_cases)):
        raise ValueError(f"the shards {[m['shard'] for m in metas]} do not cover the {n_cases} evaluation cases once, in order")
    for key, what in (("hparams", "hyper-parameters"), ("dataset", "data files")):
        if any(meta.get(key) != metas[0].get(key) for meta in metas):
            raise ValueError(f"the shards of {cfg.method.name} were run with different {what}; delete {shard_paths[0].parent} and rerun")
    cases = pd.concat([pd.read_parquet(p) for p in shard_paths], ignore_index=True)
    write_table(cases, cfg.paths.editing_cases)
    write_summary(cases, metas[0]["hparams"], cfg, metas[0]["dataset"])
    setup_seconds = sum(meta["setup_seconds"] for meta in metas) / len(metas)
    write_timings(cases, [s for meta in metas for s in meta["edit_seconds"]], setup_seconds, cfg)
