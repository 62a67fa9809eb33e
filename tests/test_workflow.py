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


def snakemake(*args, cwd=PROJECT_ROOT, timeout=600):
    env = dict(os.environ, BACKLENS_SHARED=str(SHARED), BACKLENS_DATA_DIR=str(SHARED / "data"))
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def project_copy(tmp_path):
    """The workflow files in a scratch directory, so a test run writes nothing into the checkout."""
    for name in ("Snakefile", "workflow", "conf", "scripts", "environment.yml"):
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


def test_schema_rejects_a_bad_config():
    result = snakemake("-n", "--config", "models=[not a model!]")
    assert result.returncode != 0
    assert "Failed validating 'pattern'" in result.stdout + result.stderr


@pytest.mark.slow
def test_rules_run_on_tiny_gpt2(project_copy):
    require_shared("data", "counterfact")
    config = ["--config", "models=[tiny-gpt2]", "overrides=n_prompts=6"]
    result = snakemake("--cores", "2", "figures/fig3.pdf", *config, cwd=project_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(project_copy / "results/tiny-gpt2/prompts.parquet")
    assert table.sample_index.nunique() == 6
    assert table.groupby("sample_index").is_last.sum().eq(1).all()
    assert (project_copy / "logs/tiny-gpt2/sample_prompts.log").read_text().count("resolved config:") == 1
    assert (project_copy / "logs/tiny-gpt2/benchmarks/sample_prompts.tsv").exists()
    assert (project_copy / "figures/fig3.pdf").read_bytes().startswith(b"%PDF")
    assert (project_copy / "figures/tiny-gpt2/fig3.png").exists()
    again = snakemake("--cores", "1", "figures/fig3.pdf", *config, cwd=project_copy)
    assert "Nothing to be done" in again.stdout + again.stderr
