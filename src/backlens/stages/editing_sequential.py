"""Rules ``edit_sequential``, ``edit_batch`` and ``edit_sequential_table``: many edits without restoring
(issue 26; the library is ``backlens.editing.sequential``).

One job runs one series of one method: ``editing.sequential.batch`` null gives N single edits one
after another (N from ``editing.sequential.n_edits``), an integer N the first N cases of the same
range as one batch update (MEMIT, AlphaEdit). Its tables (``paths.sequential_*``): one row per
checkpoint, the accumulated update's norm per edited weight, each edited case's flags per
checkpoint, a summary with the collapse point, and the timings apart (so the tables are the same
from run to run). Progress, the weights at the last checkpoint and a batch's optimised values lie
beside them, named by the configuration's fingerprint: a killed job resumes there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from backlens.data.sources import identity_from_config
from backlens.editing.evaluation import CaseLog
from backlens.editing.keys_values import TargetResult
from backlens.editing.run_config import load_editor, requests_in_range, settings_of
from backlens.editing.sequential import (
    SequentialSettings,
    detect_collapse,
    run_batch,
    run_sequential,
)
from backlens.errors import ConfigError
from backlens.io import write_json, write_table, write_torch

log = logging.getLogger(__name__)

# The checkpoint table's columns that are not per-checkpoint scalars (other tables, or timings).
NOT_SCALAR = ("update_norms", "cases", "edit_seconds", "eval_seconds", "n_edits_timed", "batch_facts")


def n_edits_of(cfg: DictConfig, method: str) -> int:
    """N of a method's sequential run: ``editing.sequential.n_edits.<method>``, else its ``default``."""
    table = cfg.editing.sequential.n_edits
    return int(table[method] if method in table else table["default"])


def series_size(cfg: DictConfig) -> int:
    """How many cases this job edits: the batch size, or the method's N."""
    batch = cfg.editing.sequential.batch
    return int(batch) if batch is not None else n_edits_of(cfg, str(cfg.method.name))


def other_ranges(cfg: DictConfig) -> list[tuple[str, int, float]]:
    """[start, stop) of every other CounterFact range the pipeline uses (stop inf: to the file's end)."""
    editing = cfg.editing
    sweep_cases = max([int(editing.sweep.n_cases)] + [int(s.n_cases) for s in editing.method_sweeps.values()])
    return [
        ("editing (Table 1)", int(editing.first_case), int(editing.first_case) + int(editing.n_cases)),
        ("editing.sweep / method_sweeps", int(editing.sweep.first_case), int(editing.sweep.first_case) + sweep_cases),
        ("editing.mend_training", int(editing.mend_training.first_case),
         int(editing.mend_training.first_case) + int(editing.mend_training.n_cases)),
        ("editing.counterfact_corpus", int(editing.counterfact_corpus.first_case), float("inf")),
    ]


def check_range(cfg: DictConfig, n_cases: int) -> None:
    """The sequential range must not share a case with any other range (its edits would be trained on,
    swept on, or evaluated as single edits elsewhere)."""
    start = int(cfg.editing.sequential.first_case)
    stop = start + n_cases
    for label, other_start, other_stop in other_ranges(cfg):
        if start < other_stop and other_start < stop:
            shown = "end" if other_stop == float("inf") else int(other_stop) - 1
            raise ConfigError(f"editing.sequential: cases {start}-{stop - 1} overlap {label} ({other_start}-{shown}); "
                              "move editing.sequential.first_case or lower the number of edits")


