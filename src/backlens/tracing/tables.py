"""Tidy tables of causal traces: per cell, per token, per fact, and averages by ROME segment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from backlens.data.segments import SEGMENTS

if TYPE_CHECKING:  # annotations only: the merge stage builds its tables without loading torch
    from backlens.tracing.facts import TracedPrompt
    from backlens.tracing.trace import FactTrace

# Two-sided 95% normal quantile for the confidence bands over facts.
_Z95 = 1.959963984540054


def effect_rows(prompt: TracedPrompt, trace: FactTrace) -> pd.DataFrame:
    """One row per traced (token, layer, kind) of one fact."""
    n_kinds, n_tokens, n_layers = trace.restored.shape
    kind_grid, token_grid, layer_grid = np.meshgrid(
        np.arange(n_kinds), np.arange(n_tokens), np.arange(n_layers), indexing="ij"
    )
    frame = pd.DataFrame(
        {
            "known_id": prompt.fact.known_id,
            "token_index": token_grid.ravel(),
            "layer": layer_grid.ravel(),
            "kind": np.asarray(trace.kinds, dtype=object)[kind_grid.ravel()],
            "p_restored": trace.restored.ravel(),
            "indirect_effect": trace.indirect_effects.ravel(),
        }
    )
    return frame[frame["p_restored"].notna()].reset_index(drop=True)


def token_rows(prompt: TracedPrompt) -> pd.DataFrame:
    """One row per prompt token: text, primary segment and the six ROME segment flags."""
    segmented = prompt.segmented
    frame = pd.DataFrame(
        {
            "known_id": prompt.fact.known_id,
            "token_index": np.arange(len(segmented)),
            "token_id": list(segmented.input_ids),
            "token": list(segmented.tokens),
            "segment": list(segmented.primary),
        }
    )
    for segment in SEGMENTS:
        frame[segment] = list(segmented.flags[segment])
    return frame


def fact_row(prompt: TracedPrompt, trace: FactTrace) -> dict[str, object]:
    fact, segmented = prompt.fact, prompt.segmented
    return {
        "known_id": fact.known_id,
        "relation_id": fact.relation_id,
        "subject": fact.subject,
        "prompt": fact.prompt,
        "attribute": fact.attribute,
        "answer_id": prompt.answer_id,
        "answer_token": prompt.answer_token,
        "n_tokens": len(segmented),
        "subject_start": segmented.subject_start,
        "subject_end": segmented.subject_end,
        "p_clean": trace.p_clean,
        "p_corrupted": trace.p_corrupted,
        "total_effect": trace.total_effect,
        "token_layers_computed": trace.token_layers_computed,
        "token_layers_full": trace.token_layers_full,
        "runs_computed": trace.runs_computed,
        "runs_full": trace.runs_full,
    }


def segment_effects(effects: pd.DataFrame, tokens: pd.DataFrame) -> pd.DataFrame:
    """Per fact, segment, layer and kind: the indirect effect averaged over the segment's tokens.

    A token can sit in two segments (a one-token subject is first and last subject token);
    it counts in both, as in ROME. Facts without a segment (no middle subject token) add no row.
    """
    parts = []
    keys = ["known_id", "token_index"]
    for segment in SEGMENTS:
        members = tokens.loc[tokens[segment], keys]
        selected = effects.merge(members, on=keys)
        grouped = selected.groupby(["known_id", "layer", "kind"], as_index=False)["indirect_effect"].mean()
        grouped.insert(1, "segment", segment)
        parts.append(grouped)
    return pd.concat(parts, ignore_index=True)


def average_effects(per_fact: pd.DataFrame) -> pd.DataFrame:
    """Mean indirect effect over facts per segment, layer and kind, with a 95% normal band."""
    grouped = per_fact.groupby(["segment", "layer", "kind"])["indirect_effect"]
    table = grouped.agg(mean="mean", std="std", n_facts="count").reset_index()
    sem = (table["std"] / np.sqrt(table["n_facts"])).fillna(0.0)
    table["sem"] = sem
    table["ci_low"] = table["mean"] - _Z95 * sem
    table["ci_high"] = table["mean"] + _Z95 * sem
    order = {segment: i for i, segment in enumerate(SEGMENTS)}
    table = table.sort_values(["kind", "segment", "layer"], key=lambda c: c.map(order) if c.name == "segment" else c)
    return table.reset_index(drop=True)


def concat_or_empty(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
