"""Rule ``edit_merge``: join a method's evaluation shards into its cases table, summary and timings.

Apart from ``editing_evaluate`` (which edits and scores the cases), so that the nine merge jobs of a
run read and write tables without loading torch and the editors (about 4 s of CPU per job)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.artifacts import shard_meta_path
from backlens.editing.summaries import write_summary, write_timings
from backlens.io import write_table


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
