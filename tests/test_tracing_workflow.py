"""The tracing rules (screen, shard jobs, merge, figures) run end to end through Snakemake on the tiny GPT-2."""

import json

import pandas as pd
import pytest

from backlens.runs import Run, split_overrides
from conftest import require_shared
from test_workflow import project_copy, snakemake  # noqa: F401  (fixture and runner)


@pytest.mark.slow
def test_tracing_rules_run_on_tiny_gpt2(project_copy):  # noqa: F811
    require_shared("data", "known_1000.json")
    # A random model answers no fact correctly, so trace the first facts regardless.
    overrides = "tracing.n_facts=3 tracing.only_correct=false tracing.noise_samples=2 tracing.example_facts=2"
    # Two facts per shard job: shards 0-2 and 2-3.
    result = snakemake("--cores", "2", "figures/tracing_avg.pdf", "--config", "models=[tiny-gpt2]",
                       f"overrides={overrides}", "tracing_shard_size=2", cwd=project_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    run = Run("tiny-gpt2", tuple(split_overrides(overrides)[0])).name
    tracing = project_copy / "results" / run / "tracing"
    screening = json.loads((tracing / "screening.json").read_text())
    assert screening["chosen_known_ids"] == [0, 1, 2]
    for start, stop in [(0, 2), (2, 3)]:
        assert json.loads((tracing / f"shards/{start}-{stop}.json").read_text())["known_ids"] == [0, 1, 2][start:stop]
        assert (project_copy / f"logs/{run}/benchmarks/trace_shard_{start}-{stop}.tsv").exists()
    summary = json.loads((tracing / "summary.json").read_text())
    assert summary["n_screened"] == summary["n_known_facts"] - summary["n_unsegmentable"]
    assert summary["n_traced"] == 3 and summary["saving_vs_full_recomputation"] > 1
    facts = pd.read_parquet(tracing / "facts.parquet")
    assert facts.known_id.tolist() == [0, 1, 2]
    effects = pd.read_parquet(tracing / "effects.parquet")
    assert set(effects.known_id) == set(facts.known_id)
    assert set(effects.kind) == {"residual", "mlp", "attention", "residual_mlp_severed", "residual_attention_severed"}
    averages = pd.read_parquet(tracing / "average_effects.parquet")
    assert averages.n_facts.max() == 3
    for name in ("tracing_examples", "tracing_avg", "tracing_avg_lines", "tracing_severed"):
        assert (project_copy / f"figures/{run}/{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (project_copy / "figures/tracing_avg.png").exists()
