"""Saving figures: a PDF and a PNG beside it, both written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from backlens.io import atomic_path  # noqa: E402


def save_figure(fig: "plt.Figure", pdf_path: str | Path, *, png_dpi: int = 110) -> tuple[Path, Path]:
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


def finish_line_axes(ax: "plt.Axes", *, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a small title and legend, and a light grid: the look of every line plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
