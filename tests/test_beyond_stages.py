"""The issue-16 stages end to end on tiny random models: attention and ft_trace tables, their reports,
and every BEYOND figure rendered from the tables with readable text and labelled colourbars."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.text import Text

from backlens.figures.common import MIN_FONT_PT
from backlens.figures.registry import BEYOND_FIGURES, FIGURES
from backlens.stages import attention, beyond_reports, ft_trace, render_figure, sample_prompts
from backlens.stages.render_figure import read_tables
from conftest import compose_config, require_shared

N_PROMPTS, N_CASES, STEPS = 6, 2, 4


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def beyond(request, tmp_path_factory):
    require_shared("data", "counterfact")
    results = tmp_path_factory.mktemp(request.param)
    cfg = compose_config(f"model={request.param}", f"n_prompts={N_PROMPTS}", f"paths.results={results}",
                         "analysis.batch_size=4", "analysis.attention.n_lemma=2",
                         f"analysis.ft_trace.n_cases={N_CASES}", f"analysis.ft_trace.steps={STEPS}")
    for step in (sample_prompts.run, attention.run, beyond_reports.attention_report, ft_trace.run, beyond_reports.ft_trace_report):
        step(cfg)
    return cfg


def read(cfg, name):
    return pd.read_parquet(cfg.paths[name])


def test_attention_tables(beyond):
    n_layers = 3
    ranks = read(beyond, "attention_ranks")
    assert len(ranks) == N_PROMPTS * n_layers * 4 and set(ranks.projection) == {"q", "k", "v", "o"}
    assert (ranks["rank"] <= ranks[["n_tokens", "d_out"]].min(axis=1)).all()
    norms = read(beyond, "attention_vjp_norms")
    assert len(norms) == 4 * n_layers * read(beyond, "prompts").shape[0]
    target = read(beyond, "attention_target_ranks")
    assert target["rank"].between(-1, target.vocab_size.iloc[0] - 1).all()
    lemma = read(beyond, "attention_lemma")
    assert lemma.case_id.nunique() == 2 and lemma.relative_error.max() < 1e-5
    assert lemma.relative_error_batched.max() < 1e-4
    assert (lemma.rank_factors == lemma.rank_full_float64).all()


def test_ft_trace_table(beyond):
    trace = read(beyond, "ft_trace")
    layers = sorted(trace.layer.unique())
    assert layers == [1, 2]  # fractions 0.25, 0.5, 0.73 of 3 layers
    assert len(trace) == N_CASES * len(layers) * STEPS
    assert all(steps == list(range(1, STEPS + 1)) for steps in trace.groupby(["case_id", "layer"]).step.apply(list))
    assert (trace.accumulated_rank <= trace.n_tokens).all() and (trace.accumulated_rank <= trace.rank_bound).all()
    assert trace.cosine_first.between(-1 - 1e-9, 1 + 1e-9).all()
    assert (trace.target_prob_after.between(0, 1)).all()
    # Consecutive rows chain: a step's "after" is the next step's "before".
    for _, group in trace.groupby(["case_id", "layer"]):
        assert group.loss_after.iloc[:-1].tolist() == group.loss.iloc[1:].tolist()


def test_reports_state_the_numbers(beyond):
    text = open(beyond.paths.attention_report).read()
    for heading in ("## Lemma 4.1 per projection", "## Gradient rank per projection", "## VJP norm by segment",
                    "## Target rank in LL(VJP of W_O)"):
        assert heading in text
    assert "not claims of the paper" in text
    trace = open(beyond.paths.ft_trace_report).read()
    assert "## Per layer" in trace and "## Example: case" in trace and "top-1" in trace


def test_beyond_figures_stay_out_of_the_paper_registry():
    assert not set(BEYOND_FIGURES) & set(FIGURES)


def _check_readable(fig):
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            assert text.get_fontsize() >= MIN_FONT_PT, (text.get_text(), text.get_fontsize())
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.get_xlabel() or ax.get_ylabel(), ax.get_title()
            if ax.images:
                assert ax.get_title(), "a heatmap says what it shows"


@pytest.mark.parametrize("figure", sorted(BEYOND_FIGURES))
def test_every_beyond_figure_renders(beyond, figure, tmp_path):
    spec = BEYOND_FIGURES[figure]
    fig = spec.draw({table: read_tables(beyond.paths[table]) for table in spec.tables})
    _check_readable(fig)
    plt.close(fig)
    cfg = compose_config(f"model={beyond.model.name}", f"paths.results={beyond.paths.results}",
                         f"figure={figure}", f"paths.figure={tmp_path}/{figure}.pdf")
    render_figure.run(cfg)
    assert (tmp_path / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / f"{figure}.png").stat().st_size > 5000


def test_scorecard_findings_state_the_tables(beyond):
    from backlens.analysis.beyond_summary import attention_findings, ft_trace_findings, last_token_target_ranks
    from backlens.stages.scorecard import beyond_findings, findings_markdown

    tables = {name: read(beyond, name) for name in
              ("prompts", "attention_ranks", "attention_vjp_norms", "attention_target_ranks", "attention_lemma")}
    rows = attention_findings(tables)
    assert [figure for *_, figure in rows] == ["attn_fig3", "attn_fig3", "attn_fig5", "attn_fig6"]
    per_layer = last_token_target_ranks(tables["attention_target_ranks"], tables["prompts"])
    assert f"in {int((per_layer['median / (V-1)'] >= 0.99).sum())} of {len(per_layer)} layers" in rows[3][1]
    trace = read(beyond, "ft_trace")
    steps = ft_trace_findings(trace)
    assert len(steps) == 4 and f"{trace.step.max()} {trace.optimizer.iloc[0]} steps" in steps[0][1]
    # The scorecard's table: every finding, no verdict column; without the tables, one row says so.
    text = findings_markdown(beyond_findings(beyond.paths, tables["prompts"]))
    assert text.count("\n| ") == 2 + len(rows) + len(steps) and "verdict" not in text.split("\n", 2)[2]
    empty = findings_markdown(beyond_findings({}, tables["prompts"]))
    assert "not in this copy" in empty
