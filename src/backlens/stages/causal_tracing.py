"""Rules ``trace_screen`` and ``trace_shard``: ROME causal tracing over the known facts the model
answers correctly.

``screen`` prepares and screens every known fact and chooses the facts to trace (the first
``tracing.n_facts`` correctly answered ones); ``trace_shard`` traces positions [start, stop) of
that chosen list (``tracing.shard``); ``causal_tracing_merge.merge`` joins the shards into the
tables and summary. A fact's noise is seeded from (seed, known_id), so any shard size gives the
same rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from backlens import sharding
from backlens.api.tracing import trace_prepared, trace_settings
from backlens.artifacts import shard_files
from backlens.data.known_facts import load_known_facts_from_config
from backlens.data.segments import SEGMENTS, SegmentationError
from backlens.data.sources import identity_from_config
from backlens.io import write_json, write_table
from backlens.models.loading import load_model
from backlens.tracing.facts import TracedPrompt, prepare_fact, screen_facts
from backlens.tracing.runs import noise_std
from backlens.tracing.shards import read_screening, settings_record
from backlens.tracing.tables import concat_or_empty
from backlens.tracing.trace import model_flops

log = logging.getLogger(__name__)

# Columns of the shard tables (backlens.tracing.tables rows with the model in front); a shard
# past the chosen facts writes empty tables with these columns.
FACT_COLUMNS = [
    "model", "known_id", "relation_id", "subject", "prompt", "attribute", "answer_id", "answer_token",
    "n_tokens", "subject_start", "subject_end", "p_clean", "p_corrupted", "total_effect",
    "token_layers_computed", "token_layers_full", "runs_computed", "runs_full",
]
TOKEN_COLUMNS = ["model", "known_id", "token_index", "token_id", "token", "segment", *SEGMENTS]
EFFECT_COLUMNS = ["model", "known_id", "token_index", "layer", "kind", "p_restored", "indirect_effect"]


def _set_threads(cfg: DictConfig) -> None:
    if cfg.tracing.num_threads is not None:
        torch.set_num_threads(int(cfg.tracing.num_threads))


def _prepare_all(tokenizer, facts) -> tuple[list[TracedPrompt], list[dict]]:
    prepared, skipped = [], []
    for fact in facts:
        try:
            prepared.append(prepare_fact(tokenizer, fact))
        except SegmentationError as error:
            skipped.append({"known_id": fact.known_id, "reason": str(error)})
    return prepared, skipped


def chosen_known_ids(screening: pd.DataFrame, only_correct: bool, n_facts: int) -> list[int]:
    """The facts to trace, in known_id order: the first ``n_facts`` correct ones (or any, if not only_correct)."""
    candidates = screening.loc[screening["correct"], "known_id"] if only_correct else screening["known_id"]
    return [int(known_id) for known_id in candidates[:n_facts]]


def screen(cfg: DictConfig) -> None:
    """Screen every known fact; write the screening table and the chosen facts (screening.json)."""
    tracing = cfg.tracing
    _set_threads(cfg)
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    dataset = load_known_facts_from_config(cfg.known_facts)
    prepared, skipped = _prepare_all(loaded.tokenizer, dataset.records)
    if skipped:
        log.warning("%d known facts could not be segmented and are left out: %s", len(skipped), skipped[:3])
    started = time.perf_counter()
    screening = screen_facts(loaded, prepared, int(tracing.screen_batch_size))
    screening.insert(0, "model", loaded.name)
    screen_seconds = time.perf_counter() - started
    n_correct = int(screening["correct"].sum())
    log.info("%s answers %d of %d known facts correctly", loaded.name, n_correct, len(screening))
    n_facts = int(tracing.n_facts)
    chosen = chosen_known_ids(screening, bool(tracing.only_correct), n_facts)
    if not chosen:
        raise ValueError(
            f"{loaded.name} answers none of the known facts correctly; nothing to trace "
            "(tracing.only_correct=false traces facts regardless, e.g. for smoke tests on random models)"
        )
    if len(chosen) < n_facts:
        log.warning("only %d facts available to trace; tracing.n_facts=%d", len(chosen), n_facts)
    write_table(screening, cfg.paths.tracing_screening)
    write_json(
        {
            "model": loaded.name,
            "n_known_facts": len(dataset),
            "n_unsegmentable": len(skipped),
            "unsegmentable_known_ids": [int(s["known_id"]) for s in skipped],
            "n_screened": len(screening),
            "n_correct": n_correct,
            "only_correct": bool(tracing.only_correct),
            "n_facts": n_facts,
            "n_chosen": len(chosen),
            "chosen_known_ids": chosen,
            "known_facts": identity_from_config(cfg.known_facts, "known_1000"),
        },
        cfg.paths.tracing_screening_meta,
    )
    # Apart from screening.json, which is byte-identical run to run.
    write_json({"screen_seconds": screen_seconds}, cfg.paths.tracing_screening_timings)


def shard_range(cfg: DictConfig) -> tuple[int, int]:
    """[start, stop) positions of the chosen list this job traces (tracing.shard, or all)."""
    return sharding.shard_range(cfg.tracing.get("shard"), int(cfg.tracing.n_facts), "tracing.shard", "facts to trace")


def _write_shard(
    files: dict[str, Path], facts: pd.DataFrame, tokens: pd.DataFrame, effects: pd.DataFrame, meta: dict
) -> None:
    write_table(facts, files["facts"])
    write_table(tokens, files["tokens"])
    write_table(effects, files["effects"])
    write_json(meta, files["meta"])


def trace_shard(cfg: DictConfig) -> None:
    """Trace positions [start, stop) of the chosen facts; past the chosen facts, write empty tables."""
    chosen = read_screening(cfg.paths.tracing_screening_meta)["chosen_known_ids"]
    start, stop = shard_range(cfg)
    known_ids = chosen[start:stop]
    files = shard_files(cfg.paths.tracing_shard)
    # The meta (not the tables) holds the timings: the tables are byte-identical run to run.
    meta = {"shard": [start, stop], "known_ids": known_ids, "trace_seconds": 0.0, "fact_seconds": []}
    if not known_ids:
        log.info("facts %d-%d: only %d facts were chosen, nothing to trace", start, stop - 1, len(chosen))
        empty = (pd.DataFrame(columns=c) for c in (FACT_COLUMNS, TOKEN_COLUMNS, EFFECT_COLUMNS))
        _write_shard(files, *empty, meta)
        return
    _set_threads(cfg)
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    records = {fact.known_id: fact for fact in load_known_facts_from_config(cfg.known_facts).records}
    prompts = [prepare_fact(loaded.tokenizer, records[known_id]) for known_id in known_ids]
    std = noise_std(loaded.adapter, float(cfg.tracing.noise_scale))
    settings = trace_settings(cfg, std, loaded.adapter.n_layers)
    facts, tokens, effects, fact_seconds = [], [], [], []
    traced_at = time.perf_counter()
    for prompt in tqdm(prompts, desc=f"causal tracing facts {start}-{start + len(prompts) - 1}", unit="fact"):
        fact_started = time.perf_counter()
        traced = trace_prepared(loaded.adapter, prompt, settings, int(cfg.seed))
        fact_seconds.append(time.perf_counter() - fact_started)
        facts.append(traced.fact)
        tokens.append(traced.tokens)
        effects.append(traced.effects)
    trace_seconds = time.perf_counter() - traced_at
    tables = [pd.DataFrame(facts), concat_or_empty(tokens), concat_or_empty(effects)]
    for table in tables:
        table.insert(0, "model", loaded.name)
    meta |= {
        "trace_seconds": trace_seconds,
        "fact_seconds": fact_seconds,
        "settings": settings_record(cfg, std),
        "window_layers": settings.window,
        "n_layers": loaded.adapter.n_layers,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype),
        "num_threads": torch.get_num_threads(),
        # model_flops is linear in token-layers and runs: the merge sums these per shard.
        "flops_per_token_layer": model_flops(loaded.adapter, 1, 0),
        "flops_per_run": model_flops(loaded.adapter, 0, 1),
    }
    _write_shard(files, *tables, meta)
    log.info("traced facts %d-%d in %.1f s (%.2f facts/s)", start, start + len(prompts) - 1,
             trace_seconds, len(prompts) / trace_seconds)