def fingerprint(cfg: DictConfig, hparams: dict) -> str:
    """Changes whenever something that alters a checkpoint's numbers changes. N and the checkpoint
    list are left out: a checkpoint's row depends only on the edits before it, so a longer run
    resumes a shorter one's rows and weights."""
    settings = {
        "model": cfg.model.name, "dtype": cfg.dtype, "method": cfg.method.kind,
        "hparams": {k: v for k, v in hparams.items() if k not in ("stats_path", "checkpoint")},
        "first_case": int(cfg.editing.sequential.first_case), "batch": cfg.editing.sequential.batch,
        "evaluation_batch_size": int(cfg.editing.evaluation.batch_size),
        "corpus": OmegaConf.to_container(cfg.editing.corpus, resolve=True),
        "dataset": identity_from_config(cfg.dataset, "CounterFact"),
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def work_file(checkpoints_path: str | Path, kind: str, config_fingerprint: str, suffix: str) -> Path:
    """progress / state / values files beside the series' tables, one per configuration."""
    return Path(checkpoints_path).with_name(f"{kind}.{config_fingerprint}{suffix}")


def batch_values(editor, requests, path: Path, config_fingerprint: str) -> list[TargetResult]:
    """Each request's z* on the unedited model, saved after each one (a batch of 100 is 100 value
    optimisations: a killed job keeps those it finished)."""
    saved = torch.load(path, weights_only=False) if path.exists() else {"fingerprint": config_fingerprint, "values": {}}
    if saved["fingerprint"] != config_fingerprint:
        raise ValueError(f"{path} was written with another configuration; delete it to start over")
    values = saved["values"]
    for number, request in enumerate(requests):
        if request.case_id not in values:
            result = editor.optimise_value(request)
            values[request.case_id] = {"initial": result.initial.cpu(), "delta": result.delta.cpu(),
                                       "losses": result.losses, "last_nll": result.last_nll}
            write_torch(saved, path)
            log.info("batch value %d of %d (case %d): %d steps", number + 1, len(requests), request.case_id, result.steps)
    return [TargetResult(values[r.case_id]["initial"].to(editor.device), values[r.case_id]["delta"].to(editor.device),
                         tuple(values[r.case_id]["losses"]), values[r.case_id]["last_nll"]) for r in requests]


def run(cfg: DictConfig) -> None:
    """One series of one method (``cfg.method``): single edits in sequence or one batch."""
    seq = cfg.editing.sequential
    n_cases = series_size(cfg)
    check_range(cfg, n_cases)
    requests = requests_in_range(cfg, int(seq.first_case), n_cases, "editing.sequential")
    settings = settings_of(cfg)
    heldout_path = Path(cfg.paths.editing_heldout)
    if not heldout_path.exists():
        raise FileNotFoundError(f"no held-out corpus at {heldout_path}: run the edit_covariance rule first")
    heldout = torch.load(heldout_path)["blocks"]
    _, editor, hparams, setup_seconds = load_editor(cfg)
    config_fingerprint = fingerprint(cfg, hparams)
    label = f"{cfg.method.name} {'single' if seq.batch is None else f'batch {seq.batch}'}"
    if seq.batch is None:
        progress = CaseLog(work_file(cfg.paths.sequential_checkpoints, "progress", config_fingerprint, ".jsonl"),
                           config_fingerprint, key="n_edits")
        state = work_file(cfg.paths.sequential_checkpoints, "state", config_fingerprint, ".pt")
        rows, _ = run_sequential(editor, requests, settings, progress, state, heldout, label)
    else:
        values = batch_values(editor, requests, work_file(cfg.paths.sequential_checkpoints, "values", config_fingerprint, ".pt"),
                              config_fingerprint)
        row, _ = run_batch(editor, requests, settings, heldout, values)
        rows = [{**row, "config_fingerprint": config_fingerprint}]
    write_series(cfg, rows, hparams, settings, setup_seconds)


def write_series(cfg: DictConfig, rows: list[dict], hparams: dict, settings: SequentialSettings, setup_seconds: float) -> None:
    seq = cfg.editing.sequential
    batch = None if seq.batch is None else int(seq.batch)
    ids = {"model": cfg.model.name, "method": cfg.method.name, "label": str(cfg.method.label).format(**hparams),
           "series": "single" if batch is None else "batch", "batch_size": batch}
    scalars = [{**ids, **{k: v for k, v in row.items() if k not in NOT_SCALAR}} for row in rows]
    checkpoints = pd.DataFrame(scalars)
    checkpoints["batch_size"] = checkpoints["batch_size"].astype("Int64")
    norms = pd.DataFrame([{**ids, "n_edits": row["n_edits"], "parameter": name, **values}
                          for row in rows for name, values in row["update_norms"].items()])
    cases = pd.DataFrame([{**ids, "n_edits": row["n_edits"], "edit_position": position + 1, "case_id": case_id,
                           **{field: row["cases"][field][position] for field in row["cases"] if field != "case_id"}}
                          for row in rows for position, case_id in enumerate(row["cases"]["case_id"])])
    for frame in (norms, cases):
        frame["batch_size"] = frame["batch_size"].astype("Int64")
    write_table(checkpoints, cfg.paths.sequential_checkpoints)
    write_table(norms, cfg.paths.sequential_norms)
    write_table(cases, cfg.paths.sequential_cases)
    unedited_perplexity = rows[0].get("unedited_perplexity")
    collapse = detect_collapse(rows, unedited_perplexity, settings)
    last = scalars[-1]
    write_json({**ids, "kind": cfg.method.kind, "hparams": hparams, "dataset": identity_from_config(cfg.dataset, "CounterFact"),
                "first_case": int(seq.first_case), "n_edits": int(rows[-1]["n_edits"]),
                "checkpoints": [int(r["n_edits"]) for r in rows], "unedited_perplexity": unedited_perplexity,
                "collapse_rule": {"perplexity_multiple": settings.perplexity_multiple, "retention_floor": settings.retention_floor},
                **collapse, "final": {k: last.get(k) for k in ("retention", "neighborhood_success", "paraphrase_success",
                                                              "perplexity", "update_norm", "n_skipped")},
                "batch_facts": rows[-1].get("batch_facts")}, cfg.paths.sequential_summary)
    write_json({**ids, "setup_seconds": setup_seconds,
                "checkpoints": [{"n_edits": r["n_edits"], "edit_seconds": r["edit_seconds"], "n_edits_timed": r["n_edits_timed"],
                                 "eval_seconds": r["eval_seconds"]} for r in rows]}, cfg.paths.sequential_timings)
    log.info("%s %s: %d edits; retention %.3f; collapse at %s", cfg.method.name, ids["series"], rows[-1]["n_edits"],
             last["retention"], collapse["collapse_at"])


def merge(cfg: DictConfig) -> None:
    """Every series' checkpoints (paths.sequential_inputs) in one table (parquet, and CSV beside it), and
    their timings in another (paths.sequential_timings_table: seconds per edit and of evaluation,
    apart from the byte-reproducible table)."""
    paths = [Path(p) for p in cfg.paths.sequential_inputs]
    table = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    write_table(table, cfg.paths.sequential_table)
    write_table(table, Path(cfg.paths.sequential_table).with_suffix(".csv"))
    timings = []
    for path in paths:
        meta = json.loads(path.with_name("timings.json").read_text())
        timed = sum(c["n_edits_timed"] for c in meta["checkpoints"])
        edit_seconds = sum(c["edit_seconds"] for c in meta["checkpoints"])
        timings.append({"method": meta["method"], "series": meta["series"], "batch_size": meta["batch_size"],
                        "n_edits": meta["checkpoints"][-1]["n_edits"], "setup_seconds": meta["setup_seconds"],
                        "edit_seconds": edit_seconds, "n_edits_timed": timed,
                        "seconds_per_edit": edit_seconds / timed if timed else None,
                        "eval_seconds": sum(c["eval_seconds"] for c in meta["checkpoints"])})
    write_table(pd.DataFrame(timings), cfg.paths.sequential_timings_table)

