"""Figures over several runs (a sweep or a list of models), each run labelled by what differs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from backlens.analysis.aggregate import with_segment_flags
from backlens.figures.backward_lens import fig3_rank_equals_length
from backlens.figures.common import finish_line_axes
from backlens.figures.editing import PANELS


def compare_fig3(ranks_per_run: Sequence[pd.DataFrame], labels: Sequence[str]) -> plt.Figure:
    """Fig 3 with one line per run and matrix (paper Figs 19-21 across model sizes)."""
    stacked = pd.concat([t.assign(model=label) for t, label in zip(ranks_per_run, labels)], ignore_index=True)
    return fig3_rank_equals_length(stacked)


def compare_fig6(target_ranks_per_run: Sequence[pd.DataFrame], prompts_per_run: Sequence[pd.DataFrame],
                 labels: Sequence[str]) -> plt.Figure:
    """Fig 6 across runs (paper Fig 18): median rank of the target in LL(delta) at the last token,
    as a fraction of V-1, per layer index / number of layers."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for ranks, prompts, label in zip(target_ranks_per_run, prompts_per_run, labels):
        usable = with_segment_flags(ranks[ranks["rank"] >= 0], prompts)
        last = usable[usable["is_last"]]
        n_layers = int(ranks["layer"].max()) + 1
        relative = last["rank"] / (last["vocab_size"] - 1)
        median = relative.groupby(last["layer"]).median()
        ax.plot(median.index / n_layers, median.values, marker="o", markersize=3, label=label)
    ax.set_ylim(-0.03, 1.03)
    finish_line_axes(ax, xlabel="layer index / number of layers", ylabel="median rank / (V-1), last token",
                     title="Target rank in the FF2 VJP's logit lens across runs (1 = least probable)")
    return fig


def compare_editing(summaries: Sequence[dict], labels: Sequence[str]) -> plt.Figure:
    """One editing method's mean accuracies over its cases, per run."""
    fig, ax = plt.subplots(figsize=(max(4.8, 1.2 * len(labels)), 3.6))
    positions = range(len(labels))
    for column, title in PANELS:
        means = [100 * (s[f"{column}_mean"] or 0.0) for s in summaries]
        ax.plot(positions, means, marker="o", label=title)
    ax.set_xticks(list(positions), labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylim(-3, 103)
    method = summaries[0]["label"] if summaries else ""
    finish_line_axes(ax, xlabel="run", ylabel="accuracy (%)",
                     title=f"{method} across runs ({summaries[0]['n_cases']} CounterFact cases each)")
    return fig
