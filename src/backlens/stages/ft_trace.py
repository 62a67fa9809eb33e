"""Rule ``ft_trace`` (issue 16): K optimisation steps of an FF2 edit, traced per step.

``run``: for each of the first ``analysis.ft_trace.n_cases`` sampled prompts and each layer of
``layer_fractions``, edit that layer's FF2 weight by K steps of plain gradient descent or Adam
on the paper's loss (``backlens.analysis.ft_trace``) and write one row per (case, layer, step).
Every edit starts from the original weights. Its report, results/{run}/ft_trace.md, is rule
``ft_trace_report`` (``stages/beyond_reports.py``), from that table.
"""

from __future__ import annotations

import logging
import time

import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from backlens.analysis.ft_trace import TraceSettings, layers_from_fractions, trace_edit
from backlens.api.sampled_prompts import read_prompts
from backlens.io import write_json, write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def trace_settings(cfg: DictConfig) -> TraceSettings:
    settings = cfg.analysis.ft_trace
    optimizer = str(settings.optimizer)
    lr = settings.lr if settings.lr is not None else settings.lr_by_optimizer.get(optimizer)
    if lr is None:
        raise ValueError(f"analysis.ft_trace: no lr for optimizer={optimizer!r}; set analysis.ft_trace.lr")
    return TraceSettings(steps=int(settings.steps), optimizer=optimizer, lr=float(lr))


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompts = read_prompts(cfg.paths.prompts, cfg.model.name)
    settings = trace_settings(cfg)
    n_cases = min(int(cfg.analysis.ft_trace.n_cases), len(prompts.case_ids))
    layers = layers_from_fractions(list(cfg.analysis.ft_trace.layer_fractions), loaded.adapter.n_layers)
    rows: list[dict] = []
    started = time.perf_counter()
    with tqdm(total=n_cases * len(layers), desc="ft_trace", unit="edit") as bar:
        for index in range(n_cases):
            case_id = prompts.case_ids[index]
            loaded.check_fits(len(prompts.input_ids[index]), f"CounterFact case {case_id}")
            for layer in layers:
                trace = trace_edit(loaded, prompts.input_ids[index], prompts.target_ids[index], layer, settings)
                rows.extend({"case_id": case_id, **row} for row in trace)
                bar.update(1)
    seconds = time.perf_counter() - started
    table = pd.DataFrame(rows)
    table.insert(0, "model", cfg.model.name)
    table["rank_bound"] = table["rank_bound"].astype("Int64")  # None (Adam) as <NA>
    write_table(table, cfg.paths.ft_trace)
    write_json({
        "model": cfg.model.name, "model_source": loaded.source, "dtype": str(loaded.dtype),
        "n_cases": n_cases, "layers": layers, "steps": settings.steps, "optimizer": settings.optimizer,
        "lr": settings.lr, "loss": cfg.paper.loss, "seconds": seconds,
        "seconds_per_step": seconds / max(1, n_cases * len(layers) * settings.steps),
    }, cfg.paths.ft_trace_meta)
    log.info("wrote %s (%d rows, %.1f s)", cfg.paths.ft_trace, len(table), seconds)
