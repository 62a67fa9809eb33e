"""Causal-tracing figures (ROME Figs. 1-3 style), drawn from the tracing tables only."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.cm import ScalarMappable
import numpy as np
import pandas as pd

from backlens.analysis.aggregate import SEGMENT_LABELS
from backlens.data.segments import SEGMENTS
from backlens.figures.common import SEGMENT_COLOURS, colourbar, legend_outside, model_name

KIND_SHORT = {"residual": "residual stream", "mlp": "MLP outputs (window)", "attention": "attention outputs (window)"}
# Single-fact traces show P(answer) (from the corrupted run's P up), so their maps are sequential.
EXAMPLE_COLOURS = {"residual": "Purples", "mlp": "Greens", "attention": "Reds"}
KIND_TITLES = {
    "residual": "single restored layer (residual stream)",
    "mlp": "restored MLP outputs (window)",
    "attention": "restored attention outputs (window)",
    "residual_mlp_severed": "residual, MLP severed",
    "residual_attention_severed": "residual, attention severed",
}
# Diverging maps whose positive half is each kind's colour: with limits symmetric about 0 (_symmetric),
# white is exactly 0 and a negative effect cannot pass for a small positive one.
KIND_COLOURS = {
    "residual": "PuOr",
    "mlp": "PRGn",
    "attention": "RdBu_r",
}
HEATMAP_KINDS = ("residual", "mlp", "attention")
# Printed width of the tracing figures (inches): the README shows them 880 px wide, so 8 pt text is
# about 880 * 8 / (72 * FIGURE_WIDTH) = 11 px there. Long titles wrap to this width instead of widening
# the canvas (savefig's tight box grows to the widest text).
FIGURE_WIDTH = 8.8
TITLE_CHARS = 110


def _kinds_present(table: pd.DataFrame, kinds: tuple[str, ...]) -> list[str]:
    present = set(table["kind"])
    return [kind for kind in kinds if kind in present]


def _symmetric(values) -> dict:
    """vmin/vmax symmetric about 0 for a diverging map."""
    largest = float(np.nanmax(np.abs(np.asarray(values, dtype=float)))) or 1.0
    return {"vmin": -largest, "vmax": largest}


def _wrapped(text: str) -> str:
    return "\n".join(textwrap.wrap(text, TITLE_CHARS))


def tracing_examples(facts: pd.DataFrame, tokens: pd.DataFrame, effects: pd.DataFrame, n_examples: int) -> plt.Figure:
    """Per-fact heatmaps of P(answer) after restoring each (token, layer): one block per fact, its three
    kinds side by side on one colour scale (from P with the subject corrupted to the largest P)."""
    chosen = facts.head(n_examples)
    kinds = _kinds_present(effects, HEATMAP_KINDS)
    n_tokens = tokens.groupby("known_id").size().max()
    fig = plt.figure(figsize=(FIGURE_WIDTH, (0.22 * n_tokens + 1.3) * len(chosen) + 0.5), layout="constrained")
    blocks = fig.subfigures(len(chosen), 1, squeeze=False)[:, 0]
    for block, fact in zip(blocks, chosen.itertuples()):
        fact_tokens = tokens[tokens.known_id == fact.known_id].sort_values("token_index")
        is_subject = fact_tokens.token_index.between(fact.subject_start, fact.subject_end - 1)
        labels = [f"{t!r}*" if s else repr(t) for t, s in zip(fact_tokens.token, is_subject)]
        cells = effects[(effects.known_id == fact.known_id) & effects.kind.isin(kinds)]
        top = float(cells.p_restored.max())
        axes = block.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            grid = cells[cells.kind == kind].pivot(index="token_index", columns="layer", values="p_restored").sort_index()
            image = ax.imshow(grid.values, aspect="auto", cmap=EXAMPLE_COLOURS[kind], vmin=fact.p_corrupted,
                              vmax=max(top, fact.p_corrupted + 1e-6))
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("layer")
            ax.set_title(KIND_SHORT[kind])
        # One scale for the three kinds of a fact, so one bar, in grey: it stands for all three maps.
        legend = ScalarMappable(norm=image.norm, cmap="Greys")
        block.colorbar(legend, ax=list(axes), fraction=0.03, pad=0.01).set_label(
            f"P({fact.answer_token.strip()}), every map: light = corrupted, dark = largest")
        block.suptitle(f"{fact.prompt!r} -> {fact.answer_token!r}", fontsize=9)
    fig.suptitle(_wrapped(f"{model_name(facts)}: causal traces of single facts (* = subject token, noised); "
                          "colour: P(answer) after restoring one state, from P with the subject corrupted (lightest) "
                          "up"))
    return fig


def tracing_avg(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """Average indirect effect per ROME segment and layer, one heatmap per restored kind."""
    kinds = _kinds_present(averages, HEATMAP_KINDS)
    # Stacked: each kind a full-width strip (segments x layers), so tick labels stay readable.
    fig, axes = plt.subplots(len(kinds), 1, figsize=(FIGURE_WIDTH, 2.2 * len(kinds) + 0.9), squeeze=False,
                             layout="constrained")
    for ax, kind in zip(axes[:, 0], kinds):
        table = averages[averages.kind == kind]
        grid = table.pivot(index="segment", columns="layer", values="mean").reindex(list(SEGMENTS))
        image = ax.imshow(grid.values, aspect="auto", cmap=KIND_COLOURS[kind], **_symmetric(grid.values))
        ax.set_yticks(range(len(SEGMENTS)), [SEGMENT_LABELS[s] for s in SEGMENTS])
        ax.set_xlabel("layer")
        ax.set_title(KIND_TITLES[kind])
        colourbar(image, ax, "avg indirect effect\n(white = 0)", pad=0.01)
    fig.suptitle(_wrapped(_setting(summary)))
    return fig


def tracing_avg_lines(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """Average indirect effect per layer for each segment, with 95% bands over facts: one panel per
    kind, stacked (each its own y scale: the kinds' effects differ several-fold)."""
    kinds = _kinds_present(averages, HEATMAP_KINDS)
    fig, axes = plt.subplots(len(kinds), 1, figsize=(FIGURE_WIDTH, 2.3 * len(kinds) + 1.2), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, kind in zip(axes[:, 0], kinds):
        for segment in SEGMENTS:
            line = averages[(averages.kind == kind) & (averages.segment == segment)].sort_values("layer")
            if line.empty:
                continue
            colour = SEGMENT_COLOURS[segment]
            ax.plot(line.layer, line["mean"], color=colour, label=SEGMENT_LABELS[segment], linewidth=1.4)
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=colour, alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_ylabel("avg indirect effect")
        ax.set_title(KIND_TITLES[kind])
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("layer")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(_wrapped(_setting(summary) + "; bands: 95% normal interval over facts"))
    return fig


def tracing_severed(averages: pd.DataFrame, summary: dict) -> plt.Figure:
    """At the last subject token: restoring the residual stream with and without severed MLP / attention."""
    kinds = _kinds_present(averages, ("residual", "residual_mlp_severed", "residual_attention_severed"))
    at_subject = averages[averages.segment == "last_subject"]
    fig, ax = plt.subplots(figsize=(7.2, 3.6), layout="constrained")
    colours = {"residual": "tab:purple", "residual_mlp_severed": "tab:green", "residual_attention_severed": "tab:red"}
    for kind in kinds:
        line = at_subject[at_subject.kind == kind].sort_values("layer")
        ax.plot(line.layer, line["mean"], color=colours[kind], label=KIND_TITLES[kind], linewidth=1.4)
        ax.fill_between(line.layer, line.ci_low, line.ci_high, color=colours[kind], alpha=0.2, linewidth=0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("layer of the restored residual state")
    ax.set_ylabel("avg indirect effect,\nlast subject token")
    ax.set_title(f"{summary['model']}: severing the later MLP / attention outputs at the last subject token")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    fig.supxlabel(_wrapped(_setting(summary)), fontsize=8)
    return fig


def _setting(summary: dict) -> str:
    chosen = "facts answered correctly" if summary.get("only_correct", True) else "facts (correct or not)"
    return (
        f"{summary['model']}: {summary['n_traced']} {chosen} (of {summary['n_correct']} correct / "
        f"{summary['n_screened']} known facts), {summary['noise_samples']} noise samples, "
        f"noise std {summary['noise_std']:.3g}, MLP/attention window {summary['window']} of "
        f"{summary.get('n_layers', '?')} layers"
    )


# A peak must average at least this share of the kind's facts: a segment few facts have (the first
# subject token with the severed paths, traced only where it is also the last subject token) would
# otherwise win on the noise of a handful of facts.
PEAK_MIN_FACTS_SHARE = 0.5


def peak_cells(averages: pd.DataFrame) -> pd.DataFrame:
    """Per kind, the (segment, layer) with the largest average indirect effect among the cells that
    average at least PEAK_MIN_FACTS_SHARE of the kind's largest number of facts."""
    most = averages.groupby("kind")["n_facts"].transform("max")
    eligible = averages[averages["n_facts"] >= PEAK_MIN_FACTS_SHARE * most]
    best = eligible.loc[eligible.groupby("kind")["mean"].idxmax()]
    return best[["kind", "segment", "layer", "mean", "ci_low", "ci_high", "n_facts"]].reset_index(drop=True)



