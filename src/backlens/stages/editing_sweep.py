"""Rule ``edit_shift_sweep``: every forward pass shift variant across layers and eta (Fig 26) and
each variant's chosen setting."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from backlens.editing.evaluation import case_metrics, case_pairs, metrics_from_scores
from backlens.editing.methods import build_editor, load_method_config
from backlens.editing.requests import continuation
from backlens.editing.scoring import ScoresAboveBlock
from backlens.editing.run_config import (
    check_outside_evaluation,
    requests_in_range,
    run_method_config,
    sweep_layers,
    user_method_overrides,
)
from backlens.editing.selection import (
    METRICS,
    SELECTION_RULE,
    choose,
    mean_metrics,
    scored,
    unedited_metrics,
)
from backlens.editing.weights import weights_added
from backlens.errors import ConfigError
from backlens.io import write_json, write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def by_target_length(cases: pd.DataFrame, setting: dict, settings: list[str]) -> dict:
    """Mean metrics of one setting on single-token and multi-token targets separately."""
    rows = cases
    for key in settings:
        rows = rows[rows[key] == setting[key]]
    groups = {"single_token": rows[~rows["multi_token"]], "multi_token": rows[rows["multi_token"]]}
    return {name: {"n_cases": len(group), **{k: float(group[k].mean()) for k in METRICS}}
            for name, group in groups.items() if len(group)}


def sweep_variant(cfg, loaded, method: str, layers, requests, baseline, batch_size: int) -> list[dict]:
    """Rows (layer, eta, case) of one shift variant; the unit update is computed once per layer and case."""
    kind = str(load_method_config(method, "editing.sweep.methods")["kind"])
    if kind != "shift":
        raise ConfigError(f"editing.sweep.methods: {method} is not a forward pass shift (kind {kind}); "
                          "list shift variants only, e.g. shift, shift_centered")
    method_cfg, overrides = run_method_config(cfg, method), user_method_overrides(cfg, method)
    rows = []
    progress = tqdm(total=len(layers) * len(requests), desc=f"{method} sweep", unit="case")
    for layer in layers:
        # One editor per layer: a whitened key inverts C once.
        editor, _ = build_editor(loaded, method_cfg, {**overrides, "layer": layer, "eta": 1.0})
        parameter = editor.edited_parameters()[0]
        # Every eta changes only this FF2 weight: the blocks below it see the unedited model, so their
        # stream is computed once per case (None: a family without the layer-range forward).
        start = editor.adapter.lowest_block([parameter])
        for request in requests:
            unit_update, already_predicted, _ = editor.shift_update(request)
            multi_token = len(continuation(loaded.tokenizer, request.prompt, request.target_new).target_ids) > 1
            scorer = None if already_predicted or start is None else ScoresAboveBlock(
                editor.adapter, editor.tokenizer, case_pairs(request), start, batch_size=batch_size)
            for eta in cfg.editing.sweep.etas:
                metrics = baseline[request.case_id]
                if not already_predicted:
                    with weights_added(parameter, float(eta) * unit_update):
                        metrics = (case_metrics(editor, request, batch_size=batch_size) if scorer is None
                                   else metrics_from_scores(request, scorer()))
                rows.append({"model": cfg.model.name, "method": method, "direction": editor.direction, "key": editor.key,
                             "layer": layer, "eta": float(eta), "case_id": request.case_id, "skipped": already_predicted,
                             "multi_token": multi_token, **{k: metrics[k] for k in METRICS}})
            progress.update()
    progress.close()
    return rows


def run(cfg: DictConfig) -> None:
    sweep = cfg.editing.sweep
    check_outside_evaluation(cfg, int(sweep.first_case), int(sweep.n_cases), "editing.sweep")
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    requests = requests_in_range(cfg, int(sweep.first_case), int(sweep.n_cases), "editing.sweep")
    batch_size = int(cfg.editing.evaluation.batch_size)
    layers = {str(method): sweep_layers(cfg, str(method), loaded.adapter.n_layers) for method in sweep.methods}
    log.info("shift sweep layers: %s", layers)
    baseline = unedited_metrics(loaded, requests, batch_size)
    baseline_means = mean_metrics(baseline)
    rows = [row for method in sweep.methods
            for row in sweep_variant(cfg, loaded, str(method), layers[str(method)], requests, baseline, batch_size)]
    cases = pd.DataFrame(rows)
    write_table(cases, cfg.paths.editing_sweep)
    write_json(shift_choices(cases, baseline_means, sweep), cfg.paths.editing_sweep_choice)


def shift_choices(cases: pd.DataFrame, baseline_means: dict, sweep) -> dict:
    """Each variant's chosen setting (with its single / multi-token breakdown and grid) from the sweep table."""
    choices = {}
    for method, group in cases.groupby("method", sort=False):
        summary = group.groupby(["layer", "eta"], as_index=False)[METRICS].mean()
        chosen = choose(summary, baseline_means["neighborhood_success"], float(sweep.max_ns_drop), ["eta", "layer"])
        choices[method] = {**chosen, "by_target_length": by_target_length(group, chosen, ["eta", "layer"]),
                           "grid": scored(summary).to_dict(orient="records")}
        log.info("shift sweep, %s: chose layer %d, eta %g (%s)", method, chosen["layer"], chosen["eta"],
                 {k: v for k, v in chosen.items() if k in METRICS})
    return {"methods": choices, "baseline": baseline_means, "n_cases": int(cases["case_id"].nunique()),
            "n_multi_token": int(cases.drop_duplicates("case_id")["multi_token"].sum()),
            "first_case": int(sweep.first_case), "rule": SELECTION_RULE, "max_ns_drop": float(sweep.max_ns_drop)}
