"""The sweeps' selection rule (rules ``edit_shift_sweep`` and ``edit_method_sweep``): one documented
rule picks a setting from a grid of mean metrics, on CounterFact cases outside the evaluation range."""

from __future__ import annotations

import pandas as pd

from backlens.editing.base import NoEdit
from backlens.editing.evaluation import case_metrics

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


def scored(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with both scores per row (``score``: accuracy_score, ``success_score``): the grid a
    sweep reports and the ranking ``choose`` sorts."""
    return summary.assign(score=accuracy_score(summary), success_score=success_score(summary))


def choose(summary: pd.DataFrame, baseline_ns: float, max_drop: float, settings: list[str],
           larger_is_gentler=()) -> dict:
    """The documented rule (SELECTION_RULE): the highest accuracy_score, ties to the highest
    success_score, then to the gentler values of ``settings`` (in that order; smaller unless the key is
    in ``larger_is_gentler``). ``ns_within_max_drop`` reports whether the chosen NS is within
    ``max_drop`` of the unedited model's (on SmolLM2 no setting of the shift sweep that edits at all
    is: the rule then still picks the best trade-off and the flag says so)."""
    ranked = scored(summary).sort_values(
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


def mean_metrics(metrics: dict[int, dict]) -> dict[str, float]:
    """Every selection metric's mean over the cases (the unedited baseline a sweep reports)."""
    return {key: mean_metric(metrics, key) for key in METRICS}
