"""Figs 7-9: how single neurons' one-step changes relate to the gradient's spanning set.

Input: ``neuron_updates.parquet`` (top-k most-changed neurons per prompt, layer and
matrix; cosine of each neuron's change with every spanning vector: FF2 VJPs delta_i for
value vectors, FF1 inputs x_i for key vectors) and ``prompts.parquet`` for segments.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from backlens.analysis.aggregate import SEGMENT_LABELS
from backlens.data.segments import PRIMARY_ORDER
from backlens.figures.common import finish_line_axes

MATRIX_LABELS = {"ff2": "FF2 values (span of delta_i)", "ff1": "FF1 keys (span of x_i)",
                 "ff1_gate": "FF1 gate keys (span of x_i)", "ff1_up": "FF1 up keys (span of x_i)"}


def _best_alignment(updates: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """One row per neuron change: its largest |cosine| with a spanning vector and where that vector sits."""
    scored = updates.dropna(subset=["cosine"]).assign(abs_cosine=lambda t: t.cosine.abs())
    best = scored.loc[scored.groupby(["case_id", "layer", "matrix", "neuron"]).abs_cosine.idxmax()]
    return best.merge(prompts[["case_id", "position", "segment"]], on=["case_id", "position"], validate="many_to_one")


def fig7_alignment(updates: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean max |cos| between the most-changed neuron's change and any spanning vector,
    and its |cos| with the last token's vector, per layer."""
    best = _best_alignment(updates[updates.norm_order == 0], prompts)
    last = prompts[prompts.is_last][["case_id", "position"]]
    with_last = updates[updates.norm_order == 0].merge(last, on=["case_id", "position"]).dropna(subset=["cosine"])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for matrix, group in best.groupby("matrix"):
        line = ax.plot(group.groupby("layer").abs_cosine.mean(), marker="o", markersize=3,
                       label=f"{MATRIX_LABELS.get(matrix, matrix)}: max |cos|")[0]
        last_cos = with_last[with_last.matrix == matrix].groupby("layer").cosine.apply(lambda c: c.abs().mean())
        ax.plot(last_cos, linestyle="--", color=line.get_color(), label=f"{matrix}: |cos| with last token")
    ax.set_ylim(0, 1.02)
    finish_line_axes(ax, xlabel="layer", ylabel="|cosine|",
                     title="Most-changed neuron's update vs the spanning set (one SGD step)")
    return fig


def fig8_aligned_segment(updates: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Share of top-k neuron changes whose best-aligned spanning vector lies in each segment."""
    best = _best_alignment(updates, prompts)
    matrices = sorted(best.matrix.unique())
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 3.8), squeeze=False, sharey=True)
    order = [s for s in (*reversed(PRIMARY_ORDER), "prefix") if s in set(best.segment)]
    for ax, matrix in zip(axes[0], matrices):
        shares = pd.crosstab(best[best.matrix == matrix].layer, best[best.matrix == matrix].segment, normalize="index")
        shares = shares.reindex(columns=order, fill_value=0)
        ax.stackplot(shares.index, shares.T.values, labels=[SEGMENT_LABELS.get(s, s) for s in order], alpha=0.85)
        ax.set_title(MATRIX_LABELS.get(matrix, matrix), fontsize=9)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("share of top neuron changes")
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return fig


def fig9_update_target_rank(updates: pd.DataFrame) -> plt.Figure:
    """Target rank / (V-1) in the logit lens of the top neurons' changes, per layer."""
    per_neuron = updates.drop_duplicates(["case_id", "layer", "matrix", "neuron"])
    per_neuron = per_neuron[per_neuron.target_rank_of_update >= 0]
    vocab_size = int(updates.vocab_size.iloc[0])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for matrix, group in per_neuron.groupby("matrix"):
        ranks = group.groupby("layer").target_rank_of_update.median()
        ax.plot(ranks.index, ranks.values, marker="o", markersize=3, label=MATRIX_LABELS.get(matrix, matrix))
    ax.axhline(vocab_size - 1, color="black", linestyle=":", linewidth=1, label="least probable (V-1)")
    finish_line_axes(ax, xlabel="layer", ylabel="median target rank (0 = most probable)",
                     title="Where the top neurons' changes put target_new in the logit lens")
    return fig
