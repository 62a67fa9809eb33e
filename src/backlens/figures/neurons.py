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
from backlens.figures.common import MATRIX_COLOURS, SEGMENT_COLOURS, finish_line_axes, model_name

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
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for matrix, group in best.groupby("matrix"):
        line = ax.plot(group.groupby("layer").abs_cosine.mean(), marker="o", markersize=3, color=MATRIX_COLOURS.get(matrix),
                       label=f"{MATRIX_LABELS.get(matrix, matrix)}: max |cos|")[0]
        last_cos = with_last[with_last.matrix == matrix].groupby("layer").cosine.apply(lambda c: c.abs().mean())
        ax.plot(last_cos, linestyle="--", color=line.get_color(), label=f"{matrix}: |cos| with last token")
    ax.set_ylim(0, 1.02)
    finish_line_axes(ax, xlabel="layer", ylabel="|cosine| (mean over prompts)",
                     title=f"{model_name(updates)}: most-changed neuron's update vs the spanning set (one SGD step)")
    return fig


def fig8_aligned_segment(updates: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Share of top-k neuron changes whose best-aligned spanning vector lies in each segment."""
    best = _best_alignment(updates, prompts)
    matrices = sorted(best.matrix.unique())
    n_columns = min(2, len(matrices))
    n_rows = -(-len(matrices) // n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(4.4 * n_columns, 3.2 * n_rows + 0.6), squeeze=False,
                             sharey=True, layout="constrained")
    order = [s for s in (*reversed(PRIMARY_ORDER), "prefix") if s in set(best.segment)]
    labels = [SEGMENT_LABELS.get(s, "tokens before the subject") for s in order]
    for ax, matrix in zip(axes.flat, matrices):
        shares = pd.crosstab(best[best.matrix == matrix].layer, best[best.matrix == matrix].segment, normalize="index")
        shares = shares.reindex(columns=order, fill_value=0)
        ax.stackplot(shares.index, shares.T.values, labels=labels, colors=[SEGMENT_COLOURS[s] for s in order])
        ax.set_title(MATRIX_LABELS.get(matrix, matrix))
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of top-k neuron changes")
    handles, names = axes.flat[0].get_legend_handles_labels()
    spare = axes.flat[len(matrices):]
    for ax in spare:
        ax.axis("off")
    if len(spare):  # the legend fills the empty panel, clear of every title
        spare[0].legend(handles[::-1], names[::-1], loc="center", frameon=False, title="best-aligned segment")
    else:
        fig.legend(handles[::-1], names[::-1], loc="outside right upper", frameon=False, title="best-aligned segment")
    fig.suptitle(f"{model_name(updates)}: where the spanning vector best aligned with each top-{updates.norm_order.max() + 1} "
                 "neuron change sits")
    return fig


def signed_update_ranks(updates: pd.DataFrame) -> pd.DataFrame:
    """One row per top-k FF2 neuron change with its sign-aware target rank / (V-1) (``relative``):
    the rank of target_new in LL(sign(a_j at the last token) x change_j), the direction the step
    moves that token's output. 0 = the step promotes the target most."""
    per_neuron = updates.drop_duplicates(["case_id", "layer", "matrix", "neuron"])
    per_neuron = per_neuron[(per_neuron.matrix == "ff2") & (per_neuron.target_rank_of_signed_update >= 0)]
    return per_neuron.assign(relative=per_neuron.target_rank_of_signed_update / (per_neuron.vocab_size - 1))


def fig9_update_target_rank(updates: pd.DataFrame) -> plt.Figure:
    """Sign-aware target rank / (V-1) of the top FF2 neurons' changes per layer: median and IQR,
    and the share of changes that put the target in the top 1% (left), beside the unsigned rank's
    two-peaked distribution (right), which is why the unsigned median means nothing here."""
    signed = signed_update_ranks(updates)
    unsigned = signed.assign(relative=signed.target_rank_of_update / (signed.vocab_size - 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    stats = signed.groupby("layer").relative.agg(median="median", q25=lambda s: s.quantile(0.25),
                                                 q75=lambda s: s.quantile(0.75), top=lambda s: (s <= 0.01).mean())
    colour = MATRIX_COLOURS["ff2"]
    left.plot(stats.index, stats["median"], marker="o", markersize=3, color=colour, label="median (band: IQR)")
    left.fill_between(stats.index, stats.q25, stats.q75, color=colour, alpha=0.15)
    left.plot(stats.index, 1 - stats["top"], color="black", linestyle="--", linewidth=1,
              label="1 - share with target in top 1%")
    left.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (V/2)")
    left.set_ylim(-0.02, 1.02)
    finish_line_axes(left, xlabel="layer", ylabel="target rank / (V-1), sign-aware",
                     title="LL(sign(a_last) x value change): 0 = step promotes target", legend=False)
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    bins = [i / 20 for i in range(21)]
    right.hist(unsigned.relative, bins=bins, color="#bbbbbb", label="unsigned change")
    right.hist(signed.relative, bins=bins, histtype="step", color=colour, linewidth=1.5, label="sign-aware")
    finish_line_axes(right, xlabel="target rank / (V-1)", ylabel="top-k FF2 neuron changes (all layers)",
                     title="Unsigned ranks pile up at both ends", legend=False)
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.suptitle(f"{model_name(updates)}: where one SGD step's top FF2 value-vector changes put target_new "
                 f"({signed.case_id.nunique()} prompts, top {updates.norm_order.max() + 1} neurons per layer)")
    return fig
