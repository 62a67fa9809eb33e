"""The layer x token view of the logit-lens tables that ``backlens explain`` prints."""

from __future__ import annotations

import pandas as pd

SUMMARY_COLUMNS = [
    "example", "position", "token", "segment", "layer",
    "x_top", "x_bottom", "x_target_rank", "x_norm",
    "delta_top", "delta_bottom", "delta_target_rank", "delta_norm",
]
VECTORS = {"ff1_input": "x", "ff2_vjp": "delta"}


def lens_summary(cells: pd.DataFrame, tokens: pd.DataFrame, example: int | None = None) -> pd.DataFrame:
    """Per (example, position, layer): the most (``*_top``) and least (``*_bottom``) probable token of
    LL(x_i) (FF1 input) and LL(delta_i) (FF2 VJP), the target's rank in each (0 = most probable,
    V-1 = least; -1 for an exact-zero vector, whose tokens are None) and the vectors' L2 norms."""
    if example is not None:
        cells, tokens = cells[cells.example == example], tokens[tokens.example == example]
    keys = ["example", "position", "layer"]
    firsts = tokens[tokens.k == 0].pivot_table(
        index=keys, columns=["vector", "end"], values="token_text", aggfunc="first"
    )
    firsts.columns = [f"{VECTORS[vector]}_{end}" for vector, end in firsts.columns]
    per_cell = cells.pivot_table(index=keys, columns="vector", values=["target_rank", "norm"], aggfunc="first")
    per_cell.columns = [f"{VECTORS[vector]}_{'target_rank' if value == 'target_rank' else 'norm'}"
                        for value, vector in per_cell.columns]
    labels = cells.drop_duplicates(keys).set_index(keys)[["token", "segment"]]
    table = labels.join(per_cell).join(firsts).reset_index()
    for column in SUMMARY_COLUMNS:
        if column not in table:
            table[column] = None
    table = table[SUMMARY_COLUMNS].sort_values(["example", "position", "layer"]).reset_index(drop=True)
    for column in ("x_target_rank", "delta_target_rank"):
        table[column] = table[column].astype(int)
    for column in ("x_top", "x_bottom", "delta_top", "delta_bottom"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    return table
