"""Several models side by side (issue 25): the paper's cross-model Figs 18-21 on one relative-depth
axis and the claims scorecard with one column per model, on the tables of two tiny runs (tiny-llama,
3 layers; tiny-gemma3, 4 layers), and the rules that write them into docs/ when several models are
asked for."""

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from omegaconf import OmegaConf

from backlens.analysis import scorecard
from backlens.figures.compare import CROSS_MODEL_GALLERY, compare_fig3, compare_fig6
from backlens.figures.common import run_colour
from backlens.stages import backward_lens, compare_runs, logit_lens_examples, sample_prompts, scorecard_models
from conftest import compose_config, require_shared

MODELS = ("tiny-llama", "tiny-gemma3")
N_LAYERS = {"tiny-llama": 3, "tiny-gemma3": 4}


def tracing_tables(peak_layer: int, n_layers: int) -> tuple[pd.DataFrame, dict]:
    """Average effects whose every kind peaks at the last subject token in ``peak_layer``."""
    peak = ("last_subject", peak_layer)
    rows = [{"kind": kind, "segment": segment, "layer": layer, "mean": 0.2 if (segment, layer) == peak else 0.01,
             "ci_low": 0.0, "ci_high": 0.3, "n_facts": 5}
            for kind in ("mlp", "attention", "residual", "residual_mlp_severed", "residual_attention_severed")
            for segment in ("last_subject", "last") for layer in range(n_layers)]
    return pd.DataFrame(rows), {"window": 2, "n_layers": n_layers, "n_traced": 5}


