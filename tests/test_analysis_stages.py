"""The analysis rules end to end on tiny random models: tables, report and every figure."""

import pandas as pd
import pytest
from omegaconf import OmegaConf

from backlens.figures.registry import FIGURES
from backlens.stages import (
    analysis_report, backward_lens, backward_lens_merge, embedding_anisotropy, lemma_check, logit_lens_examples, render_figure,
    sample_prompts,
)
from conftest import compose_config, require_shared


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def analysed(request, tmp_path_factory):
    """Run every analysis stage for one tiny model into a scratch results folder."""
    require_shared("data", "counterfact")
    results = tmp_path_factory.mktemp(request.param)
    cfg = compose_config(f"model={request.param}", "n_prompts=6", f"paths.results={results}",
                         "analysis.batch_size=4", "analysis.lemma.n_crosscheck=2")
    for stage in (sample_prompts, backward_lens, lemma_check, logit_lens_examples, embedding_anisotropy, analysis_report):
        stage.run(cfg)
    return cfg


def read(cfg, name):
    return pd.read_parquet(cfg.paths[name])


def test_lemma_holds_on_every_gradient(analysed):
    lemma = read(analysed, "lemma_check")
    assert len(lemma) == 6 * 3 * lemma.matrix.nunique()
    assert lemma.relative_error.max() < 1e-5
    assert lemma.relative_error_batched.max() < 1e-4
    checked = lemma.dropna(subset=["rank_full_float64"])
    assert checked.case_id.nunique() == 2
    assert (checked.rank_factors == checked.rank_full_float64).all()


def test_lemma_check_on_a_sample_of_prompts(analysed, tmp_path):
    """analysis.lemma.n_prompts checks the first n sampled prompts, with the rows the full check has for them."""
    cfg = analysed.copy()
    OmegaConf.update(cfg, "analysis.lemma.n_prompts", 3)
    OmegaConf.update(cfg, "paths.lemma_check", str(tmp_path / "lemma_check.parquet"))
    lemma_check.run(cfg)
    sample, full = pd.read_parquet(cfg.paths.lemma_check), read(analysed, "lemma_check")
    assert sample.case_id.nunique() == 3
    pd.testing.assert_frame_equal(sample, full.iloc[: len(sample)])
    with pytest.raises(ValueError, match="n_prompts=0"):
        lemma_check.checked_prompts(0, 6)


def test_lemma_check_is_bounded_on_large_models(analysed, tmp_path):
    """analysis.lemma.max_elements / crosscheck_max_work: the first prompts that fit, the crosscheck on evenly
    spread layers; the rows are the full check's rows for them, and the table says how many were sampled."""
    from backlens.models.loading import load_model

    adapter = load_model(analysed.model).adapter
    sites = [site for layer in range(adapter.n_layers) for site in adapter.linear_sites(layer)]
    per_prompt = sum(s.out_features * s.in_features for s in sites)
    per_layer = sum(s.out_features * s.in_features * min(s.out_features, s.in_features) for s in sites) / adapter.n_layers
    cfg = analysed.copy()
    OmegaConf.update(cfg, "analysis.lemma.max_elements", 2.5 * per_prompt)
    OmegaConf.update(cfg, "analysis.lemma.crosscheck_max_work", 2 * 2 * per_layer)  # 2 layers of 2 prompts
    OmegaConf.update(cfg, "paths.lemma_check", str(tmp_path / "lemma_check.parquet"))
    lemma_check.run(cfg)
    sample, full = pd.read_parquet(cfg.paths.lemma_check), read(analysed, "lemma_check")
    assert sample.case_id.nunique() == 2 and (sample.n_sampled == 6).all()
    checked = sample.dropna(subset=["rank_full_float64"])
    assert sorted(checked.layer.unique()) == [0, adapter.n_layers - 1] and checked.case_id.nunique() == 2
    pd.testing.assert_frame_equal(sample.drop(columns=["rank_full_float64", "rank_full_float32_default_tol"]),
                                  full.iloc[: len(sample)].drop(columns=["rank_full_float64",
                                                                         "rank_full_float32_default_tol"]))
    assert lemma_check.crosscheck_layers(sites, adapter.n_layers, 2, None) == list(range(adapter.n_layers))
    assert lemma_check.checked_prompts(None, 100, 80, 1000) == 12 and lemma_check.checked_prompts(None, 5, 80, 10) == 1


