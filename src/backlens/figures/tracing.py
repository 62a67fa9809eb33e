"""Causal-tracing figures (ROME Figs. 1-3 style), drawn from the tracing tables only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from backlens.analysis.aggregate import SEGMENT_LABELS
from backlens.data.segments import SEGMENTS

KIND_TITLES = {
    "residual": "single restored layer (residual stream)",
    "mlp": "restored MLP outputs (window)",
    "attention": "restored attention outputs (window)",
    "residual_mlp_severed": "residual, MLP severed",
    "residual_attention_severed": "residual, attention severed",
}
KIND_COLOURS = {
    "residual": "Purples",
    "mlp": "Greens",
    "attention": "Reds",
}
HEATMAP_KINDS = ("residual", "mlp", "attention")


def _kinds_present(table: pd.DataFrame, kinds: tuple[str, ...]) -> list[str]:
    present = set(table["kind"])
    return [kind for kind in kinds if kind in present]


def tracing_examples(facts: pd.DataFrame, tokens: pd.DataFrame, effects: pd.DataFrame, n_examples: int) -> plt.Figure:
    """Per-fact heatmaps of P(answer) after restoring each (token, layer), one row per fact."""
    chosen = facts.head(n_examples)
    kinds = _kinds_present(effects, HEATMAP_KINDS)
    row_height = 0.32 * tokens.groupby("known_id").size().max()
    fig, axes = plt.subplots(
        len(chosen), len(kinds), figsize=(4.2 * len(kinds), row_height * len(chosen) + 1.5), squeeze=False
    )
    for row, fact in zip(axes, chosen.itertuples()):
        fact_tokens = tokens[tokens.known_id == fact.known_id].sort_values("token_index")
        is_subject = fact_tokens.token_index.between(fact.subject_start, fact.subject_end - 1)
        labels = [f"{t!r}*" if s else repr(t) for t, s in zip(fact_tokens.token, is_subject)]
        for ax, kind in zip(row, kinds):
            cells = effects[(effects.known_id == fact.known_id) & (effects.kind == kind)]
            grid = cells.pivot(index="token_index", columns="layer", values="p_restored").sort_index()
            image = ax.imshow(grid.values, aspect="auto", cmap=KIND_COLOURS[kind], vmin=fact.p_corrupted)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("layer", fontsize=8)
            ax.set_title(f"{KIND_TITLES[kind]}\n{fact.prompt!r} -> {fact.answer_token!r}", fontsize=8)
            colorbar = plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            colorbar.set_label(f"P({fact.answer_token.strip()}) restored", fontsize=7)
            colorbar.ax.tick_params(labelsize=6)
    fig.suptitle(
        "Causal traces of single facts (* = subject token, noised); colour floor = P with corrupted subject", fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def tracing_avg(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """Average indirect effect per ROME segment and layer, one heatmap per restored kind."""
    kinds = _kinds_present(averages, HEATMAP_KINDS)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        table = averages[averages.kind == kind]
        grid = table.pivot(index="segment", columns="layer", values="mean").reindex(list(SEGMENTS))
        image = ax.imshow(grid.values, aspect="auto", cmap=KIND_COLOURS[kind])
        ax.set_yticks(range(len(SEGMENTS)), [SEGMENT_LABELS[s] for s in SEGMENTS], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"average indirect effect: {KIND_TITLES[kind]}", fontsize=8)
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.suptitle(_setting(summary), fontsize=8)
    fig.tight_layout()
    return fig


def tracing_avg_lines(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """Average indirect effect per layer for each segment, with 95% bands over facts."""
    kinds = _kinds_present(averages, HEATMAP_KINDS)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, kind in zip(axes[0], kinds):
        for index, segment in enumerate(SEGMENTS):
            line = averages[(averages.kind == kind) & (averages.segment == segment)].sort_values("layer")
            if line.empty:
                continue
            ax.plot(line.layer, line["mean"], color=colours(index), label=SEGMENT_LABELS[segment], linewidth=1.2)
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=colours(index), alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(KIND_TITLES[kind], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("average indirect effect", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(_setting(summary) + "; bands: 95% normal interval over facts", fontsize=8)
    fig.tight_layout()
    return fig


def tracing_severed(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """At the last subject token: restoring the residual stream with and without severed MLP / attention."""
    kinds = _kinds_present(averages, ("residual", "residual_mlp_severed", "residual_attention_severed"))
    at_subject = averages[averages.segment == "last_subject"]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    colours = {"residual": "tab:purple", "residual_mlp_severed": "tab:green", "residual_attention_severed": "tab:red"}
    for kind in kinds:
        line = at_subject[at_subject.kind == kind].sort_values("layer")
        ax.plot(line.layer, line["mean"], color=colours[kind], label=KIND_TITLES[kind], linewidth=1.4)
        ax.fill_between(line.layer, line.ci_low, line.ci_high, color=colours[kind], alpha=0.2, linewidth=0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("layer of the restored residual state", fontsize=8)
    ax.set_ylabel("average indirect effect at last subject token", fontsize=8)
    ax.set_title("Severing later MLP / attention at the last subject token", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.text(0.01, -0.04, _setting(summary), fontsize=7)
    fig.tight_layout()
    return fig


def _setting(summary: dict) -> str:
    chosen = "facts answered correctly" if summary.get("only_correct", True) else "facts (correct or not)"
    return (
        f"{summary['model']}: {summary['n_traced']} {chosen} (of {summary['n_correct']} correct / "
        f"{summary['n_screened']} known facts), {summary['noise_samples']} noise samples, "
        f"noise std {summary['noise_std']:.3g}, window {summary['window']}"
    )


def peak_cells(averages: pd.DataFrame) -> pd.DataFrame:
    """Per kind, the (segment, layer) with the largest average indirect effect."""
    best = averages.loc[averages.groupby("kind")["mean"].idxmax()]
    return best[["kind", "segment", "layer", "mean", "ci_low", "ci_high", "n_facts"]].reset_index(drop=True)



