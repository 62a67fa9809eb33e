"""Table 1's metric columns and the bootstrap interval of a mean over cases: one definition for
Tables 1 and 7 (rules ``edit_table1``, ``edit_table7``) and the small-statistics comparison
(rule ``edit_small_statistics``)."""

from __future__ import annotations

import numpy as np

# (column, scale to percent/points, source column in the per-case table)
TABLE1_METRICS = [
    ("efficacy", 100.0, "efficacy"),
    ("paraphrase", 100.0, "paraphrase"),
    ("neighborhood", 100.0, "neighborhood"),
    ("ngram_entropy", 100.0, "generation_entropy"),
    ("efficacy_success", 100.0, "efficacy_success"),
    ("paraphrase_success", 100.0, "paraphrase_success"),
    ("neighborhood_success", 100.0, "neighborhood_success"),
]


def bootstrap_interval(values: np.ndarray, n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: cases resampled with replacement
    ``n_resamples`` times (seeded, so the table is the same run to run)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
