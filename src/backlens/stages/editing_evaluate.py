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
from backlens.editing.run_config import evaluation_requests, load_editor
from backlens.editing.summaries import write_summary, write_timings
from backlens.io import write_json, write_table

log = logging.getLogger(__name__)

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
