"""The small-statistics comparison (rule edit_small_statistics): paired over the cases both runs hold."""

import pandas as pd
import pytest

from backlens.stages.editing_small_statistics import METRICS, compare_cases


def cases(ids, efficacy, perplexity):
    frame = pd.DataFrame({"case_id": ids, "efficacy": efficacy, "perplexity": perplexity})
    for _, _, source in METRICS:
        if source not in frame:
            frame[source] = 1.0
    return frame


def test_difference_is_paired_over_the_common_cases_only():
    default = cases([0, 1, 2, 3], [1.0, 1.0, 0.0, 1.0], [10.0, 11.0, None, 12.0])
    # Case 3 is not in the small run; case 9 is not in the default run: both are left out.
    small = cases([0, 1, 2, 9], [0.0, 1.0, 1.0, 0.0], [12.0, 11.0, 13.0, 50.0])
    rows = {r["metric"]: r for r in compare_cases(default, small, n_resamples=200, seed=0, level=0.95)}
    efficacy = rows["efficacy"]
    assert efficacy["n_cases"] == 3
    assert efficacy["default"] == pytest.approx(200 / 3) and efficacy["small"] == pytest.approx(200 / 3)
    assert efficacy["difference"] == pytest.approx(0.0)
    assert efficacy["difference_low"] < 0 < efficacy["difference_high"]
    # Perplexity: case 2 has none in the default run, so cases 0 and 1 only; kept unscaled.
    perplexity = rows["perplexity"]
    assert perplexity["n_cases"] == 2 and perplexity["difference"] == pytest.approx(1.0)
    assert rows["paraphrase"]["difference"] == 0.0 and rows["paraphrase"]["default"] == 100.0
