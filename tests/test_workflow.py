"""The Snakemake workflow: lint-clean, a resolvable DAG, and a real run on a tiny model."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT_ROOT, SHARED, require_shared

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args, cwd=PROJECT_ROOT, timeout=600, env_extra=None):
    env = dict(os.environ, BACKLENS_SHARED=str(SHARED), BACKLENS_DATA_DIR=str(SHARED / "data"), **(env_extra or {}))
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def project_copy(tmp_path):
    """The workflow files in a scratch directory, so a test run writes nothing into the checkout."""
    for name in ("Snakefile", "workflow", "conf", "profiles", "environment.yml", "README.md", "docs"):
        source = PROJECT_ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    return tmp_path


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_dry_run_shows_the_default_dag(project_copy):
    result = snakemake("-n", "--quiet", "rules", cwd=project_copy)
    assert result.returncode == 0, result.stderr
    assert "sample_prompts" in result.stdout + result.stderr


def test_every_call_reads_the_workflow_profile(project_copy):
    """profiles/default (rerun-incomplete, which resuming after a hard kill needs) is where Snakemake
    looks for a workflow profile beside a top-level Snakefile; under workflow/ it was never read."""
    result = snakemake("-n", "--quiet", "rules", cwd=project_copy)
    assert result.returncode == 0, result.stderr
    assert "Using workflow specific profile profiles/default" in result.stdout + result.stderr


def test_schema_rejects_a_bad_config():
    result = snakemake("-n", "--config", "models=[not a model!]")
    assert result.returncode != 0
    assert "Failed validating 'pattern'" in result.stdout + result.stderr


@pytest.mark.slow
def test_rules_run_on_tiny_gpt2(project_copy):
    require_shared("data", "counterfact")
    config = ["--config", "models=[tiny-gpt2]", "overrides=n_prompts=6,4", "outputs=fig3"]
    result = snakemake("--cores", "2", *config, cwd=project_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    # One result directory per value of the sweep, named after its overrides, and a comparison.
    for n_prompts in (6, 4):
        run = f"tiny-gpt2__n_prompts={n_prompts}"
        table = pd.read_parquet(project_copy / f"results/{run}/prompts.parquet")
        assert table.sample_index.nunique() == n_prompts
        assert table.groupby("sample_index").is_last.sum().eq(1).all()
        assert (project_copy / f"logs/{run}/sample_prompts.log").read_text().count("resolved config:") == 1
        assert (project_copy / f"logs/{run}/benchmarks/sample_prompts.tsv").exists()
        assert (project_copy / f"figures/{run}/fig3.png").exists()
    assert (project_copy / "figures/compare/tiny-gpt2__n_prompts=6,4/fig3.pdf").read_bytes().startswith(b"%PDF")
    again = snakemake("--cores", "1", *config, cwd=project_copy)
    assert "Nothing to be done" in again.stdout + again.stderr
    headline = snakemake("--cores", "1", "figures/fig3.pdf", "--config", "models=[tiny-gpt2]", "overrides=n_prompts=6",
                         cwd=project_copy)
    assert headline.returncode == 0, headline.stderr[-3000:]
    assert "sample_prompts" not in headline.stderr  # reuses the sweep's run directory
    assert (project_copy / "figures/fig3.pdf").read_bytes().startswith(b"%PDF")


def dry_run_jobs(*args, cwd=PROJECT_ROOT):
    result = snakemake("-n", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


def test_a_sweep_builds_one_directory_per_value_and_shares_the_statistics(project_copy):
    text = dry_run_jobs("--config", "overrides=methods.shift.eta=0.1,0.3", "outputs=edit_shift", cwd=project_copy)
    for eta in ("0.1", "0.3"):
        assert f"results/smollm2-135m__methods.shift.eta={eta}/editing/shift/shards/0-25.parquet" in text
        assert f"results/smollm2-135m__methods.shift.eta={eta}/editing/ff2_mom2.pt" not in text
    assert "results/smollm2-135m/editing/ff2_mom2.pt" in text  # statistics of the plain run, shared
    assert "figures/compare/smollm2-135m__methods.shift.eta=0.1,0.3/editing_shift.pdf" in text
    assert "++methods.shift.eta=0.1" in dry_run_jobs("-p", "--config", "overrides=methods.shift.eta=0.1",
                                                     "outputs=edit_shift", cwd=project_copy)


def test_shard_jobs_follow_the_shard_size(project_copy):
    text = dry_run_jobs("results/smollm2-135m/editing/rome/cases.parquet", "--config", "editing_shard_size=20",
                        cwd=project_copy)
    assert all(f"rome/shards/{cut}.parquet" in text for cut in ("0-20", "20-40", "40-50"))


def test_the_paper_experiment_resolves_offline_also_with_the_slurm_profile(project_copy):
    text = dry_run_jobs("--profile", "profiles/slurm", "--config", "experiment=paper", cwd=project_copy)
    assert "results/gpt2-xl__experiment=paper/tables/table1.md" in text
    assert "figures/gpt2__experiment=paper/fig4.pdf" in text
    assert "figures/compare/gpt2,gpt2-medium,gpt2-large,gpt2-xl__experiment=paper/fig6.pdf" in text
    assert " device=cuda " in text and "__device=cuda" not in text  # passed to the stages, not in the names


def test_the_paper_experiment_fails_at_once_without_the_hub(project_copy):
    env_offline = {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([SNAKEMAKE, "--cores", "1", "--config", "experiment=paper"], cwd=project_copy,
                            env=dict(os.environ, **env_offline), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: model 'gpt2-xl' (hub id 'gpt2-xl') is not in the local cache" in result.stderr
    assert not (project_copy / "results").exists()


def test_table1_holds_the_methods_the_run_config_names(project_copy):
    # The DAG reads the run's composed config: an override of editing.table1_methods changes the
    # jobs as it changes the table the stage writes.
    text = dry_run_jobs("--config", "overrides=editing.table1_methods=[shift]", "outputs=table1", cwd=project_copy)
    assert "editing/shift/shards/0-25.parquet" in text and "editing/rome/" not in text


def test_the_sequential_group_resolves_every_series_and_its_docs(project_copy):
    """outputs=sequential (on request): a single-edit series per configured method, MEMIT's batch
    series, and the report's and the figure's copies under docs/."""
    text = dry_run_jobs("--config", "outputs=sequential", cwd=project_copy)
    for method in ("shift", "shift_whitened_nullspace", "rome", "r_rome", "memit", "alphaedit", "ft"):
        assert f"editing/sequential/{method}/single/checkpoints.parquet" in text, method
    for batch in (1, 10, 100):
        assert f"batch{batch}" in text
    assert "docs/sequential.md" in text and "docs/gallery/sequential.png" in text
    # Table 1 beyond the paper: each new row evaluated on Table 1's cases, the table after the paper's rows.
    for method in ("r_rome", "alphaedit", "shift_centered_nullspace", "shift_whitened_nullspace"):
        assert f"editing/{method}/shards/0-25.parquet" in text, method
    assert "tables/table1_beyond.md" in text and "docs/tables/table1_beyond.md" in text
    commands = dry_run_jobs("-p", "--config", "outputs=sequential", cwd=project_copy)
    assert ("editing.table1_methods=[none,ft_mlp0,ft,mend,rome,memit,shift,shift_centered,shift_whitened,r_rome,alphaedit,"
            "shift_centered_nullspace,shift_whitened_nullspace]") in commands


def test_the_small_statistics_group_compares_the_small_run_with_the_default(project_copy):
    """outputs=small_statistics: the small run (this run plus the two overrides) evaluates the three
    methods that read the statistics on its own statistics; the comparison reads both runs."""
    text = dry_run_jobs("--config", "outputs=small_statistics", cwd=project_copy)
    small = "smollm2-135m__editing.corpus.n_tokens_per_d_ff=10__editing.n_cases=20"
    for method in ("rome", "memit", "shift_whitened"):
        assert f"results/{small}/editing/{method}/shards/0-20.parquet" in text, method
        assert f"results/smollm2-135m/editing/{method}/cases.parquet" in text, method
    assert "results/smollm2-135m__editing.corpus.n_tokens_per_d_ff=10/editing/ff2_mom2.pt" in text
    assert "docs/small_statistics.md" in text


CROSS_MODEL_DOCS = ("docs/gallery/compare_fig18.png", "docs/gallery/compare_fig19_21.png", "docs/scorecard_models.md")


def test_two_models_add_the_cross_model_docs_and_one_model_does_not(project_copy):
    """models=[a,b]: both runs, the comparisons of Figs 3 and 6 over them, and from those the docs'
    Figs 18-21 and the per-model scorecard; the single-model docs stay the first model's."""
    text = dry_run_jobs("--config", "models=[smollm2-135m,gemma3-270m]", cwd=project_copy)
    for path in CROSS_MODEL_DOCS:
        assert path in text
    for kind in ("fig3", "fig6"):
        assert f"figures/compare/smollm2-135m,gemma3-270m/{kind}.png" in text
    assert "results/gemma3-270m/tables/table1.csv" in text and "results/smollm2-135m/tables/table1.csv" in text
    assert "input: results/smollm2-135m/gradient_ranks.parquet, results/gemma3-270m/gradient_ranks.parquet" in text
    # Gemma's run leaves out the methods its editors refuse (editing.refused_methods): no MEMIT shards there.
    assert "results/smollm2-135m/editing/memit/shards/" in text and "results/gemma3-270m/editing/memit/" not in text
    assert "results/gemma3-270m/editing/rome/shards/0-25.parquet" in text
    default = dry_run_jobs(cwd=project_copy)
    assert not any(path in default for path in CROSS_MODEL_DOCS) and "figures/compare/" not in default
