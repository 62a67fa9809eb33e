"""The tracing rules run end to end through Snakemake on the tiny GPT-2."""

import json

import pandas as pd
import pytest

from conftest import require_shared
from test_workflow import project_copy, snakemake  # noqa: F401  (fixture and runner)


@pytest.mark.slow
def test_tracing_rules_run_on_tiny_gpt2(project_copy):  # noqa: F811
    require_shared("data", "known_1000.json")
    # A random model answers no fact correctly, so trace the first facts regardless.
    overrides = "overrides=tracing.n_facts=2 tracing.only_correct=false tracing.noise_samples=2 tracing.example_facts=2"
    result = snakemake("--cores", "2", "figures/tracing_avg.pdf", "--config", "models=[tiny-gpt2]", overrides,
                       cwd=project_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    tracing = project_copy / "results/tiny-gpt2/tracing"
    summary = json.loads((tracing / "summary.json").read_text())
    assert summary["n_screened"] == summary["n_known_facts"] - summary["n_unsegmentable"]
    assert summary["n_traced"] == 2 and summary["saving_vs_full_recomputation"] > 1
    facts = pd.read_parquet(tracing / "facts.parquet")
    effects = pd.read_parquet(tracing / "effects.parquet")
    assert set(effects.known_id) == set(facts.known_id)
    assert set(effects.kind) == {"residual", "mlp", "attention", "residual_mlp_severed", "residual_attention_severed"}
    averages = pd.read_parquet(tracing / "average_effects.parquet")
    assert averages.n_facts.max() == 2
    for name in ("tracing_examples", "tracing_avg", "tracing_avg_lines", "tracing_severed"):
        assert (project_copy / f"figures/tiny-gpt2/{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (project_copy / "figures/tracing_avg.png").exists()
