"""Rule ``edit_shift_sweep``: forward pass shift across layers and eta (Fig 26) and the chosen setting."""

from __future__ import annotations

import logging
from itertools import product

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from backlens.editing.base import NoEdit
from backlens.editing.evaluation import case_metrics
from backlens.editing.shift import ForwardPassShift
from backlens.editing.weights import restored_after
from backlens.io import write_json, write_table
from backlens.models.loading import load_model
from backlens.stages.editing_common import requests_in_range

log = logging.getLogger(__name__)
ACCURACIES = ["efficacy", "paraphrase", "neighborhood"]


SELECTION_RULE = "neighborhood >= baseline - max_neighborhood_drop; max efficacy + paraphrase; ties to the smaller setting"


def choose(summary: pd.DataFrame, baseline_neighborhood: float, max_drop: float, settings: list[str]) -> dict:
    """The documented rule: neighborhood within ``max_drop`` of the unedited model, then the highest
    efficacy + paraphrase; ties go to the smaller values of ``settings`` (in that order)."""
    allowed = summary[summary["neighborhood"] >= baseline_neighborhood - max_drop]
    if allowed.empty:
        raise ValueError(f"no sweep setting keeps neighborhood within {max_drop} of {baseline_neighborhood:.3f}; widen the grid")
    ranked = allowed.assign(objective=allowed["efficacy"] + allowed["paraphrase"]).sort_values(
        ["objective", *settings], ascending=[False] + [True] * len(settings)
    )
    # Column by column, so an integer setting (layer) stays an integer.
    return {**{k: ranked[k].iloc[0].item() for k in settings}, **{k: float(ranked[k].iloc[0]) for k in ACCURACIES}}


def unedited_metrics(loaded, requests, batch_size: int) -> dict[int, dict]:
    """case_id -> the unedited model's accuracies on each sweep case (the selection rule's baseline)."""
    editor = NoEdit(loaded, {})
    return {r.case_id: case_metrics(editor, r, batch_size=batch_size) for r in requests}


def mean_neighborhood(metrics: dict[int, dict]) -> float:
    return float(pd.Series([m["neighborhood"] for m in metrics.values()], dtype=float).dropna().mean())


def check_outside_evaluation(cfg: DictConfig, first_case: int, n_cases: int, label: str) -> None:
    evaluation_start = int(cfg.editing.first_case)
    evaluation_end = evaluation_start + int(cfg.editing.n_cases)
    if first_case < evaluation_end and evaluation_start < first_case + n_cases:
        raise ValueError(f"{label} cases {first_case}..{first_case + n_cases - 1} overlap the evaluation range; move {label}.first_case")


def run(cfg: DictConfig) -> None:
    sweep = cfg.editing.sweep
    check_outside_evaluation(cfg, int(sweep.first_case), int(sweep.n_cases), "editing.sweep")
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    requests = requests_in_range(cfg, int(sweep.first_case), int(sweep.n_cases), "editing.sweep")
    batch_size = int(cfg.editing.evaluation.batch_size)
    layers = [int(x) for x in sweep.layers if int(x) < loaded.adapter.n_layers]
    rows = []
    baseline = unedited_metrics(loaded, requests, batch_size)
    for layer, request in tqdm(list(product(layers, requests)), desc="shift sweep", unit="case"):
        editor = ForwardPassShift(loaded, {"layer": layer, "eta": 1.0})
        unit_update, already_predicted, _ = editor.shift_update(request)
        for eta in sweep.etas:
            metrics = baseline[request.case_id]
            if not already_predicted:
                with restored_after(editor.edited_parameters()):
                    with torch.no_grad():
                        editor.edited_parameters()[0].add_(float(eta) * unit_update)
                    metrics = case_metrics(editor, request, batch_size=batch_size)
            rows.append({"model": cfg.model.name, "layer": layer, "eta": float(eta), "case_id": request.case_id,
                         "skipped": already_predicted, **{k: metrics[k] for k in ACCURACIES}})
    cases = pd.DataFrame(rows)
    summary = cases.groupby(["layer", "eta"], as_index=False)[ACCURACIES].mean()
    baseline_neighborhood = mean_neighborhood(baseline)
    chosen = choose(summary, baseline_neighborhood, float(sweep.max_neighborhood_drop), ["eta", "layer"])
    write_table(cases, cfg.paths.editing_sweep)
    write_json({**chosen, "baseline_neighborhood": baseline_neighborhood, "n_cases": len(requests),
                "first_case": int(sweep.first_case), "rule": SELECTION_RULE, "max_neighborhood_drop": float(sweep.max_neighborhood_drop),
                "grid": summary.to_dict(orient="records")}, cfg.paths.editing_sweep_choice)
    log.info("shift sweep on %s: chose layer %d, eta %g (%s)", cfg.model.name, chosen["layer"], chosen["eta"], chosen)
