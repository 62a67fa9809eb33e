"""Figures over several runs (a sweep or a list of models), each run labelled by what differs.

Across models (the paper's Figs 18-21) layers sit on one relative-depth axis, layer / n_layers
(``backlens.analysis.aggregate.relative_depth``), one line per run in the run's colour
(``backlens.figures.common.run_colour``).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from backlens.analysis.aggregate import DEPTH_LABEL, rank_equals_length_share, relative_depth, with_segment_flags
from backlens.figures.backward_lens import MODULE_LABELS
from backlens.figures.common import finish_line_axes, legend_outside, run_line_style
from backlens.figures.editing import PANELS

# The paper's cross-model figures as README gallery images (docs/gallery/<name>.png, rule
# gallery_comparison, written when the docs' runs span several models) -> the comparison kind
# (figures/compare/<sweep>/<kind>.pdf) each copies.
CROSS_MODEL_GALLERY = {"compare_fig18": "fig6", "compare_fig19_21": "fig3"}
# Fig 3's panels: one per FF matrix; GPT-2's FF1 (c_fc) and a gated MLP's gate_proj share one.
FIG3_PANELS = {"ff1": "ff1", "ff1_gate": "ff1", "ff1_up": "ff1_up", "ff2": "ff2"}


def compare_fig3(ranks_per_run: Sequence[pd.DataFrame], labels: Sequence[str]) -> plt.Figure:
    """Fig 3 across runs (paper Figs 19-21): % of prompts whose gradient rank equals the prompt length
    P by relative depth, one panel per FF matrix and one line per run."""
    shares = [rank_equals_length_share(ranks.assign(model=label)) for ranks, label in zip(ranks_per_run, labels)]
    matrices = list(dict.fromkeys(m for share in shares for m in share.matrix))
    panels = list(dict.fromkeys(FIG3_PANELS.get(m, m) for m in sorted(matrices, key=_matrix_order)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels) + 1.6, 3.2), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes[0], panels):
        names = [m for m in matrices if FIG3_PANELS.get(m, m) == panel]
        for index, (share, label, ranks) in enumerate(zip(shares, labels, ranks_per_run)):
            curve = share[share.matrix.isin(names)].sort_values("layer")
            if len(curve):
                ax.plot(curve.depth, 100 * curve.full, **run_line_style(index, len(labels)),
                        label=f"{label} ({ranks.case_id.nunique()} prompts)")
        ax.set_ylim(-3, 103)
        ax.set_xlim(-0.03, 1.0)
        finish_line_axes(ax, xlabel=DEPTH_LABEL, ylabel="% of prompts with rank = P" if panel == panels[0] else "",
                         title=" / ".join(MODULE_LABELS.get(m, m) for m in names), legend=False)
    legend_outside(axes[0][-1])
    fig.suptitle("Gradient rank = prompt length P across runs (in the last layer the rank is 1)")
    return fig


def _matrix_order(matrix: str) -> int:
    return list(FIG3_PANELS).index(matrix) if matrix in FIG3_PANELS else len(FIG3_PANELS)


def last_token_relative_ranks(target_ranks: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Per layer: its relative depth and the median and quartiles over prompts of the target's rank in
    LL(delta) at the last token, as a fraction of V-1 (0 = most probable, 1 = least probable), so
    models with different vocabularies share one axis."""
    usable = with_segment_flags(target_ranks[target_ranks["rank"] >= 0], prompts)
    last = usable[usable["is_last"]]
    relative = (last["rank"] / (last["vocab_size"] - 1)).groupby(last["layer"])
    stats = pd.DataFrame({"median": relative.median(), "q25": relative.quantile(0.25), "q75": relative.quantile(0.75)})
    n_layers = int(target_ranks["layer"].max()) + 1
    return stats.rename_axis("layer").reset_index().assign(depth=lambda t: relative_depth(t.layer, n_layers))


def compare_fig6(target_ranks_per_run: Sequence[pd.DataFrame], prompts_per_run: Sequence[pd.DataFrame],
                 labels: Sequence[str]) -> plt.Figure:
    """Fig 6 across runs (paper Fig 18): the median rank of the target in LL(delta) at the last token,
    as a fraction of V-1, by relative depth, one line per run (band: interquartile range over prompts)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for index, (ranks, prompts, label) in enumerate(zip(target_ranks_per_run, prompts_per_run, labels)):
        stats = last_token_relative_ranks(ranks, prompts)
        style = run_line_style(index, len(labels))
        vocab = int(ranks.vocab_size.iloc[0])
        n_prompts = ranks.case_id.nunique()
        ax.plot(stats.depth, stats["median"], **style, label=f"{label} (V = {vocab}, {n_prompts} prompts)")
        ax.fill_between(stats.depth, stats.q25, stats.q75, color=style["color"], alpha=0.15, linewidth=0)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="least probable (V-1)")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(-0.03, 1.0)
    finish_line_axes(ax, xlabel=DEPTH_LABEL, ylabel="target rank / (V-1) in LL(delta), last token",
                     title="Target rank in the FF2 VJP's logit lens across runs (median, band = IQR)")
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
