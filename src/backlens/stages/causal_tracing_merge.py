"""Rule ``trace_merge``: join the causal tracing shards into the facts, tokens, effects and segment
tables and the summary, as one job tracing every chosen fact would write them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.artifacts import shard_files
from backlens.io import write_json, write_table
from backlens.tracing.shards import read_screening, settings_record
from backlens.tracing.tables import average_effects, segment_effects

log = logging.getLogger(__name__)


def check_shards(metas: list[dict], chosen: list[int]) -> None:
    """The shards, in order, must trace each chosen fact exactly once (shards past them are empty)."""
    n_chosen = len(chosen)
    ranges = [meta["shard"] for meta in metas]
    covered = [position for start, stop in ranges for position in range(start, stop) if position < n_chosen]
    if covered != list(range(n_chosen)):
        raise ValueError(f"the tracing shards {ranges} do not cover the {n_chosen} chosen facts once, in order")
    for meta in metas:
        start, stop = meta["shard"]
        if meta["known_ids"] != chosen[start:stop]:
            raise ValueError(
                f"tracing shard {start}-{stop} traced known_ids {meta['known_ids']} but the screening chose "
                f"{chosen[start:stop]} there: the shard is stale; delete it and rerun"
            )


def check_settings(metas: list[dict], cfg: DictConfig) -> dict:
    """The settings every traced shard shares (and this run's config asks for)."""
    settings = metas[0]["settings"]
    if any(meta["settings"] != settings for meta in metas):
        raise ValueError("the tracing shards were traced with different settings; delete them and rerun")
    expected = settings_record(cfg, settings["noise_std"])
    if settings != expected:
        differing = sorted(key for key in expected if settings.get(key) != expected[key])
        raise ValueError(f"the tracing shards were traced with other settings ({differing}) than this run's config")
    return settings


def _read_shards(paths: list[Path], metas: list[dict]) -> list[pd.DataFrame]:
    """facts, tokens and effects of the shards that traced something, joined in shard order."""
    traced = [shard_files(path) for path, meta in zip(paths, metas) if meta["known_ids"]]
    tables = [pd.concat([pd.read_parquet(files[kind]) for files in traced], ignore_index=True)
              for kind in ("facts", "tokens", "effects")]
    facts = tables[0]
    expected = [known_id for meta in metas for known_id in meta["known_ids"]]
    if facts["known_id"].tolist() != expected:
        held = facts["known_id"].tolist()
        raise ValueError(f"the shards' facts tables hold known_ids {held}, their metadata {expected}")
    return tables


def merge(cfg: DictConfig) -> None:
    """Join the shards (paths.tracing_shards, in order) into the tracing tables and summary.json."""
    paths = cfg.paths
    screening = read_screening(paths.tracing_screening_meta)
    shard_paths = [Path(p) for p in paths.tracing_shards]
    if not shard_paths:
        raise ValueError("paths.tracing_shards lists no shard tables to merge")
    metas = [json.loads(shard_files(path)["meta"].read_text()) for path in shard_paths]
    check_shards(metas, screening["chosen_known_ids"])
    traced_metas = [meta for meta in metas if meta["known_ids"]]
    settings = check_settings(traced_metas, cfg)
    fact_table, token_table, effect_table = _read_shards(shard_paths, metas)
    model = settings["model"]
    per_fact = segment_effects(effect_table.drop(columns="model"), token_table.drop(columns="model"))
    averages = average_effects(per_fact)
    for table in (per_fact, averages):
        table.insert(0, "model", model)
    write_table(fact_table, paths.tracing_facts)
    write_table(token_table, paths.tracing_tokens)
    write_table(effect_table, paths.tracing_effects)
    write_table(per_fact, paths.tracing_segment_effects)
    write_table(averages, paths.tracing_average_effects)

    first = traced_metas[0]
    computed, full = int(fact_table["token_layers_computed"].sum()), int(fact_table["token_layers_full"].sum())
    runs, runs_full = int(fact_table["runs_computed"].sum()), int(fact_table["runs_full"].sum())
    flops = computed * first["flops_per_token_layer"] + runs * first["flops_per_run"]
    flops_full = full * first["flops_per_token_layer"] + runs_full * first["flops_per_run"]
    write_json(
        {
            "model": model,
            "device": first["device"],
            "dtype": first["dtype"],
            "num_threads": first["num_threads"],
            "n_known_facts": screening["n_known_facts"],
            "n_unsegmentable": screening["n_unsegmentable"],
            "n_screened": screening["n_screened"],
            "n_correct": screening["n_correct"],
            "correct_rule": "first token of ' ' + attribute is the argmax next token after the prompt",
            "only_correct": screening["only_correct"],
            "n_traced": len(fact_table),
            "noise_scale": settings["noise_scale"],
            "noise_std": settings["noise_std"],
            "noise_samples": settings["noise_samples"],
            "window": first["window_layers"],
            "window_fraction": settings["window_fraction"],
            "n_layers": first["n_layers"],
            "kinds": settings["kinds"],
            "severed_kinds": settings["severed_kinds"],
            "severed_at": settings["severed_at"],
            "seed": settings["seed"],
            "token_layers_computed": computed,
            "token_layers_full_recomputation": full,
            "saving_vs_full_recomputation": full / computed,
            "model_flops": flops,
            "model_flops_full_recomputation": flops_full,
            "flop_saving_vs_full_recomputation": flops_full / flops,
            "known_facts": screening["known_facts"],
        },
        paths.tracing_summary,
    )
    # Timings apart from the summary, which is byte-identical run to run.
    screen_seconds = float(json.loads(Path(paths.tracing_screening_timings).read_text())["screen_seconds"])
    trace_seconds = sum(float(meta["trace_seconds"]) for meta in metas)
    write_json(
        {
            "screen_seconds": screen_seconds,
            "trace_seconds": trace_seconds,
            "facts_per_second": len(fact_table) / trace_seconds,
            "total_seconds": screen_seconds + trace_seconds,
            "fact_seconds": dict(zip((str(k) for k in fact_table["known_id"]),
                                     (s for meta in traced_metas for s in meta["fact_seconds"]))),
        },
        paths.tracing_timings,
    )
    log.info(
        "merged %d shards: %d facts traced in %.0f s (%.2f facts/s); vs full recomputation %.1fx fewer "
        "token-layers, %.1fx fewer FLOPs",
        len(metas), len(fact_table), trace_seconds, len(fact_table) / trace_seconds,
        full / computed, flops_full / flops,
    )
