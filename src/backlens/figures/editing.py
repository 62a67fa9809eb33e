"""Fig 26: the forward pass shift variants' efficacy, paraphrase and NS across layer and eta."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from backlens.figures.common import colourbar, save_figure

# Accuracy for efficacy and paraphrase (the paper's Fig 26), NS for locality: neighbourhood
# accuracy sits at its floor on SmolLM2 (6% unedited) and cannot show the damage NS shows.
# One colour per variant in the trade-off panel (colour-blind safe, Okabe-Ito).
VARIANT_COLOURS = ["#d55e00", "#0072b2", "#009e73", "#cc79a7"]
PANELS = [("efficacy", "Efficacy (accuracy)"), ("paraphrase", "Paraphrase (accuracy)"),
          ("neighborhood_success", "NS (neighbours keep P(true) > P(new))")]


def shift_sweep_figure(cases: pd.DataFrame, model_name: str, pdf_path: str | Path, choice: dict | None = None) -> None:
    """One row per shift variant (``method``), one layer x eta heatmap per metric (% of cases);
    each variant's chosen setting (``choice["methods"][method]``) is boxed, the unedited NS is in the title."""
    methods = list(pd.unique(cases["method"]))
    summary = cases.groupby(["method", "layer", "eta"], as_index=False)[[p for p, _ in PANELS]].mean()
    layers = sorted(summary["layer"].unique())
    etas = sorted(summary["eta"].unique())
    fig, axes = plt.subplots(len(methods), len(PANELS), figsize=(11.5, 2.6 * len(methods) + 0.6),
                             layout="constrained", squeeze=False)
    chosen_all = (choice or {}).get("methods", {})
    for row, method in enumerate(methods):
        group = summary[summary["method"] == method]
        variant = cases[cases["method"] == method].iloc[0]
        for col, (column, title) in enumerate(PANELS):
            ax = axes[row, col]
            grid = group.pivot(index="layer", columns="eta", values=column).reindex(index=layers, columns=etas)
            image = ax.imshow(100 * grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=100)
            for i, j in np.ndindex(grid.shape):
                value = 100 * grid.iat[i, j]
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 60 else "white")
            chosen = chosen_all.get(method)
            if chosen is not None:
                i, j = layers.index(chosen["layer"]), etas.index(chosen["eta"])
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
            ax.set_xticks(range(len(etas)), [f"{e:g}" for e in etas], rotation=45)
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_xlabel("eta")
            if col == 0:
                ax.set_ylabel(f"{method_title(variant)}\nlayer")
            ax.set_title(title)
        colourbar(image, axes[row, -1], "% of cases")
    baseline = (choice or {}).get("baseline", {}).get("neighborhood_success")
    note = f"; unedited NS {100 * baseline:.0f}%" if baseline is not None else ""
    fig.suptitle(f"{model_name}: forward pass shift sweep, {cases['case_id'].nunique()} CounterFact cases "
                 f"(red box: chosen setting{note})")
    save_figure(fig, pdf_path)
    frontier, ax = plt.subplots(figsize=(5.6, 4.6), layout="constrained")
    frontier_axes(ax, summary, cases, chosen_all, baseline)
    frontier.suptitle(f"{model_name}: shift variants, efficacy against NS ({cases['case_id'].nunique()} cases)")
    save_figure(frontier, frontier_path(pdf_path))


def frontier_path(pdf_path: str | Path) -> Path:
    """Fig 26's companion: the efficacy / NS trade-off, beside it (fig26_frontier.pdf)."""
    pdf_path = Path(pdf_path)
    return pdf_path.with_name(f"{pdf_path.stem}_frontier{pdf_path.suffix}")


def frontier_axes(ax: plt.Axes, summary: pd.DataFrame, cases: pd.DataFrame, chosen_all: dict, baseline_ns: float | None) -> None:
    """Efficacy against NS for every (layer, eta) of every variant: the trade-off the sweep measures."""
    for (method, group), colour in zip(summary.groupby("method", sort=False), VARIANT_COLOURS):
        title = method_title(cases[cases["method"] == method].iloc[0])
        ax.scatter(100 * group["neighborhood_success"], 100 * group["efficacy"], s=18, color=colour, alpha=0.8, label=title)
        chosen = chosen_all.get(method)
        if chosen is not None:
            ax.scatter(100 * chosen["neighborhood_success"], 100 * chosen["efficacy"], s=120, facecolors="none",
                       edgecolors=colour, linewidths=2)
    if baseline_ns is not None:
        ax.axvline(100 * baseline_ns, color="grey", linestyle="--", linewidth=1, label="unedited NS")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("NS (% of cases)")
    ax.set_ylabel("efficacy (% of cases)")
    ax.set_title("each dot one (layer, eta) of the sweep; ring: the chosen one")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)


def method_title(variant: pd.Series) -> str:
    """Row label: the value vector and the key of a shift variant."""
    value = "e_t" if variant["direction"] == "embedding" else "e_t - mean(E)"
    key = "a_n" if variant["key"] == "activation" else "whitened a_n"
    return f"{value}, key {key}"
