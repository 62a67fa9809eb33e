"""The claims scorecard: verdict rules on hand-made tables, and its copy in README.md."""

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from backlens.analysis import scorecard
from backlens.stages import scorecard as scorecard_stage
from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = compose_config().paper


def target_ranks(bottom_layers, n_layers=10, vocab_size=1001):
    """Two prompts of three tokens; the last token's target rank is V-1 in ``bottom_layers``, V/2 elsewhere."""
    rows = []
    for case_id in (0, 1):
        for layer in range(n_layers):
            for position in range(3):
                rank = (vocab_size - 1 if layer in bottom_layers else vocab_size // 2) if position == 2 else 7
                rows.append({"case_id": case_id, "layer": layer, "position": position, "rank": rank,
                             "vocab_size": vocab_size})
    prompts = pd.DataFrame([{"case_id": c, "position": p, "is_last": p == 2} for c in (0, 1) for p in range(3)])
    return pd.DataFrame(rows), prompts


@pytest.mark.parametrize("bottom_layers, verdict", [(range(6), "holds"), (range(5), "partly"), ((), "does not")])
def test_fig6_verdict_counts_layers_at_the_least_probable_end(bottom_layers, verdict):
    ranks, prompts = target_ranks(set(bottom_layers))
    row = scorecard.fig6_row(ranks, prompts, PAPER)
    assert row.verdict == verdict
    assert row.ours.startswith(f"{len(bottom_layers)} of 10 layers")


def test_gradient_rank_rows_use_the_papers_threshold():
    ranks = pd.DataFrame({"layer": [0, 0, 1, 1, 2, 2], "rank": [4, 4, 4, 3, 1, 1], "n_tokens": [4] * 6})
    inner, last = scorecard.gradient_rank_rows(ranks, PAPER)
    assert inner.verdict == "partly" and inner.ours.startswith("75.00% of 4")  # below 98.5%, above 50%
    assert last.verdict == "holds" and last.ours.startswith("100.0% of 2")


def averages(peaks):
    """An average-effects table whose kinds peak at the given (segment, layer)."""
    rows = []
    for kind, (segment, layer) in peaks.items():
        for each in ("last_subject", "last"):
            for l in range(30):
                mean = 0.2 if (each, l) == (segment, layer) else 0.01
                rows.append({"kind": kind, "segment": each, "layer": l, "mean": mean, "ci_low": mean - 0.01,
                             "ci_high": mean + 0.01, "n_facts": 5})
    return pd.DataFrame(rows)


def test_tracing_verdicts_need_romes_segment_and_depth():
    summary = {"window": 6, "n_layers": 30, "n_traced": 5}
    middle, early = scorecard.tracing_rows(averages({"mlp": ("last_subject", 14), "attention": ("last", 25)}), summary,
                                           PAPER), scorecard.tracing_rows(
        averages({"mlp": ("last_subject", 2), "attention": ("last_subject", 5)}), summary, PAPER)
    assert [r.verdict for r in middle] == ["holds", "holds"]
    assert [r.verdict for r in early] == ["partly", "does not"]
    assert "layer 2 of 30" in early[0].ours and "5 facts, window 6 of 30" in early[0].ours


def test_readme_copy_between_markers(tmp_path):
    readme, card = tmp_path / "README.md", tmp_path / "scorecard.md"
    card.write_text("# Claims scorecard\n\nintro\n\n| a | b |\n|---|---|\n| x | [fig3](gallery/fig3.png) |\n")
    readme.write_text(f"top\n{scorecard_stage.BEGIN}\nold\n{scorecard_stage.END}\nbottom\n")
    scorecard_stage.update_readme(readme, card)
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "old" not in text
    assert "[fig3](docs/gallery/fig3.png)" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no scorecard markers"):
        scorecard_stage.update_readme(readme, card)


def test_readme_shows_the_committed_scorecard():
    """README.md's scorecard is docs/scorecard.md's, as the rule readme_scorecard writes it."""
    text = (ROOT / "README.md").read_text()
    block = scorecard_stage.readme_block((ROOT / "docs" / "scorecard.md").read_text())
    assert block in text
    assert text.index(scorecard_stage.BEGIN) < text.index("## Gallery")


def test_no_tracked_outputs_under_results_or_figures():
    """Committed files under results/ or figures/ would make Snakemake skip the jobs that write them."""
    listed = subprocess.run(["git", "ls-files", "results", "figures"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert listed.stdout.split() == []


@pytest.mark.parametrize("efficacy, ns, verdict", [(97.0, 50.0, "holds"), (97.0, 30.0, "partly"), (80.0, 30.0, "does not")])
def test_shift_variant_row_compares_efficacy_and_ns_with_rome(efficacy, ns, verdict):
    table = pd.DataFrame({
        "method": ["rome", "shift", "shift_centered"], "label": ["ROME", "Forward pass shift", "Forward pass shift (centred e_t)"],
        "efficacy_mean": [100.0, 78.0, efficacy], "neighborhood_success_mean": [58.0, 12.0, ns]}).set_index("method")
    (row,) = scorecard.shift_variant_rows(table, PAPER)
    assert row.verdict == verdict and "centred e_t" in row.claim and f"NS {ns:.0f} vs ROME 58" in row.ours


def test_editing_rows_read_per_edit_seconds_from_the_timings_table():
    table1 = pd.DataFrame({"method": ["none", "rome", "shift"], "label": ["Original", "ROME", "Forward pass shift"],
                           "n_cases": [50] * 3, "efficacy_mean": [0.0, 100.0, 78.0],
                           "neighborhood_success_mean": [66.0, 58.0, 12.0]})
    table7 = pd.DataFrame({"method": ["none", "rome", "shift"], "perplexity_mean": [6.85, 6.9, 7.13], "n_edits": 5})
    timings = pd.DataFrame({"method": ["none", "rome", "shift"], "edit_seconds_mean": [0.0, 80.0, 0.3]})
    efficacy, cost, perplexity, ordering = scorecard.editing_rows(table1, table7, timings, PAPER)
    assert efficacy.verdict == "does not" and "22 points below ROME" in efficacy.ours
    assert "5 edits per method" in perplexity.ours
    # No MEMIT row (a model MEMIT refuses): the ordering is not measured, not "does not".
    assert ordering.verdict == "not measured" and ordering.ours.startswith("not measured: no memit row in Table 7")
    assert cost.verdict == "holds" and "shift 0.30 s per edit" in cost.ours and "ROME 80.0 s" in cost.ours
    assert perplexity.verdict == "partly"
    # A one-pass variant a millisecond faster than the paper's shift is still the shift's claim.
    with_variant = pd.concat([table1, pd.DataFrame({"method": ["shift_centered"], "label": ["Forward pass shift (centred e_t)"],
                                                    "n_cases": [50], "efficacy_mean": [80.0], "neighborhood_success_mean": [12.0]})])
    variant_timings = pd.concat([timings, pd.DataFrame({"method": ["shift_centered"], "edit_seconds_mean": [0.29]})])
    rows = scorecard.editing_rows(with_variant, table7, variant_timings, PAPER)
    (cost,) = [row for row in rows if row.claim == PAPER.shift_cost.claim]
    assert cost.verdict == "holds" and "cheapest: Forward pass shift (centred e_t)" in cost.ours


def test_editing_claims_without_their_methods_read_not_measured():
    """A run without ROME's rows (or the shift's) cannot test the claims that compare with them: each such
    row says "not measured" and what is missing, and the scorecard's summary counts them."""
    table1 = pd.DataFrame({"method": ["none", "shift", "shift_centered"], "label": ["Original", "Forward pass shift", "c"],
                           "n_cases": [50] * 3, "efficacy_mean": [0.0, 78.0, 80.0],
                           "neighborhood_success_mean": [66.0, 12.0, 12.0]})
    table7 = pd.DataFrame({"method": ["none", "shift"], "perplexity_mean": [6.85, 6.9], "n_edits": 5})
    timings = pd.DataFrame({"method": ["none", "shift", "shift_centered"], "edit_seconds_mean": [0.0, 0.3, 0.29]})
    rows = scorecard.editing_rows(table1, table7, timings, PAPER)
    by_claim = {row.claim: row for row in rows}
    efficacy, cost = by_claim[PAPER.shift_efficacy.claim], by_claim[PAPER.shift_cost.claim]
    assert efficacy.verdict == cost.verdict == "not measured" and "no rome row in Table 1" in efficacy.ours
    assert len(rows) == 4  # no shift-variant rows: they compare each variant with ROME
    assert by_claim[PAPER.table7_shift_perplexity.claim].verdict == "holds"
    ordering = rows[-1]
    assert ordering.verdict == "not measured" and "no rome or memit row in Table 7" in ordering.ours
    assert scorecard.verdict_counts(rows) == "1 holds, 0 partly, 0 does not, 3 not measured"
    assert scorecard.verdict_counts(rows[2:3]) == "1 holds, 0 partly, 0 does not"


@pytest.mark.parametrize("shift, verdict", [(6.80, "holds"), (6.90, "holds"), (6.95, "partly"), (7.17, "does not")])
def test_table7_ordering_row_compares_the_shift_with_rome_and_memit(shift, verdict):
    table7 = pd.DataFrame({"method": ["none", "rome", "memit", "shift"], "perplexity_mean": [6.85, 6.86, 6.90, shift],
                           "n_edits": 50})
    _, ordering = scorecard.table7_rows(table7, PAPER)
    assert ordering.verdict == verdict and "shift 93.66" in ordering.paper and "(50 edits per method)" in ordering.ours


def fig5_tables(norm_by_segment):
    """One prompt per call of six tokens (primary segments below) with the given FF2 norm per segment."""
    segments = ["prefix", "first_subject", "middle_subject", "last_subject", "further", "last"]
    prompts = pd.DataFrame({"case_id": 0, "position": range(6), "segment": segments})
    norms = pd.DataFrame({"case_id": 0, "position": range(6), "module": "ff2",
                          "norm": [norm_by_segment.get(s, 1.0) for s in segments]})
    return norms, prompts


def test_fig5_scores_the_subject_tokens_and_the_last_token_apart():
    # The last token carries 5 of 10 (3x its 1/6 share); the subject tokens 3 of 10 on half the tokens.
    subject, last = scorecard.fig5_rows(*fig5_tables({"last": 5.0}), PAPER)
    assert "the subject tokens" in subject.claim and subject.verdict == "does not"
    assert subject.ours.startswith("30.0% of the summed norm on 50.0% of the tokens (0.60x")
    assert "the last token" in last.claim and last.verdict == "holds"
    subject, _ = scorecard.fig5_rows(*fig5_tables({"first_subject": 2.0, "middle_subject": 2.0, "last_subject": 2.0}), PAPER)
    assert subject.verdict == "partly"  # 6 of 9 on half the tokens: 1.33x
