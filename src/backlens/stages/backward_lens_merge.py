"""Rule ``backward_lens_merge``: join the ``backward_lens`` shards' tables and metas into the run's
tables, in prompt order. Apart from ``backward_lens`` (which loads the model), so the job loads no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.artifacts import artifact
from backlens.io import write_json, write_table
from backlens.table_names import GRADIENT_TABLES


def merge(cfg: DictConfig) -> None:
    """Join shard outputs (paths.analysis_shards: one meta JSON per shard, its tables beside it)."""
    metas = [(Path(p), json.loads(Path(p).read_text())) for p in cfg.paths.analysis_shards]
    covered = [i for _, meta in metas for i in range(*meta["prompts"])]
    if covered != list(range(len(covered))) or not covered:
        raise ValueError(f"the shards {[m['prompts'] for _, m in metas]} do not cover the prompts once, in order")
    for name in GRADIENT_TABLES:
        shard_tables = [artifact("analysis_shard_table", analysis_shard=str(path.parent), table=name) for path, _ in metas]
        table = pd.concat([pd.read_parquet(shard_table) for shard_table in shard_tables], ignore_index=True)
        write_table(table, cfg.paths[name])
    seconds: dict[str, float] = {}
    for _, meta in metas:
        for key, value in meta["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + value
    first = metas[0][1]
    write_json({**first, "n_prompts": len(covered), "prompts": [0, len(covered)], "n_shards": len(metas),
                "seconds": seconds}, cfg.paths.analysis_meta)
