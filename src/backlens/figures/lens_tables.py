"""Fig 4 (and Figs 11-15): logit-lens tables of FF1 inputs and FF2 VJPs, layers x tokens."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize

PANELS = (("ff1_input", "LL(x_i), FF1 input"), ("ff2_vjp", "LL(delta_i), FF2 VJP"))


def _short(text: str, width: int = 9) -> str:
    text = text.replace("\n", "\\n").strip() or repr(text)
    return text if len(text) <= width else text[: width - 1] + "~"


def _panel(ax: plt.Axes, cells: pd.DataFrame, tokens: pd.DataFrame, vector: str, title: str, vocab_size: int) -> None:
    cells = cells[cells.vector == vector]
    n_layers, n_positions = cells.layer.max() + 1, cells.position.max() + 1
    relative = np.full((n_layers, n_positions), np.nan)
    for row in cells.itertuples():
        if not row.is_zero:
            relative[row.layer, row.position] = row.target_rank / (vocab_size - 1)
    cmap = plt.get_cmap("coolwarm").with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(relative), aspect="auto", cmap=cmap, norm=Normalize(0, 1), origin="lower")
    first = tokens[(tokens.vector == vector) & (tokens.k == 0)]
    text = first.pivot_table(index=["layer", "position"], columns="end", values="token_text", aggfunc="first")
    for (layer, position), row in text.iterrows():
        ax.text(position, layer, f"{_short(row['top'])} \\ {_short(row['bottom'])}", ha="center", va="center",
                fontsize=4.2)
    for row in cells[cells.is_zero].itertuples():
        ax.text(row.position, row.layer, "zero VJP", ha="center", va="center", fontsize=4.2, color="#666666")
    labels = cells.drop_duplicates("position").sort_values("position").token
    ax.set_xticks(range(n_positions), [_short(t, 12) for t in labels], fontsize=7)
    ax.set_yticks(range(0, n_layers, 2), range(0, n_layers, 2), fontsize=6)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)


def fig4_logit_lens_tables(cells: pd.DataFrame, tokens: pd.DataFrame) -> plt.Figure:
    """One row of two panels per example; cell text is 'top \\ bottom' token, colour the
    target's rank / (V - 1): blue = target most probable, red = least probable (the end a
    gradient-descent step promotes for FF2 VJPs)."""
    examples = sorted(cells.example.unique())
    vocab_size = int(cells.vocab_size.iloc[0])
    n_positions = int(cells.groupby("example").position.max().max()) + 1
    n_layers = int(cells.layer.max()) + 1
    fig, axes = plt.subplots(
        len(examples), 2, figsize=(2 * 1.15 * n_positions + 1.5, len(examples) * (0.19 * n_layers + 1.2)),
        squeeze=False,
    )
    for row_axes, example in zip(axes, examples):
        example_cells = cells[cells.example == example]
        example_tokens = tokens[tokens.example == example]
        head = example_cells.iloc[0]
        for ax, (vector, label) in zip(row_axes, PANELS):
            title = f"\"{head.prompt}\" -> \"{head.target_new}\": {label}"
            _panel(ax, example_cells, example_tokens, vector, title, vocab_size)
    scalar = plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap="coolwarm")
    fig.colorbar(scalar, ax=axes, fraction=0.02, pad=0.01, label="target rank / (V-1)")
    return fig
