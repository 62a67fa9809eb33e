"""Fig 4 (and more examples in the manner of Figs 11-15): logit-lens tables of FF1 inputs and FF2
VJPs, layers x prompt tokens, one row of two panels (LL(x_i), LL(delta_i)) per example.

Each cell shows the most probable token (first line) and the least probable token (second
line) of the lens, special tokens left out by the rule that made the tables. Cells are coloured
by the vector's L2 norm (log scale, per panel), as the paper colours them; a cell whose shown
end holds target_new (top for x_i, bottom for delta_i: the end a descent step promotes) gets a
thick outline and a bold label. Text is black or white, whichever contrasts with its cell.
"""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Rectangle

from backlens.figures.common import MIN_FONT_PT, colourbar, model_name

# vector -> (panel title, the end of the lens where a target hit counts, colour map)
PANELS = {
    "ff1_input": ("LL(x_i): FF1 input", "top", "Greens"),
    "ff2_vjp": ("LL(delta_i): FF2 VJP", "bottom", "Purples"),
}
CELL_WIDTH_IN, CELL_HEIGHT_IN = 0.72, 0.3
MAX_CHARS = 10
HIT_COLOUR = "#e6550d"


@functools.lru_cache(maxsize=1)
def _font_charmap() -> frozenset[int]:
    """Code points the default font can draw (others would print as empty boxes)."""
    return frozenset(FT2Font(findfont(FontProperties())).get_charmap())


def display_token(text: str, width: int = MAX_CHARS) -> str:
    """A token as it can be printed: byte pieces of a multi-byte character (decoded as U+FFFD)
    as [byte], characters the font lacks as '?', whitespace made visible, cut to ``width``."""
    if "\ufffd" in text:
        return "[byte]"
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    shown = "".join(c if ord(c) in _font_charmap() else "?" for c in text)
    shown = shown.replace(" ", "\u2423") if not shown.strip() else shown.strip()
    return shown if len(shown) <= width else shown[: width - 1] + "\u2026"


def _text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance, WCAG)."""
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.25 else "white"


def _panel(ax: plt.Axes, cells: pd.DataFrame, tokens: pd.DataFrame, vector: str, target_id: int, edit: str) -> None:
    title, hit_end, cmap_name = PANELS[vector]
    cells = cells[cells.vector == vector]
    n_layers, n_positions = int(cells.layer.max()) + 1, int(cells.position.max()) + 1
    norms = np.full((n_layers, n_positions), np.nan)
    for row in cells[~cells.is_zero].itertuples():
        norms[row.layer, row.position] = row.norm
    positive = norms[np.isfinite(norms) & (norms > 0)]
    norm = LogNorm(positive.min(), positive.max()) if positive.size else LogNorm(1e-3, 1)
    cmap = plt.get_cmap(cmap_name).with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(norms), aspect="auto", cmap=cmap, norm=norm, origin="lower")
    shown = tokens[(tokens.vector == vector) & (tokens.k == 0)]
    text = shown.pivot_table(index=["layer", "position"], columns="end", values="token_text", aggfunc="first")
    ends = tokens[tokens.vector == vector].groupby(["layer", "position", "end"]).token_id.apply(set)
    for (layer, position), row in text.iterrows():
        hit = target_id in ends.get((layer, position, hit_end), set())
        colour = _text_colour(cmap(norm(norms[layer, position]))) if np.isfinite(norms[layer, position]) else "black"
        ax.text(position, layer, f"{display_token(row['top'])}\n{display_token(row['bottom'])}", ha="center",
                va="center", fontsize=MIN_FONT_PT, color=colour, fontweight="bold" if hit else "normal",
                linespacing=1.0)
        if hit:
            ax.add_patch(Rectangle((position - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=HIT_COLOUR, linewidth=2))
    for row in cells[cells.is_zero].itertuples():
        ax.text(row.position, row.layer, "zero", ha="center", va="center", fontsize=MIN_FONT_PT, color="#777777")
    labels = cells.drop_duplicates("position").sort_values("position").token
    ax.set_xticks(range(n_positions), [display_token(t, 12) for t in labels], rotation=30, ha="right")
    ax.set_yticks(range(n_layers), range(n_layers))
    ax.tick_params(axis="y", labelsize=MIN_FONT_PT)
    ax.set_ylabel("layer")
    ax.set_title(f"{edit}\n{title}")
    colourbar(image, ax, f"L2 norm of {'x_i' if vector == 'ff1_input' else 'delta_i'} (log scale)", pad=0.02)


def logit_lens_figure(cells: pd.DataFrame, tokens: pd.DataFrame, examples: list[int] | None = None,
                      vectors: tuple[str, ...] = tuple(PANELS)) -> plt.Figure:
    """One row of panels per example (all examples when ``examples`` is None), one panel per vector
    (``vectors``: both lenses, or ("ff2_vjp",) alone: the panel the README shows at full width)."""
    chosen = sorted(cells.example.unique()) if examples is None else [e for e in examples if e in set(cells.example)]
    if not chosen:
        raise ValueError(f"logit-lens tables hold examples {sorted(cells.example.unique())}, not {examples}")
    n_layers = int(cells.layer.max()) + 1
    n_positions = int(cells[cells.example.isin(chosen)].groupby("example").position.max().max()) + 1
    width = len(vectors) * (CELL_WIDTH_IN * n_positions + 1.6)
    height = len(chosen) * (CELL_HEIGHT_IN * n_layers + 1.6)
    fig, axes = plt.subplots(len(chosen), len(vectors), figsize=(width, height), squeeze=False, layout="constrained")
    for row_axes, example in zip(axes, chosen):
        example_cells = cells[cells.example == example]
        head = example_cells.iloc[0]
        true = f" (true \"{head.target_true}\")" if isinstance(head.target_true, str) else ""
        edit = f"\"{head.prompt}\" -> \"{head.target_new}\"{true}"
        for ax, vector in zip(row_axes, vectors):
            _panel(ax, example_cells, tokens[tokens.example == example], vector, int(head.target_new_id), edit)
    what = " and ".join({"ff1_input": "FF1 inputs", "ff2_vjp": "FF2 VJPs"}[v] for v in vectors)
    fig.suptitle(f"{model_name(cells)}: logit lens of {what}\ncell: most \\ least probable token; outlined bold: "
                 f"target_new among the {int(tokens.k.max()) + 1} at that end", fontsize=10)
    return fig