def test_last_layer_rank_is_one_and_ranks_never_exceed_p(analysed):
    ranks = read(analysed, "gradient_ranks")
    last = ranks[ranks.layer == ranks.layer.max()]
    assert (last["rank"] == 1).all()
    assert (ranks["rank"] <= ranks.n_tokens).all() and (ranks["rank"] >= 1).all()


def test_target_ranks_mark_zero_vjps(analysed):
    ranks = read(analysed, "target_ranks")
    prompts = read(analysed, "prompts")
    merged = ranks.merge(prompts[["case_id", "position", "is_last"]], on=["case_id", "position"])
    last_layer = merged[merged.layer == merged.layer.max()]
    assert (last_layer[~last_layer.is_last]["rank"] == -1).all()
    assert (last_layer[last_layer.is_last]["rank"] >= 0).all()
    assert merged["rank"].max() < merged.vocab_size.iloc[0]


def test_norm_table_covers_every_module(analysed):
    norms = read(analysed, "vjp_norms")
    assert {"attention", "ff2"} <= set(norms.module)
    assert (norms.norm >= 0).all()


def test_logit_lens_tables(analysed):
    cells, tokens = read(analysed, "logit_lens_cells"), read(analysed, "logit_lens_tokens")
    assert set(cells.vector) == {"ff1_input", "ff2_vjp"}
    assert cells.example.nunique() == len(analysed.analysis.logit_lens.examples)
    zero = cells[cells.is_zero]
    assert set(zero.vector) == {"ff2_vjp"} and zero.layer.eq(cells.layer.max()).all()
    assert not tokens.merge(zero[["example", "layer", "position", "vector"]]).shape[0]
    top = tokens[tokens.end == "top"].groupby(["example", "layer", "position", "vector"]).logit.first()
    bottom = tokens[tokens.end == "bottom"].groupby(["example", "layer", "position", "vector"]).logit.first()
    assert (top >= bottom).all()


def test_logit_lens_ends_leave_out_special_tokens(analysed):
    from backlens.models.loading import load_tokenizer
    from backlens.api.lens import special_token_ids

    special = special_token_ids(load_tokenizer(analysed.model))
    assert special  # both tiny models' tokenizers have an end-of-text token
    assert not set(read(analysed, "logit_lens_tokens").token_id) & set(special)


def test_report_states_measured_numbers(analysed):
    text = open(analysed.paths.analysis_report).read()
    for heading in ("## Lemma 4.1", "## Gradient rank (Fig 3)", "## Where the VJP norm sits", "## Target rank"):
        assert heading in text
    assert "rank in the last layer | 1:" in text
    assert "> 98.5%" in text


@pytest.mark.parametrize("figure", sorted(FIGURES))
def test_every_figure_renders_from_the_tables(analysed, figure, tmp_path):
    cfg = compose_config(f"model={analysed.model.name}", f"paths.results={analysed.paths.results}",
                         f"figure={figure}", f"paths.figure={tmp_path}/{figure}.pdf")
    render_figure.run(cfg)
    pdf, png = tmp_path / f"{figure}.pdf", tmp_path / f"{figure}.png"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5000
    assert png.stat().st_size > 5000


def test_unknown_figure_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not registered"):
        render_figure.run(compose_config("figure=fig99", f"paths.figure={tmp_path}/x.pdf"))


def test_shards_merge_to_the_tables_of_one_job(analysed, tmp_path):
    """Shards cut at batch boundaries give exactly the single job's tables, whatever their size."""
    base = [f"model={analysed.model.name}", "n_prompts=6", f"paths.prompts={analysed.paths.prompts}", "analysis.batch_size=2"]
    single = compose_config(*base, f"paths.results={tmp_path}/single")
    backward_lens.run(single)
    for name, cuts in (("twos", [(0, 2), (2, 4), (4, 6)]), ("uneven", [(0, 4), (4, 6)])):
        metas = []
        for start, stop in cuts:
            shard = compose_config(*base, f"paths.results={tmp_path}/{name}/{start}-{stop}", f"analysis.shard=[{start},{stop}]")
            backward_lens.run(shard)
            metas.append(shard.paths.analysis_meta)
        merged = compose_config(*base, f"paths.results={tmp_path}/{name}", f"paths.analysis_shards=[{','.join(metas)}]")
        backward_lens_merge.merge(merged)
        for table in backward_lens.TABLES:
            pd.testing.assert_frame_equal(read(merged, table), read(single, table))
    with pytest.raises(ValueError, match="multiples of analysis.batch_size"):
        backward_lens.run(compose_config(*base, f"paths.results={tmp_path}/bad", "analysis.shard=[1,3]"))
