"""What every figure shares: the look (text sizes, PNG resolution), one segment-to-colour map,
titles naming the model, labelled colourbars, legends outside the data, and saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from backlens.io import atomic_path  # noqa: E402

# PNGs at 200 dpi: the README shows them at about half their pixel width, so 8 pt text stays
# at least 7 pt there. Figures are drawn at their printed size (inches); no text below MIN_FONT_PT.
PNG_DPI = 200
MIN_FONT_PT = 7
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
}
plt.rcParams.update(STYLE)

# One colour per ROME segment (and "prefix", tokens before the subject), used by every figure
# that colours segments: Figs 6, 8, tracing lines. Subject tokens in blues/greens, the last
# token in red (the paper's focus), the rest in neutral tones.
SEGMENT_COLOURS = {
    "first_subject": "#9ecae1",
    "middle_subject": "#4292c6",
    "last_subject": "#08519c",
    "first_subsequent": "#31a354",
    "further": "#969696",
    "last": "#d62728",
    "prefix": "#e6ab02",
}
# Colour of each FF matrix in line plots (Figs 3, 7, 9).
MATRIX_COLOURS = {"ff1": "#1b9e77", "ff1_gate": "#1b9e77", "ff1_up": "#7570b3", "ff2": "#d95f02"}
MATRIX_STYLES = {"ff1": "-", "ff1_gate": "-", "ff1_up": "--", "ff2": ":"}
# One colour per run in figures over several runs (models of a list, values of a sweep), in the
# order the runs are given: the paper's Figs 18-21 and the editing comparison.
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def run_colour(index: int) -> str:
    """The colour of the ``index``-th run (the palette repeats after eight runs)."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def run_line_style(index: int, n_runs: int) -> dict:
    """Line keywords of the ``index``-th of ``n_runs`` runs: its colour and marker, and lines and
    markers thinner for later runs, so a run whose curve equals an earlier one's (every run at 100%)
    draws on top of it without hiding it."""
    wider = n_runs - 1 - index
    return {"color": run_colour(index), "marker": RUN_MARKERS[index % len(RUN_MARKERS)],
            "linewidth": 1.2 + 1.2 * wider, "markersize": 3 + 2 * wider}


def model_name(*tables: pd.DataFrame) -> str:
    """The model of the result tables (their ``model`` column), for titles."""
    for table in tables:
        if "model" in table.columns and len(table):
            return ", ".join(str(m) for m in pd.unique(table["model"]))
    return "model unknown"


def colourbar(mappable, ax, label: str, **kwargs):
    """A colourbar with its label (quantity and unit), text at the figure's sizes."""
    bar = plt.colorbar(mappable, ax=ax, **({"fraction": 0.046, "pad": 0.03} | kwargs))
    bar.set_label(label)
    return bar


def legend_outside(ax: "plt.Axes", **kwargs) -> None:
    """The legend to the right of the axes, never over the data."""
    ax.legend(**({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "frameon": False} | kwargs))


def save_figure(fig: "plt.Figure", pdf_path: str | Path, *, png_dpi: int = PNG_DPI) -> tuple[Path, Path]:
    """Write ``fig`` to ``pdf_path`` and the same name with ``.png``; close the figure."""
    pdf_path = Path(pdf_path)
    png_path = pdf_path.with_suffix(".png")
    try:
        with atomic_path(pdf_path) as tmp:
            fig.savefig(tmp, format="pdf", bbox_inches="tight")
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png", dpi=png_dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return pdf_path, png_path


def finish_line_axes(ax: "plt.Axes", *, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    """Labels, title, legend outside the data and a light grid: the look of every line plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        legend_outside(ax)
    ax.grid(alpha=0.3)
