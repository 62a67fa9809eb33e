"""The embedding-anisotropy table summarised per variant (``analysis.anisotropy`` computes the ranks):
apart from it, which loads torch, so the analysis report reads the table without it."""

from __future__ import annotations

import pandas as pd

# LL(e_t) and LL(e_t - mean_j e_j): the probes of the forward pass shift and of its centred variant.
VARIANTS = ("raw", "centered")


def anisotropy_summary(ranks: pd.DataFrame, n_recurring: int = 5) -> pd.DataFrame:
    """Per variant: share of tokens ranked first in their own lens, median rank, and the top tokens
    of LL(e_t) that recur most (``top_token`` text and the share of sampled tokens whose lens they top)."""
    rows = []
    for variant in VARIANTS:
        group = ranks[ranks["variant"] == variant]
        recurring = group["top_token"].value_counts(normalize=True).head(n_recurring)
        rows.append({"variant": variant, "n_tokens": len(group), "share_rank_first": float((group["rank"] == 0).mean()),
                     "median_rank": float(group["rank"].median()),
                     "mean_cosine_with_mean": float(group["cosine_with_mean"].mean()),
                     "recurring_top_tokens": ", ".join(f"{t!r} {100 * s:.0f}%" for t, s in recurring.items())})
    return pd.DataFrame(rows)