def editing_tables(methods: dict[str, tuple[float, float]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Table 1 (efficacy, NS per method), Table 7 and the per-edit timings of one run."""
    labels = {"none": "Original", "rome": "ROME", "memit": "MEMIT", "shift": "Forward pass shift",
              "shift_centered": "Forward pass shift (centred e_t)"}
    table1 = pd.DataFrame([{"method": m, "label": labels[m], "n_cases": 4, "efficacy_mean": e,
                            "neighborhood_success_mean": ns} for m, (e, ns) in methods.items()])
    perplexity = {"none": 6.85, "rome": 6.9, "memit": 6.95, "shift": 7.0, "shift_centered": 7.1}
    table7 = pd.DataFrame([{"method": m, "perplexity_mean": perplexity[m], "n_edits": 2} for m in methods])
    seconds = {"none": 0.0, "rome": 50.0, "memit": 40.0, "shift": 0.2, "shift_centered": 0.21}
    timings = pd.DataFrame([{"method": m, "edit_seconds_mean": seconds[m]} for m in methods])
    return table1, table7, timings


# tiny-gemma3 runs no MEMIT (refused) and no centred shift here: their rows read "not measured" in its column.
EDITING = {"tiny-llama": {"none": (0.0, 80.0), "rome": (100.0, 60.0), "memit": (100.0, 70.0), "shift": (75.0, 20.0),
                          "shift_centered": (98.0, 55.0)},
           "tiny-gemma3": {"none": (0.0, 80.0), "rome": (100.0, 60.0), "shift": (98.0, 20.0)}}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """results/<model>/ of both tiny models: the analysis stages' tables (6 prompts), hand-made tracing
    and editing tables. Returns the folder that holds results/."""
    require_shared("data", "counterfact")
    base = tmp_path_factory.mktemp("two_models")
    for model in MODELS:
        folder = base / "results" / model
        cfg = compose_config(f"model={model}", "n_prompts=6", f"paths.results={folder}", "analysis.batch_size=4")
        for stage in (sample_prompts, backward_lens, logit_lens_examples):
            stage.run(cfg)
        averages, summary = tracing_tables(peak_layer=1, n_layers=N_LAYERS[model])
        (folder / "tracing").mkdir()
        averages.to_parquet(folder / "tracing" / "average_effects.parquet")
        (folder / "tracing" / "summary.json").write_text(json.dumps(summary))
        (folder / "tables").mkdir()
        for name, table in zip(("table1", "table7", "edit_timings"), editing_tables(EDITING[model])):
            table.to_csv(folder / "tables" / f"{name}.csv", index=False)
    return base


def table_paths(name: str) -> list[str]:
    """One run's table per model, as the rules name it (results/<run>/..., relative to the project)."""
    relative = {"tracing_average_effects": "tracing/average_effects.parquet", "tracing_summary": "tracing/summary.json",
                **{t: f"tables/{t}.csv" for t in ("table1", "table7", "edit_timings")}}
    return [f"results/{model}/{relative.get(name, f'{name}.parquet')}" for model in MODELS]


def read_all(base: Path, name: str) -> list[pd.DataFrame]:
    return [pd.read_parquet(base / path) for path in table_paths(name)]


# % of prompts with gradient rank = P per layer. tiny-gemma3's last layer is local with a window of 4
# positions, so only the last 4 tokens' VJPs reach layer 2 (rank 4 < P): a sliding-window effect the
# figure shows (Gemma 3 270M's last layer is global and its window of 512 exceeds the prompts).
RANK_P_SHARES = {"tiny-llama": [100.0, 100.0, 0.0], "tiny-gemma3": [100.0, 100.0, 0.0, 0.0]}


def test_fig19_21_one_line_per_model_per_matrix_on_the_relative_depth_axis(two_runs):
    ranks = read_all(two_runs, "gradient_ranks")
    fig = compare_fig3(ranks, list(MODELS))
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in axes] == ["FF1 gate_proj", "FF1 up_proj", "FF2 = MLP output"]
    for ax, matrix in zip(axes, ("ff1_gate", "ff1_up", "ff2")):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [f"{model} (6 prompts)" for model in MODELS]
        assert [line.get_color() for line in lines] == [run_colour(0), run_colour(1)]
        for line, model, table in zip(lines, MODELS, ranks):
            n = N_LAYERS[model]
            assert list(line.get_xdata()) == pytest.approx([layer / n for layer in range(n)])
            mine = table[table.matrix == matrix]
            shares = (100 * (mine["rank"] == mine.n_tokens)).groupby(mine.layer).mean()
            assert list(line.get_ydata()) == pytest.approx(shares.tolist())
            assert list(line.get_ydata()) == RANK_P_SHARES[model]
        assert ax.get_xlabel() == "layer index / number of layers"


def test_fig18_one_median_line_per_model_with_its_band(two_runs):
    ranks, prompts = read_all(two_runs, "target_ranks"), read_all(two_runs, "prompts")
    fig = compare_fig6(ranks, prompts, list(MODELS))
    (ax,) = fig.axes
    runs = [line for line in ax.get_lines() if line.get_label().startswith(MODELS)]
    assert [line.get_label().split(" ")[0] for line in runs] == list(MODELS)
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == len(MODELS)
    for line, model, table, prompt_table in zip(runs, MODELS, ranks, prompts):
        n = N_LAYERS[model]
        assert list(line.get_xdata()) == pytest.approx([layer / n for layer in range(n)])
        last = table.merge(prompt_table[prompt_table.is_last][["case_id", "position"]], on=["case_id", "position"])
        expected = (last["rank"] / (last.vocab_size - 1)).groupby(last.layer).median()
        assert list(line.get_ydata()) == pytest.approx(expected.tolist())
        assert f"V = {int(table.vocab_size.iloc[0])}" in line.get_label()


@pytest.mark.parametrize("kind", ["fig3", "fig6"])
def test_compare_runs_stage_labels_the_models(two_runs, kind, monkeypatch):
    monkeypatch.chdir(two_runs)
    tables = {"fig3": ["gradient_ranks"], "fig6": ["target_ranks", "prompts"]}[kind]
    cfg = compose_config(f"compare.kind={kind}", f"paths.figure={two_runs}/compare/{kind}.pdf",
                         *[f"++compare.tables.{t}={json.dumps(table_paths(t))}" for t in tables])
    compare_runs.run(cfg)
    assert (two_runs / "compare" / f"{kind}.png").exists()


def scorecard_config(base: Path, out: Path):
    cfg = compose_config(f"++paths.scorecard_models={out}")
    OmegaConf.update(cfg, "scorecard_models", {"tables": {t: table_paths(t) for t in scorecard.CLAIM_TABLES}},
                     force_add=True)
    return cfg


def test_scorecard_has_one_column_pair_per_model_with_the_single_model_verdicts(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(two_runs)
    out = tmp_path / "scorecard_models.md"
    scorecard_models.run(scorecard_config(two_runs, out))
    text = out.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert header == ["claim", "paper", "ours (tiny-llama)", "verdict (tiny-llama)", "ours (tiny-gemma3)",
                      "verdict (tiny-gemma3)", "rule", "figure"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:])}
    # Every claim of each run, with that run's number and verdict from the single-model rules.
    for index, model in enumerate(MODELS):
        paths = OmegaConf.create({t: table_paths(t)[index] for t in scorecard.CLAIM_TABLES})
        for row in scorecard.claim_rows(paths, compose_config().paper):
            cells = rows[row.claim.replace("|", "\\|")]
            assert cells[2 + 2 * index] == row.ours.replace("|", "\\|")
            assert cells[3 + 2 * index] == f"**{row.verdict}**"
    variant = next(cells for claim, cells in rows.items() if "centred e_t" in claim)
    assert variant[4:6] == ["-", "not measured"]  # tiny-gemma3 ran no centred shift
    # Its Table 7 has no MEMIT row (the method refuses Gemma 3): the ordering claim is not measured there,
    # not "does not", and its summary counts it.
    ordering = next(cells for claim, cells in rows.items() if claim.startswith("after the forward pass shift, held"))
    assert ordering[3] != "**not measured**" and ordering[5] == "**not measured**" and "no memit row" in ordering[4]
    assert text.count("1 not measured (6 CounterFact prompts") == 1
    efficacy = next(cells for claim, cells in rows.items() if claim.startswith("the forward pass shift edits"))
    assert efficacy[3] == "**does not**" and efficacy[5] == "**holds**"  # 25 points below ROME; 2 points
    # Fig 3's and Fig 6's rows link the figures that draw both models.
    figure_of = {cells[0]: cells[-1] for cells in rows.values()}
    fig19_21 = "[compare_fig19_21](gallery/compare_fig19_21.png)"
    assert figure_of["gradient rank in the last layer is 1 (Fig 3)"] == fig19_21
    assert sum(link == "[compare_fig18](gallery/compare_fig18.png)" for link in figure_of.values()) == 1
    assert "tiny-llama: " in text and "tiny-gemma3: " in text and "(6 CounterFact prompts for the analysis)" in text


def test_scorecard_refuses_tables_without_one_path_per_run(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(two_runs)
    cfg = scorecard_config(two_runs, tmp_path / "out.md")
    cfg.scorecard_models.tables.table7 = table_paths("table7")[:1]
    with pytest.raises(ValueError, match=r"\['table7'\] do not list one path per run \(2 runs\)"):
        scorecard_models.run(cfg)


def test_cross_model_gallery_names_the_papers_figures():
    assert CROSS_MODEL_GALLERY == {"compare_fig18": "fig6", "compare_fig19_21": "fig3"}
