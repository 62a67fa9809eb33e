"""Figures 3, 5, 6 and 16 of the paper, drawn from result tables only."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
import numpy as np
import pandas as pd

from backlens.analysis.aggregate import (
    DEPTH_LABEL, SEGMENT_LABELS, rank_equals_length_share, segment_means, with_segment_flags,
)
from backlens.data.segments import SEGMENTS
from backlens.figures.common import (
    MATRIX_COLOURS, MATRIX_STYLES, SEGMENT_COLOURS, colourbar, finish_line_axes, model_name,
)

NORM_LABEL = "mean L2 norm of the VJP dLoss/d(output)"
MODULE_LABELS = {"attention": "attention output", "ff1": "FF1 (c_fc)", "ff1_gate": "FF1 gate_proj",
                 "ff1_up": "FF1 up_proj", "ff2": "FF2 = MLP output"}


def fig3_rank_equals_length(ranks: pd.DataFrame) -> plt.Figure:
    """% of prompts whose FF gradient rank equals the prompt length P, per normalized layer.
    Matrices with identical curves (every matrix at 100% below the last layer) are drawn with
    different line styles and named together in the legend, so no line hides another unseen."""
    share = rank_equals_length_share(ranks)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    curves = {key: 100 * group.set_index("depth").full for key, group in share.groupby(["model", "matrix"])}
    shown: list[tuple[tuple[str, str], list[str]]] = []
    for key, curve in curves.items():
        same = next((entry for entry in shown if entry[0][0] == key[0] and curves[entry[0]].equals(curve)), None)
        if same is None:
            shown.append((key, [key[1]]))
        else:
            same[1].append(key[1])
    multi_model = share.model.nunique() > 1
    for (model, matrix), matrices in shown:
        label = " = ".join(matrices) + (" (identical)" if len(matrices) > 1 else "")
        ax.plot(curves[(model, matrix)].index, curves[(model, matrix)].values, marker="o", markersize=3,
                color=None if multi_model else MATRIX_COLOURS.get(matrix), linestyle=MATRIX_STYLES.get(matrix, "-"),
                label=f"{model}: {label}" if multi_model else label)
    ax.set_ylim(-3, 103)
    finish_line_axes(ax, xlabel=DEPTH_LABEL, ylabel="% of prompts with rank = P",
                     title=f"{model_name(ranks)}: gradient rank = prompt length P ({ranks.case_id.nunique()} prompts)")
    return fig


def _segment_heatmap(ax: plt.Axes, means: pd.DataFrame, title: str, label: str = NORM_LABEL + " (log scale; grey: 0)") -> None:
    """Log colour scale: layer 0's norms are 10-100x the rest (attention output: ~10 against ~0.1),
    which on a linear scale leaves every other layer white. Exact zeros (the last layer before the
    last token, where the loss cannot reach) are grey."""
    grid = means.pivot(index="layer", columns="segment", values="mean").reindex(columns=list(SEGMENTS))
    values = grid.to_numpy(dtype=float)
    positive = values[values > 0]
    top = float(positive.max()) if positive.size else 1.0
    bottom = max(float(positive.min()), top / 1e4) if positive.size else top / 10
    cmap = plt.get_cmap("Purples").with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_less_equal(values, 0), aspect="auto", cmap=cmap, origin="lower",
                      norm=LogNorm(vmin=bottom, vmax=top))
    ax.set_xticks(range(len(SEGMENTS)), [SEGMENT_LABELS[s] for s in SEGMENTS], rotation=40, ha="right")
    ax.set_ylabel("layer")
    ax.set_title(title)
    colourbar(image, ax, label)


def fig5_segment_norms(norms: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean ||delta_i|| (FF2 VJP) per layer and ROME segment."""
    means = segment_means(norms[norms.module == "ff2"], prompts, "norm", ["layer"])
    fig, ax = plt.subplots(figsize=(4.6, 5.4))
    _segment_heatmap(ax, means, f"{model_name(norms)}: FF2 VJP norm\n(mean over {norms.case_id.nunique()} prompts)")
    return fig


