"""Sequential and batch editing (issue 26), drawn from the joined checkpoints table only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import ScalarFormatter

from backlens.figures.common import model_name

# Panels: (column, y label); perplexity is drawn over the unedited model's, on a log axis (a
# collapsed shift series reaches 1e78 while the others stay within 1.0-1.3).
PANELS = (
    ("retention", "retention: P(new) > P(true)\non every edit so far (%)"),
    ("neighborhood_success", "NS on their neighbours (%)"),
    ("perplexity_ratio", "held-out perplexity /\nunedited"),
)


def sequential_figure(table: pd.DataFrame) -> plt.Figure:
    """Retention, NS and perplexity against the number of edits (log scale), one line per method's
    single edits in sequence; batch updates (one update of the first N facts) as markers at N; the
    unedited model's NS on the same cases dashed, in the method's colour."""
    single = table[table.series == "single"].sort_values(["method", "n_edits"])
    batch = table[table.series == "batch"].sort_values(["method", "n_edits"])
    methods = list(dict.fromkeys(single.method)) + [m for m in dict.fromkeys(batch.method) if m not in set(single.method)]
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 4.6), layout="constrained")
    for ax, (column, ylabel) in zip(axes, PANELS):
        scale = 1.0 if column == "perplexity_ratio" else 100.0
        for method, rows in single.groupby("method", sort=False):
            ax.plot(rows.n_edits, rows[column] * scale, marker=".", color=colours[method], label=rows.label.iloc[0])
            if column == "neighborhood_success":
                ax.plot(rows.n_edits, rows["neighborhood_success_unedited"] * scale, ls="--", lw=0.8, color=colours[method])
        for method, rows in batch.groupby("method", sort=False):
            ax.plot(rows.n_edits, rows[column] * scale, ls="none", marker="X", ms=7, color=colours[method],
                    markeredgecolor="black", label=f"{rows.label.iloc[0]}, one batch")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 10, 100 rather than 10^k
        if column == "perplexity_ratio":
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_yscale("log")
        else:
            ax.set_ylim(-3, 103)
        ax.set_xlabel("number of edits (log)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_title("dashed: the unedited model on the same neighbours", fontsize="medium")
    # Below the panels, so that they keep the figure's width.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"Edits accumulated without restoring ({model_name(table)})")
    return fig
