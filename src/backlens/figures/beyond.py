"""Figures of the issue-16 analyses, drawn from their tidy tables only: the attention projections in
the style of the paper's Figs 3, 5 and 6, and the FT trace as layer x step heatmaps."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from backlens.analysis.aggregate import DEPTH_LABEL, relative_depth, segment_means
from backlens.figures.backward_lens import NORM_LABEL, _segment_heatmap, fig6_target_ranks
from backlens.figures.common import colourbar, finish_line_axes, model_name

PROJECTION_LABELS = {"q": "W_Q", "k": "W_K", "v": "W_V", "o": "W_O"}
PROJECTION_STYLES = {"q": ("#1b9e77", "-"), "k": ("#7570b3", "--"), "v": ("#e7298a", "-."), "o": ("#d95f02", ":")}


def attention_rank_shares(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per (projection, layer): the layer's ``relative_depth`` and the shares of prompts whose gradient
    rank is full (min(P, d_out): a grouped-query K or V can have fewer units than tokens) or one less."""
    cap = np.minimum(ranks.n_tokens, ranks.d_out)
    table = ranks.assign(full=ranks["rank"] == cap, one_less=ranks["rank"] == cap - 1,
                         depth=relative_depth(ranks.layer, ranks.layer.max() + 1))
    return table.groupby(["projection", "layer", "depth"], as_index=False)[["full", "one_less"]].mean()


def attention_rank_figure(ranks: pd.DataFrame) -> plt.Figure:
    """% of prompts whose projection gradient has full rank min(P, d_out), and one less, per depth.
    Projections with identical curves are named together, so no line hides another unseen."""
    shares = attention_rank_shares(ranks)
    names = [name for name in PROJECTION_LABELS if name in set(shares.projection)]
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.6), sharey=True, layout="constrained")
    panels = ((axes[0], "full", "rank = min(P, d_out)"), (axes[1], "one_less", "rank = min(P, d_out) - 1"))
    for ax, column, what in panels:
        curves = {name: shares[shares.projection == name].set_index("depth")[column] for name in names}
        shown: list[list[str]] = []
        for name in names:
            same = next((group for group in shown if curves[group[0]].equals(curves[name])), None)
            if same is None:
                shown.append([name])
            else:
                same.append(name)
        for group in shown:
            colour, style = PROJECTION_STYLES.get(group[0], (None, "-"))
            label = " = ".join(PROJECTION_LABELS[n] for n in group) + (" (identical)" if len(group) > 1 else "")
            curve = curves[group[0]]
            ax.plot(curve.index, 100 * curve.values, marker="o", markersize=3, color=colour, linestyle=style,
                    label=label)
        ax.set_ylim(-3, 103)
        finish_line_axes(ax, xlabel=DEPTH_LABEL, ylabel="% of prompts", title=what)
    fig.suptitle(f"{model_name(ranks)}: rank of the attention projections' gradients ({ranks.case_id.nunique()} "
                 "prompts, P = prompt length)")
    return fig


def attention_norm_figure(norms: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean VJP norm per layer and ROME segment, one heatmap per projection."""
    names = [name for name in PROJECTION_LABELS if name in set(norms.projection)]
    fig, axes = plt.subplots(2, 2, figsize=(10.4, 10.0), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        means = segment_means(norms[norms.projection == name], prompts, "vjp_norm", ["layer"])
        _segment_heatmap(ax, means, f"{PROJECTION_LABELS[name]} output", "VJP norm (log)")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{model_name(norms)}: attention projection VJP norm, {NORM_LABEL} (mean over "
                 f"{norms.case_id.nunique()} prompts)\nlog colour scale, one per panel; grey: exactly 0")
    return fig


def attention_target_rank_figure(target_ranks: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Fig 6 for W_O: rank of target_new in LL(VJP of the attention output) per segment and layer."""
    return fig6_target_ranks(target_ranks, prompts, vector="W_O's VJP (attention output)", symbol="W_O VJP")


# (column, colourbar label, colour map, transform) of each FT-trace panel: values are means over cases.
TRACE_PANELS = (
    ("loss_after", "loss after the step (nats)", "viridis_r", None),
    ("target_prob_after", "P(target) after the step", "viridis", None),
    ("log_rank_after", "log10(1 + target rank in the output)", "viridis_r", None),
    ("rank_over_p", "rank of the accumulated update / P", "magma", "from_zero"),
    ("cosine_first", "cosine of the step's update with step 1's", "RdBu_r", (-1.0, 1.0)),
    ("neg_vjp_rank_share", "target rank in LL(-delta_last) / (V-1)", "viridis_r", (0.0, 1.0)),
)


def ft_trace_figure(trace: pd.DataFrame) -> plt.Figure:
    """Layer x step heatmaps, means over the traced cases."""
    table = trace.assign(
        log_rank_after=np.log10(1 + trace.target_rank_after.astype(float)),
        rank_over_p=trace.accumulated_rank / trace.n_tokens,
        neg_vjp_rank_share=trace.target_rank_neg_vjp.where(trace.target_rank_neg_vjp >= 0) / (trace.vocab_size - 1),
    )
    means = table.groupby(["layer", "step"]).mean(numeric_only=True)
    layers = sorted(table.layer.unique())
    steps = sorted(table.step.unique())
    fig, axes = plt.subplots(3, 2, figsize=(10.4, 2.0 + 2.4 * 3), squeeze=False, layout="constrained")
    for ax, (column, label, cmap, limits) in zip(axes.flat, TRACE_PANELS):
        grid = means[column].unstack("step").reindex(index=layers, columns=steps).to_numpy(dtype=float)
        if limits == "from_zero":  # rank / P: 1 is the GD bound, Adam may exceed it
            limits = (0.0, max(1.0, float(np.nanmax(grid))))
        vmin, vmax = limits if limits else (np.nanmin(grid), np.nanmax(grid))
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(layers) - 0.5))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("edited FF2 layer")
        ax.set_title(label)
        colourbar(image, ax, label)
    first = trace.iloc[0]
    fig.suptitle(f"{model_name(trace)}: FF2 edit by {first.optimizer} (lr {first.lr:g}), "
                 f"mean over {trace.case_id.nunique()} CounterFact cases")
    return fig
