"""Aggregations shared by figures and reports (pure functions of result tables)."""

from __future__ import annotations

import pandas as pd

from backlens.data.segments import SEGMENTS

SEGMENT_LABELS = {
    "first_subject": "first subject token",
    "middle_subject": "middle subject tokens",
    "last_subject": "last subject token",
    "first_subsequent": "first subsequent token",
    "further": "further tokens",
    "last": "last token",
}


def with_segment_flags(values: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """``values`` (keyed by case_id and position) with the prompt table's segment flags."""
    flags = prompts[["case_id", "position", *[f"is_{s}" for s in SEGMENTS]]]
    return values.merge(flags, on=["case_id", "position"], how="inner", validate="many_to_one")


def segment_means(values: pd.DataFrame, prompts: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    """Mean of ``value`` per ROME segment, as in ROME's averages.

    Within each prompt the tokens of a segment are averaged first (a token can belong to
    two segments, e.g. a one-token subject is first and last subject token); then prompts
    are averaged. Returns columns ``by + [segment, mean, std, sem, n_prompts]``.
    """
    merged = with_segment_flags(values, prompts)
    parts = []
    for segment in SEGMENTS:
        in_segment = merged[merged[f"is_{segment}"]]
        per_prompt = in_segment.groupby([*by, "case_id"], as_index=False)[value].mean()
        summary = per_prompt.groupby(by)[value].agg(["mean", "std", "sem", "count"]).reset_index()
        summary.insert(len(by), "segment", segment)
        parts.append(summary.rename(columns={"count": "n_prompts"}))
    return pd.concat(parts, ignore_index=True)


def relative_depth(layer, n_layers):
    """A layer's place in the model as layer / n_layers (0 for the first layer, 1 - 1/n_layers for
    the last), the x axis of every figure that sets models of different depths side by side
    (Fig 3, and the paper's Figs 18-21)."""
    return layer / n_layers


DEPTH_LABEL = "layer index / number of layers"


def rank_equals_length_share(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per (model, matrix, layer): share of prompts whose gradient rank equals P, and the
    layer's ``relative_depth``."""
    table = ranks.assign(full=ranks["rank"] == ranks["n_tokens"])
    n_layers = table.groupby("model").layer.transform("max") + 1
    table = table.assign(depth=relative_depth(table.layer, n_layers))
    return table.groupby(["model", "matrix", "layer", "depth"], as_index=False).full.mean()


def layer_runs(layers) -> str:
    """Layers as runs for a sentence: [1, 2, 3, 7] -> "1-3, 7" ("none" when empty)."""
    layers = sorted(int(layer) for layer in layers)
    if not layers:
        return "none"
    runs, start = [], layers[0]
    for previous, layer in zip(layers, [*layers[1:], None]):
        if layer != previous + 1:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = layer
    return ", ".join(runs)
