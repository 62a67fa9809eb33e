"""Table 1 / Table 7 cells on synthetic per-case results: bootstrap intervals and the paper's values."""

import numpy as np
import pandas as pd
import pytest

from backlens.editing.table_statistics import bootstrap_interval
from backlens.stages.editing_tables import PAPER_COLUMNS, render


def test_bootstrap_interval_of_a_binary_mean_is_about_the_normal_one():
    # 50 cases, 38 successes (76%): the normal interval is 76 ± 1.96 * sqrt(.76 * .24 / 50) = 76 ± 11.8.
    values = np.array([100.0] * 38 + [0.0] * 12)
    low, high = bootstrap_interval(values, n_resamples=4000, seed=0)
    half = 1.96 * np.sqrt(0.76 * 0.24 / 50) * 100
    assert low == pytest.approx(76 - half, abs=2.5) and high == pytest.approx(76 + half, abs=2.5)
    assert bootstrap_interval(values, 4000, 0) == (low, high)  # seeded: the same table run to run
    assert bootstrap_interval(np.full(50, 100.0), 500, 0) == (100.0, 100.0)  # no spread, no interval
    assert all(np.isnan(bootstrap_interval(np.array([]), 10, 0)))


def test_bootstrap_interval_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 1000):
        low, high = bootstrap_interval(rng.binomial(1, 0.5, n) * 100.0, 2000, 0)
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about sqrt(20) = 4.5 times narrower


def test_rendered_cells_carry_the_interval_and_the_papers_values():
    frame = pd.DataFrame([{"label": "ROME", "efficacy_mean": 100.0, "efficacy_std": 0.0, "efficacy_ci_low": 100.0,
                           "efficacy_ci_high": 100.0, **{f"paper_{c}": v for c, v in zip(PAPER_COLUMNS, [99.4, 71.9, 10.91, 622.78])}},
                          {"label": "ours only", "efficacy_mean": 76.0, "efficacy_std": 42.7, "efficacy_ci_low": 64.0,
                           "efficacy_ci_high": 88.0, **{f"paper_{c}": float("nan") for c in PAPER_COLUMNS}}])
    markdown, latex = render(frame, [("Efficacy", "efficacy", 1)], PAPER_COLUMNS, "gpt2-xl")
    assert "| Method | Efficacy | Paper, gpt2-xl (efficacy, paraphrase, neighborhood, ngram_entropy) |" in markdown
    assert "| ROME | 100.0 ± 0.0 [100.0, 100.0] | 99.4 / 71.9 / 10.91 / 622.78 |" in markdown
    assert "| ours only | 76.0 ± 42.7 [64.0, 88.0] | n/a / n/a / n/a / n/a |" in markdown
    assert "$\\pm$" in latex
