"""Rule ``edit_method_sweep``: one baseline method (FT, MEMIT, ...) over a grid of hyper-parameters.

The grid is ``editing.method_sweeps.<method>.grid`` ({hparam: [values]}), run on CounterFact cases
outside the evaluation range (``editing.sweep.first_case`` onwards), and the chosen setting follows the
same documented rule as the shift sweep. The chosen values are then committed to conf/method/<method>.yaml
under ``per_model.<model>``; this rule never edits configs itself.
"""

from __future__ import annotations

import logging
from itertools import product

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from backlens.editing.evaluation import evaluate_case
from backlens.editing.methods import build_editor
from backlens.editing.run_config import check_outside_evaluation, requests_in_range, user_method_overrides
from backlens.editing import selection
from backlens.io import write_json, write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def grid_settings(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in the order the config lists them."""
    names = list(grid)
    return [dict(zip(names, values)) for values in product(*(grid[name] for name in names))]


def run(cfg: DictConfig) -> None:
    method = str(cfg.method.name)
    sweeps = cfg.editing.method_sweeps
    if method not in sweeps:
        raise ValueError(f"method={method} has no editing.method_sweeps.{method}.grid; sweepable: {sorted(sweeps)}")
    sweep = sweeps[method]
    first_case = int(cfg.editing.sweep.first_case)
    check_outside_evaluation(cfg, first_case, int(sweep.n_cases), f"editing.method_sweeps.{method}")
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    requests = requests_in_range(cfg, first_case, int(sweep.n_cases), f"editing.method_sweeps.{method}")
    settings = grid_settings(OmegaConf.to_container(sweep.grid, resolve=True))
    evaluation = OmegaConf.to_container(cfg.editing.evaluation, resolve=True)
    rows = []
    progress = tqdm(total=len(settings) * len(requests), desc=f"{method} sweep", unit="case")
    for setting in settings:
        editor, hparams = build_editor(loaded, cfg.method, extra={**user_method_overrides(cfg, method), **setting})
        for request in requests:
            row = evaluate_case(editor, request, evaluation, generate=False, perplexity_blocks=None, free_generation=False)
            rows.append({"model": cfg.model.name, "method": method, **setting, "case_id": request.case_id,
                         "skipped": row["skipped"], "edit_seconds": row["edit_seconds"],
                         "efficacy_before": row["efficacy_before"], **{k: row[k] for k in selection.METRICS}})
            progress.update()
    progress.close()
    cases = pd.DataFrame(rows)
    baseline = selection.unedited_metrics(loaded, requests, int(evaluation["batch_size"]))
    baseline_means = selection.mean_metrics(baseline)
    write_table(cases, cfg.paths.editing_method_sweep)
    choice = method_choice(cases, baseline_means, sweep, method, list(settings[0]), hparams_without(hparams, list(settings[0])))
    write_json(choice, cfg.paths.editing_method_sweep_choice)
    log.info("%s sweep on %s: chose %s", method, cfg.model.name, {k: v for k, v in choice.items() if k != "grid"})


def method_choice(cases: pd.DataFrame, baseline_means: dict, sweep, method: str, names: list[str], fixed_hparams: dict) -> dict:
    """The chosen setting of a baseline's sweep table (the shift sweep's rule), with the grid's means."""
    summary = cases.groupby(names, as_index=False)[[*selection.METRICS, "edit_seconds"]].mean()
    chosen = selection.choose(summary, baseline_means["neighborhood_success"], float(sweep.max_ns_drop), names,
                              larger_is_gentler=list(sweep.get("larger_is_gentler") or []))
    unedited = cases.drop_duplicates("case_id")
    return {"method": method, **chosen, "baseline": baseline_means,
            "baseline_efficacy": float(unedited["efficacy_before"].mean()), "n_cases": int(cases["case_id"].nunique()),
            "first_case": int(cases["case_id"].min()), "rule": selection.SELECTION_RULE, "max_ns_drop": float(sweep.max_ns_drop),
            "fixed_hparams": fixed_hparams,
            "grid": selection.scored(summary).to_dict(orient="records")}


def hparams_without(hparams: dict, names: list[str]) -> dict:
    return {k: v for k, v in hparams.items() if k not in names and k not in ("stats_path", "checkpoint")}
