"""Rule ``edit_shift_sweep``: every forward pass shift variant across layers and eta (Fig 26) and
each variant's chosen setting."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from backlens.editing.base import NoEdit
from backlens.editing.evaluation import case_metrics
from backlens.editing.requests import continuation
from backlens.editing.shift import ForwardPassShift
from backlens.editing.weights import restored_after
from backlens.errors import ConfigError
from backlens.io import write_json, write_table
from backlens.models.loading import load_model
from backlens.editing.methods import load_method_config
from backlens.stages.editing_common import other_method_hparams, requests_in_range, sweep_layers

log = logging.getLogger(__name__)
ACCURACIES = ["efficacy", "paraphrase", "neighborhood"]
# ROME's probability comparisons: NS can see locality damage where neighbourhood accuracy sits at
# its floor (SmolLM2: 6% unedited accuracy, 66% NS).
SUCCESSES = ["efficacy_success", "paraphrase_success", "neighborhood_success"]
METRICS = ACCURACIES + SUCCESSES


SELECTION_RULE = ("the highest harmonic mean of efficacy, paraphrase (accuracies) and NS (neighborhood_success), "
                  "an accuracy analogue of ROME's Score; ties to the highest harmonic mean of the three probability "
                  "comparisons (efficacy_success, paraphrase_success, NS), then to the gentler setting (smaller eta, "
                  "lr, norm bound; larger where the config lists the key under larger_is_gentler, e.g. MEMIT's "
                  "mom2_update_weight); ns_within_max_drop says whether NS stays within max_ns_drop of the unedited "
                  "model's")


def _harmonic_mean(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    parts = frame[columns].astype(float)
    return (len(columns) / (1 / parts).sum(axis=1)).where((parts > 0).all(axis=1), 0.0)


def accuracy_score(frame: pd.DataFrame) -> pd.Series:
    """Harmonic mean of efficacy, paraphrase and NS per row (0 when any is 0): an edit must work,
    generalise and leave neighbours alone at once. ROME's Score averages ES/PS/NS the same way, but
    ES and PS (probability comparisons) are met by edits too weak to change the argmax."""
    return _harmonic_mean(frame, ["efficacy", "paraphrase", "neighborhood_success"])


def success_score(frame: pd.DataFrame) -> pd.Series:
    """ROME's Score from its three probability comparisons (harmonic mean of ES, PS, NS): the tie-break
    where accuracies on a few cases cannot tell settings apart."""
    return _harmonic_mean(frame, SUCCESSES)


def choose(summary: pd.DataFrame, baseline_ns: float, max_drop: float, settings: list[str],
           larger_is_gentler=()) -> dict:
    """The documented rule (SELECTION_RULE): the highest accuracy_score, ties to the highest
    success_score, then to the gentler values of ``settings`` (in that order; smaller unless the key is
    in ``larger_is_gentler``). ``ns_within_max_drop`` reports whether the chosen NS is within
    ``max_drop`` of the unedited model's (on SmolLM2 no setting of the shift sweep that edits at all
    is: the rule then still picks the best trade-off and the flag says so)."""
    ranked = summary.assign(score=accuracy_score(summary), success_score=success_score(summary)).sort_values(
        ["score", "success_score", *settings],
        ascending=[False, False] + [key not in set(larger_is_gentler) for key in settings], kind="stable")
    best = ranked.iloc[0]
    # Column by column, so an integer setting (layer) stays an integer.
    return {**{k: ranked[k].iloc[0].item() for k in settings},
            **{k: float(best[k]) for k in METRICS if k in ranked}, "score": float(best["score"]),
            "success_score": float(best["success_score"]),
            "ns_within_max_drop": bool(best["neighborhood_success"] >= baseline_ns - max_drop)}


def unedited_metrics(loaded, requests, batch_size: int) -> dict[int, dict]:
    """case_id -> the unedited model's metrics on each sweep case (the selection rule's baseline)."""
    editor = NoEdit(loaded, {})
    return {r.case_id: case_metrics(editor, r, batch_size=batch_size) for r in requests}


def mean_metric(metrics: dict[int, dict], key: str) -> float:
    return float(pd.Series([m[key] for m in metrics.values()], dtype=float).dropna().mean())


def check_outside_evaluation(cfg: DictConfig, first_case: int, n_cases: int, label: str) -> None:
    evaluation_start = int(cfg.editing.first_case)
    evaluation_end = evaluation_start + int(cfg.editing.n_cases)
    if first_case < evaluation_end and evaluation_start < first_case + n_cases:
        raise ValueError(f"{label} cases {first_case}..{first_case + n_cases - 1} overlap the evaluation range; move {label}.first_case")


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
    hparams = other_method_hparams(cfg, method, loaded.adapter.n_layers)
    rows = []
    progress = tqdm(total=len(layers) * len(requests), desc=f"{method} sweep", unit="case")
    for layer in layers:
        # One editor per layer: a whitened key inverts C once.
        editor = ForwardPassShift(loaded, {**hparams, "layer": layer, "eta": 1.0})
        for request in requests:
            unit_update, already_predicted, _ = editor.shift_update(request)
            multi_token = len(continuation(loaded.tokenizer, request.prompt, request.target_new).target_ids) > 1
            for eta in cfg.editing.sweep.etas:
                metrics = baseline[request.case_id]
                if not already_predicted:
                    with restored_after(editor.edited_parameters()):
                        with torch.no_grad():
                            editor.edited_parameters()[0].add_(float(eta) * unit_update)
                        metrics = case_metrics(editor, request, batch_size=batch_size)
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
    baseline_means = {k: mean_metric(baseline, k) for k in METRICS}
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
                           "grid": summary.assign(score=accuracy_score(summary), success_score=success_score(summary)).to_dict(orient="records")}
        log.info("shift sweep, %s: chose layer %d, eta %g (%s)", method, chosen["layer"], chosen["eta"],
                 {k: v for k, v in chosen.items() if k in METRICS})
    return {"methods": choices, "baseline": baseline_means, "n_cases": int(cases["case_id"].nunique()),
            "n_multi_token": int(cases.drop_duplicates("case_id")["multi_token"].sum()),
            "first_case": int(sweep.first_case), "rule": SELECTION_RULE, "max_ns_drop": float(sweep.max_ns_drop)}
