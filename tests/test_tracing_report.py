"""docs/tracing.md's peaks on a hand-made average-effects table."""

import pandas as pd

from backlens.figures.tracing import peak_cells
from backlens.stages.tracing_report import per_segment_peaks


def averages():
    # residual_attention_severed: the last subject token over 50 facts peaks at 0.10 (layer 6); the first
    # subject token, traced for 2 facts only, reaches 0.23 (layer 0) on their noise.
    rows = [{"kind": "residual_attention_severed", "segment": "last_subject", "layer": layer,
             "mean": 0.10 if layer == 6 else 0.01, "ci_low": 0.05, "ci_high": 0.15, "n_facts": 50} for layer in range(8)]
    rows += [{"kind": "residual_attention_severed", "segment": "first_subject", "layer": layer,
              "mean": 0.23 if layer == 0 else 0.0, "ci_low": -0.23, "ci_high": 0.70, "n_facts": 2} for layer in range(8)]
    return pd.DataFrame(rows)


def test_a_peak_needs_half_of_the_kinds_facts():
    (peak,) = peak_cells(averages()).itertuples()
    assert (peak.segment, peak.layer, peak.n_facts) == ("last_subject", 6, 50)


def test_per_segment_table_gives_n_and_band_where_few_facts_average():
    table = per_segment_peaks(averages()).set_index("segment")["residual_attention_severed"]
    assert table["first subject token"] == "0.230 (layer 0; n = 2, 95% [-0.230, 0.700])"
    assert table["last subject token"] == "0.100 (layer 6)"
