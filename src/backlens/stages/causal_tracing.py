"""Rule ``causal_tracing``: ROME causal tracing over the known facts the model answers correctly."""

from __future__ import annotations

import logging
import time

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from backlens.data.known_facts import load_known_facts_from_config
from backlens.data.segments import SegmentationError
from backlens.io import write_json, write_table
from backlens.models.loading import load_model
from backlens.tracing.facts import TracedPrompt, prepare_fact, screen_facts
from backlens.tracing.runs import fact_generator, noise_std
from backlens.tracing.tables import (
    average_effects,
    concat_or_empty,
    effect_rows,
    fact_row,
    segment_effects,
    token_rows,
)
from backlens.tracing.trace import TraceSettings, model_flops, trace_fact

log = logging.getLogger(__name__)


def trace_settings(cfg: DictConfig, std: float) -> TraceSettings:
    tracing = cfg.tracing
    return TraceSettings(
        kinds=tuple(tracing.kinds),
        severed_kinds=tuple(tracing.severed_kinds),
        noise_std=std,
        noise_samples=int(tracing.noise_samples),
        window=int(tracing.window),
        max_rows=int(tracing.max_rows),
        severed_at=str(tracing.severed_at),
    )


def _prepare_all(tokenizer, facts) -> tuple[list[TracedPrompt], list[dict]]:
    prepared, skipped = [], []
    for fact in facts:
        try:
            prepared.append(prepare_fact(tokenizer, fact))
        except SegmentationError as error:
            skipped.append({"known_id": fact.known_id, "reason": str(error)})
    return prepared, skipped


def run(cfg: DictConfig) -> None:
    tracing = cfg.tracing
    if tracing.num_threads is not None:
        torch.set_num_threads(int(tracing.num_threads))
    started = time.perf_counter()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    dataset = load_known_facts_from_config(cfg.known_facts)
    prepared, skipped = _prepare_all(loaded.tokenizer, dataset.records)
    if skipped:
        log.warning("%d known facts could not be segmented and are left out: %s", len(skipped), skipped[:3])

    screened_at = time.perf_counter()
    screening = screen_facts(loaded, prepared, int(tracing.screen_batch_size))
    screening.insert(0, "model", loaded.name)
    screen_seconds = time.perf_counter() - screened_at
    n_correct = int(screening["correct"].sum())
    log.info("%s answers %d of %d known facts correctly", loaded.name, n_correct, len(screening))
    if tracing.only_correct:
        correct_ids = set(screening.loc[screening["correct"], "known_id"])
        chosen = [p for p in prepared if p.fact.known_id in correct_ids][: int(tracing.n_facts)]
    else:
        chosen = prepared[: int(tracing.n_facts)]
    if len(chosen) < int(tracing.n_facts):
        log.warning("only %d facts available to trace; tracing.n_facts=%d", len(chosen), tracing.n_facts)

    std = noise_std(loaded.adapter, float(tracing.noise_scale))
    settings = trace_settings(cfg, std)
    facts, tokens, effects = [], [], []
    traced_at = time.perf_counter()
    for prompt in tqdm(chosen, desc="causal tracing", unit="fact"):
        fact_started = time.perf_counter()
        segmented = prompt.segmented
        trace = trace_fact(
            loaded.adapter,
            segmented.input_ids,
            segmented.subject_start,
            segmented.subject_end,
            prompt.answer_id,
            settings,
            fact_generator(int(cfg.seed), prompt.fact.known_id),
        )
        facts.append(fact_row(prompt, trace, time.perf_counter() - fact_started))
        tokens.append(token_rows(prompt))
        effects.append(effect_rows(prompt, trace))
    trace_seconds = time.perf_counter() - traced_at

    fact_table = pd.DataFrame(facts)
    token_table, effect_table = concat_or_empty(tokens), concat_or_empty(effects)
    if fact_table.empty:
        raise ValueError(
            f"{loaded.name} answers none of the known facts correctly; nothing to trace "
            "(tracing.only_correct=false traces facts regardless, e.g. for smoke tests on random models)"
        )
    per_fact = segment_effects(effect_table, token_table)
    averages = average_effects(per_fact)
    for table in (fact_table, token_table, effect_table, per_fact, averages):
        table.insert(0, "model", loaded.name)
    paths = cfg.paths
    write_table(screening, paths.tracing_screening)
    write_table(fact_table, paths.tracing_facts)
    write_table(token_table, paths.tracing_tokens)
    write_table(effect_table, paths.tracing_effects)
    write_table(per_fact, paths.tracing_segment_effects)
    write_table(averages, paths.tracing_average_effects)
    computed, full = int(fact_table["token_layers_computed"].sum()), int(fact_table["token_layers_full"].sum())
    flops = model_flops(loaded.adapter, computed, int(fact_table["runs_computed"].sum()))
    flops_full = model_flops(loaded.adapter, full, int(fact_table["runs_full"].sum()))
    write_json(
        {
            "model": loaded.name,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype),
            "num_threads": torch.get_num_threads(),
            "n_known_facts": len(dataset),
            "n_unsegmentable": len(skipped),
            "n_screened": len(screening),
            "n_correct": n_correct,
            "correct_rule": "first token of ' ' + attribute is the argmax next token after the prompt",
            "only_correct": bool(tracing.only_correct),
            "n_traced": len(fact_table),
            "noise_scale": float(tracing.noise_scale),
            "noise_std": std,
            "noise_samples": settings.noise_samples,
            "window": settings.window,
            "kinds": list(settings.kinds),
            "severed_kinds": list(settings.severed_kinds),
            "severed_at": settings.severed_at,
            "seed": int(cfg.seed),
            "token_layers_computed": computed,
            "token_layers_full_recomputation": full,
            "saving_vs_full_recomputation": full / computed,
            "model_flops": flops,
            "model_flops_full_recomputation": flops_full,
            "flop_saving_vs_full_recomputation": flops_full / flops,
            "screen_seconds": screen_seconds,
            "trace_seconds": trace_seconds,
            "facts_per_second": len(fact_table) / trace_seconds,
            "total_seconds": time.perf_counter() - started,
        },
        paths.tracing_summary,
    )
    log.info(
        "traced %d facts in %.0f s (%.2f facts/s); vs full recomputation %.1fx fewer token-layers, %.1fx fewer FLOPs",
        len(fact_table), trace_seconds, len(fact_table) / trace_seconds, full / computed, flops_full / flops,
    )
