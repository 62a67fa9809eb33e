"""Fig 26: forward pass shift's efficacy, paraphrase and neighborhood accuracy across eta and layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from backlens.figures.common import legend_outside, save_figure

PANELS = [("efficacy", "Efficacy"), ("paraphrase", "Paraphrase"), ("neighborhood", "Neighborhood")]


def shift_sweep_figure(cases: pd.DataFrame, model_name: str, pdf_path: str | Path, chosen: dict | None = None) -> None:
    """One panel per accuracy; x: eta (log scale), one line per layer; y: mean accuracy (%).
    ``chosen`` (the sweep's choice: layer, eta) is marked with a ring in every panel."""
    summary = cases.groupby(["layer", "eta"], as_index=False)[[p for p, _ in PANELS]].mean()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS) + 1.4, 3.4), sharey=True, layout="constrained")
    colors = plt.cm.viridis([i / max(1, summary["layer"].nunique() - 1) for i in range(summary["layer"].nunique())])
    for ax, (column, title) in zip(axes, PANELS):
        for color, (layer, group) in zip(colors, summary.groupby("layer")):
            ax.plot(group["eta"], 100 * group[column], marker="o", ms=3, color=color, label=f"layer {layer}")
        if chosen is not None:
            point = summary[(summary["layer"] == chosen["layer"]) & (summary["eta"] == chosen["eta"])]
            ax.scatter(point["eta"], 100 * point[column], s=140, facecolors="none", edgecolors="black", linewidths=1.6,
                       zorder=5, label=f"chosen: layer {chosen['layer']}, eta {chosen['eta']}")
        ax.set_xscale("log")
        ax.set_xlabel("eta")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    legend_outside(axes[-1])
    fig.suptitle(f"{model_name}: forward pass shift sweep ({cases['case_id'].nunique()} CounterFact cases)")
    save_figure(fig, pdf_path)
