"""Figures 3, 5, 6 and 16 of the paper, drawn from result tables only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from backlens.analysis.aggregate import SEGMENT_LABELS, rank_equals_length_share, segment_means, with_segment_flags
from backlens.data.segments import SEGMENTS
from backlens.figures.common import finish_line_axes


def fig3_rank_equals_length(ranks: pd.DataFrame) -> plt.Figure:
    """% of prompts whose FF gradient rank equals the prompt length P, per normalized layer."""
    share = rank_equals_length_share(ranks)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (model, matrix), group in share.groupby(["model", "matrix"]):
        ax.plot(group.depth, 100 * group.full, marker="o", markersize=3, label=f"{model} {matrix}")
    ax.set_ylim(-3, 103)
    finish_line_axes(ax, xlabel="layer index / number of layers", ylabel="% of prompts with rank = P",
                     title=f"Gradient rank equals prompt length (n={ranks.case_id.nunique()} prompts)")
    return fig


def _segment_heatmap(ax: plt.Axes, means: pd.DataFrame, title: str) -> None:
    grid = means.pivot(index="layer", columns="segment", values="mean").reindex(columns=list(SEGMENTS))
    image = ax.imshow(grid.values, aspect="auto", cmap="Purples", origin="lower")
    ax.set_xticks(range(len(SEGMENTS)), [SEGMENT_LABELS[s] for s in SEGMENTS], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def fig5_segment_norms(norms: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean ||delta_i|| (FF2 VJP) per layer and ROME segment."""
    means = segment_means(norms[norms.module == "ff2"], prompts, "norm", ["layer"])
    fig, ax = plt.subplots(figsize=(4.8, 5.2))
    _segment_heatmap(ax, means, f"FF2 VJP norm, mean over {norms.case_id.nunique()} prompts")
    return fig


def fig16_submodule_norms(norms: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean VJP norm per layer and segment for every sub-module (attention, FF1, FF2)."""
    modules = sorted(norms.module.unique(), key=lambda m: (m != "attention", m))
    fig, axes = plt.subplots(1, len(modules), figsize=(4.2 * len(modules), 5.2), squeeze=False)
    for ax, module in zip(axes[0], modules):
        means = segment_means(norms[norms.module == module], prompts, "norm", ["layer"])
        _segment_heatmap(ax, means, f"{module} output VJP norm")
    return fig


def fig6_target_ranks(target_ranks: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Rank of target_new's first token in LL(delta_i) per segment and layer (mean, IQR band)."""
    usable = target_ranks[target_ranks["rank"] >= 0]
    vocab_size = int(target_ranks.vocab_size.iloc[0])
    merged = with_segment_flags(usable, prompts)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for segment in SEGMENTS:
        per_prompt = merged[merged[f"is_{segment}"]].groupby(["layer", "case_id"])["rank"].mean()
        stats = per_prompt.groupby("layer").agg(["mean", lambda s: s.quantile(0.25), lambda s: s.quantile(0.75)])
        stats.columns = ["mean", "q25", "q75"]
        line = ax.plot(stats.index, stats["mean"], label=SEGMENT_LABELS[segment])[0]
        ax.fill_between(stats.index, stats.q25, stats.q75, color=line.get_color(), alpha=0.12)
    ax.axhline(vocab_size - 1, color="black", linestyle=":", linewidth=1, label="least probable (V-1)")
    finish_line_axes(ax, xlabel="layer", ylabel="rank of target in LL(delta)",
                     title="Target rank in the FF2 VJP's logit lens (0 = most probable)")
    return fig


def fig22_token_similarity(similarity: pd.DataFrame, prompts: pd.DataFrame) -> plt.Figure:
    """Mean cosine similarity of FF2 VJPs between token pairs within a layer, split by
    whether the pair includes the last token."""
    tokens = similarity[similarity.kind == "tokens"].dropna(subset=["cosine"])
    last = prompts[prompts.is_last][["case_id", "position"]].rename(columns={"position": "last_position"})
    tokens = tokens.merge(last, on="case_id")
    tokens = tokens.assign(pair=np.where(tokens.position_b == tokens.last_position, "with last token", "other pairs"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for pair, group in tokens.groupby("pair"):
        per_prompt = group.groupby(["layer_a", "case_id"]).cosine.mean().groupby("layer_a")
        ax.plot(per_prompt.mean().index, per_prompt.mean().values, marker="o", markersize=3, label=pair)
    finish_line_axes(ax, xlabel="layer", ylabel="mean cosine between token VJPs",
                     title="Similarity of FF2 VJPs of different tokens (same layer)")
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
    fig, ax = plt.subplots(figsize=(5, 4.4))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title("Cosine of the last token's FF2 VJPs across layers", fontsize=9)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig
