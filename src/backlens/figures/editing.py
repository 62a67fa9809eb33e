"""Fig 26: forward pass shift's efficacy, paraphrase and neighborhood accuracy across eta and layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from backlens.figures.common import save_figure

PANELS = [("efficacy", "Efficacy"), ("paraphrase", "Paraphrase"), ("neighborhood", "Neighborhood")]


def shift_sweep_figure(cases: pd.DataFrame, model_name: str, pdf_path: str | Path) -> None:
    """One panel per accuracy; x: eta (log scale), one line per layer; y: mean accuracy (%)."""
    summary = cases.groupby(["layer", "eta"], as_index=False)[[p for p, _ in PANELS]].mean()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4), sharey=True)
    colors = plt.cm.viridis([i / max(1, summary["layer"].nunique() - 1) for i in range(summary["layer"].nunique())])
    for ax, (column, title) in zip(axes, PANELS):
        for color, (layer, group) in zip(colors, summary.groupby("layer")):
            ax.plot(group["eta"], 100 * group[column], marker="o", ms=3, color=color, label=f"layer {layer}")
        ax.set_xscale("log")
        ax.set_xlabel("eta")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Forward pass shift sweep, {model_name} ({cases['case_id'].nunique()} CounterFact cases)")
    save_figure(fig, pdf_path)
