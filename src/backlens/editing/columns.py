"""Columns of the per-case editing results that the summaries and tables average, apart from the code
that computes them, so the merge, table and figure stages read them without loading torch."""

from __future__ import annotations

# Efficacy by free generation (issue 26, backlens.editing.free_generation): the row's columns, in
# order (None until a deferred batch fills them).
FREE_GENERATION_COLUMNS = ("gen_efficacy", "gen_paraphrase", "gen_efficacy_true", "gen_paraphrase_true",
                           "gen_efficacy_contains", "gen_paraphrase_contains", "gen_n_new_tokens", "gen_continuations")
# Those of them that are per-case metrics (0/1 or a mean of them): summaries and Table 1 average these.
FREE_GENERATION_METRICS = FREE_GENERATION_COLUMNS[:6]

# A method's summary.json: the mean and std over cases of each of these.
SUMMARY_COLUMNS = [
    "efficacy", "paraphrase", "neighborhood", "efficacy_success", "paraphrase_success",
    "neighborhood_success", "generation_entropy", "perplexity",
    *FREE_GENERATION_METRICS,
]