def fig16_submodule_norms(norms: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean VJP norm per layer and segment for every sub-module (attention, FF1, FF2); two
    panels per row, each with its own labelled colourbar and room for it."""
    modules = sorted(norms.module.unique(), key=lambda m: (m != "attention", m))
    n_columns = min(2, len(modules))
    n_rows = -(-len(modules) // n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(5.2 * n_columns, 5.0 * n_rows), squeeze=False,
                             layout="constrained")
    for ax, module in zip(axes.flat, modules):
        means = segment_means(norms[norms.module == module], prompts, "norm", ["layer"])
        # The long quantity name goes once into the title: beside four colourbars it was too small to read.
        _segment_heatmap(ax, means, MODULE_LABELS.get(module, module), "VJP norm (log)")
    for ax in axes.flat[len(modules):]:
        ax.set_visible(False)
    fig.suptitle(f"{model_name(norms)}: VJP norm per sub-module, {NORM_LABEL} (mean over {norms.case_id.nunique()} "
                 "prompts)\nlog colour scale, one per panel; grey: exactly 0")
    return fig


def fig6_target_ranks(target_ranks: pd.DataFrame, prompts: pd.DataFrame, *, vector: str = "the FF2 VJP",
                      symbol: str = "delta") -> plt.Figure:
    """Rank of target_new's first token in LL(delta_i) per segment and layer (mean, IQR band), and the
    last token's median dashed: the scorecard counts layers by that median, so the figure draws it.
    ``vector`` / ``symbol`` name the VJP in the title and axis (another site's, e.g. W_O's)."""
    usable = target_ranks[target_ranks["rank"] >= 0]
    vocab_size = int(target_ranks.vocab_size.iloc[0])
    merged = with_segment_flags(usable, prompts)
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    for segment in SEGMENTS:
        per_prompt = merged[merged[f"is_{segment}"]].groupby(["layer", "case_id"])["rank"].mean()
        stats = per_prompt.groupby("layer").agg(["mean", "median", lambda s: s.quantile(0.25), lambda s: s.quantile(0.75)])
        stats.columns = ["mean", "median", "q25", "q75"]
        colour = SEGMENT_COLOURS[segment]
        width = 2.0 if segment == "last" else 1.2
        ax.plot(stats.index, stats["mean"], label=SEGMENT_LABELS[segment], color=colour, linewidth=width)
        ax.fill_between(stats.index, stats.q25, stats.q75, color=colour, alpha=0.12)
        if segment == "last":
            ax.plot(stats.index, stats["median"], label=f"{SEGMENT_LABELS[segment]} (median)", color=colour,
                    linewidth=1.2, linestyle="--")
    ax.axhline(vocab_size - 1, color="black", linestyle=":", linewidth=1, label="least probable (V-1)")
    ax.axhline((vocab_size - 1) / 2, color="grey", linestyle="--", linewidth=1, label="chance (V/2)")
    ax.set_ylim(0, 1.03 * vocab_size)
    finish_line_axes(ax, xlabel="layer", ylabel=f"rank of target in LL({symbol})",
                     title=f"{model_name(target_ranks)}: target rank in {vector}'s logit lens "
                           f"(mean, band = IQR, dashed = median; 0 = most probable)")
    return fig


def fig22_token_similarity(similarity: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean cosine similarity of FF2 VJPs between token pairs within a layer, split by
    whether the pair includes the last token."""
    tokens = similarity[similarity.kind == "tokens"].dropna(subset=["cosine"])
    last = prompts[prompts.is_last][["case_id", "position"]].rename(columns={"position": "last_position"})
    tokens = tokens.merge(last, on="case_id")
    tokens = tokens.assign(pair=np.where(tokens.position_b == tokens.last_position, "with last token", "other pairs"))
    fig, ax = plt.subplots(figsize=(6.8, 3.4))
    colours = {"with last token": SEGMENT_COLOURS["last"], "other pairs": SEGMENT_COLOURS["further"]}
    for pair, group in tokens.groupby("pair"):
        per_prompt = group.groupby(["layer_a", "case_id"]).cosine.mean().groupby("layer_a")
        ax.plot(per_prompt.mean().index, per_prompt.mean().values, marker="o", markersize=3, label=pair,
                color=colours.get(pair))
    finish_line_axes(ax, xlabel="layer", ylabel="mean cosine between token VJPs",
                     title=f"{model_name(similarity)}: similarity of FF2 VJPs of two tokens (same layer)")
    return fig


def fig23_layer_similarity(similarity: pd.DataFrame) -> plt.Figure:
    """Layer x layer mean cosine similarity of the last token's FF2 VJPs."""
    layers = similarity[similarity.kind == "layers"].dropna(subset=["cosine"])
    means = layers.groupby(["layer_a", "layer_b"]).cosine.mean().reset_index()
    n_layers = int(max(layers.layer_a.max(), layers.layer_b.max())) + 1
    grid = np.full((n_layers, n_layers), np.nan)
    np.fill_diagonal(grid, 1.0)
    for row in means.itertuples():
        grid[row.layer_a, row.layer_b] = grid[row.layer_b, row.layer_a] = row.cosine
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    # Sequential map when every mean cosine is >= 0 (the usual case); diverging around 0 otherwise.
    if np.nanmin(grid) >= 0:
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, origin="lower")
    else:
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(f"{model_name(similarity)}: cosine of the last token's\nFF2 VJPs in two layers "
                 f"(mean over {layers.case_id.nunique()} prompts)")
    colourbar(image, ax, "mean cosine similarity")
    return fig
