"""Reproducibility through the real workflow: results are byte-identical run to run (timings live in
their own files), and the data file is part of every result's identity."""

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backlens.data.sources import sha256_of
from backlens.stages import backward_lens, sample_prompts
from conftest import SHARED, compose_config, require_shared
from test_workflow import SNAKEMAKE, project_copy  # noqa: F401  (fixture)

# Tiny GPT-2 through editing (FF2 statistics, held-out blocks, one shard of the shift), on
# as few cases as make every file non-trivial: an experiment config written into the project copy (as
# overrides, the run's directory name would pass the file-name length limit). Causal tracing's tables
# are compared byte for byte in test_tracing_shards (two shard layouts).
EXPERIMENT = """# @package _global_
n_prompts: 3
editing:
  n_cases: 2
  n_generation_cases: 1
  n_perplexity_cases: 1
  evaluation: {generation: {max_new_tokens: 4}}
  corpus: {n_blocks: 2, n_heldout_blocks: 2, block_tokens: 16, batch_size: 2}
"""
RUN = "tiny-gpt2__experiment=reproducibility_test"
TARGETS = [f"results/{RUN}/{name}" for name in (
    "editing/shift/cases.parquet", "editing/shift/summary.json",
)]


def is_timing(path: Path) -> bool:
    """Files that hold wall-clock times: timings.json files, shard metas, per-case progress lines."""
    return "timings" in path.name or path.suffix == ".jsonl" or (path.parent.name == "shards" and path.suffix == ".json")


def digests(results: Path) -> dict[str, str]:
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file() and not is_timing(p)}


def run_workflow(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, BACKLENS_SHARED=str(SHARED), BACKLENS_DATA_DIR=str(SHARED / "data"), **env)
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_results_are_byte_identical_run_to_run(project_copy):  # noqa: F811
    require_shared("data", "counterfact")
    (project_copy / "conf/experiment/reproducibility_test.yaml").write_text(EXPERIMENT)
    command = ["--cores", "2", *TARGETS, "--config", "models=[tiny-gpt2]", "overrides=experiment=reproducibility_test"]
    first = run_workflow(project_copy, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    results = project_copy / "results"
    before = digests(results)
    # Every kind of result is compared: tables, JSON summaries, torch files.
    assert {Path(name).suffix for name in before} >= {".parquet", ".json", ".pt"}, sorted(before)
    timings = json.loads((results / RUN / "editing/shift/timings.json").read_text())
    assert sorted(timings["edit_seconds"]) == ["0", "1"]
    shutil.move(results, project_copy / "results_first")
    second = run_workflow(project_copy, *command)
    assert second.returncode == 0, second.stderr[-3000:]
    after = digests(results)
    assert sorted(after) == sorted(before)
    assert [name for name in before if before[name] != after[name]] == []


def counterfact_subset(path: Path, n_records: int) -> Path:
    records = json.loads(require_shared("data", "counterfact", "counterfact_easyedit.json").read_text())
    path.write_text(json.dumps(records[:n_records]))
    return path


@pytest.mark.slow
def test_another_data_file_reruns_what_reads_it(project_copy, tmp_path):  # noqa: F811
    first, other = counterfact_subset(tmp_path / "a.json", 40), counterfact_subset(tmp_path / "b.json", 30)
    target = "results/tiny-gpt2__n_prompts=3/prompts.meta.json"
    command = ["--cores", "1", target, "--config", "models=[tiny-gpt2]"]
    assert run_workflow(project_copy, *command, BACKLENS_COUNTERFACT=str(first)).returncode == 0
    meta = json.loads((project_copy / target).read_text())
    assert (meta["dataset_path"], meta["dataset_sha256"], meta["n_records"]) == (str(first), sha256_of(first), 40)
    # The same file: nothing to do. Another file (the environment variable): the prompts are redone.
    same = run_workflow(project_copy, "-n", *command, BACKLENS_COUNTERFACT=str(first))
    assert "Nothing to be done" in same.stdout + same.stderr
    switched = run_workflow(project_copy, *command, BACKLENS_COUNTERFACT=str(other))
    assert switched.returncode == 0 and "sample_prompts" in switched.stderr, switched.stderr[-3000:]
    meta = json.loads((project_copy / target).read_text())
    assert (meta["dataset_path"], meta["dataset_sha256"], meta["n_records"]) == (str(other), sha256_of(other), 30)


# Tokens tied with the target within float round-off, which another thread count may order the other way;
# only positions in the vocabulary (a gradient's matrix rank must be equal).
RANK_SLACK = 2
VOCABULARY_RANKS = {"target_ranks": ("rank",)}
ANALYSIS_TABLES = ("prompts", "gradient_ranks", "vjp_norms", "target_ranks", "neuron_updates", "vjp_similarity")


def analyse(results: Path, threads: int):
    """Prompts and the Backward Lens tables of tiny GPT-2 with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = compose_config("model=tiny-gpt2", "n_prompts=8", f"paths.results={results}", "analysis.batch_size=4")
        sample_prompts.run(cfg)
        backward_lens.run(cfg)
    finally:
        torch.set_num_threads(previous)
    return cfg


def test_thread_count_changes_float_rounding_only(tmp_path):
    """Same thread count: the same bytes. Another thread count: torch splits long sums between threads,
    so floats may differ in their last bits; counts and labels are equal, and a rank (how many tokens
    score above the target) moves by at most RANK_SLACK: a token within round-off of the target can
    cross it (seen on an Intel Xeon with AVX-512: one rank of 102, 11522 -> 11523)."""
    require_shared("data", "counterfact")
    one, again, two = (analyse(tmp_path / name, threads) for name, threads in (("one", 1), ("again", 1), ("two", 2)))
    for name in ANALYSIS_TABLES:
        assert sha256_of(Path(one.paths[name])) == sha256_of(Path(again.paths[name])), name
    model = one.model.config
    # Rounding of a float32 sum of K terms grows like sqrt(K) eps (random-walk bound); the longest sums
    # run over the vocabulary (VJP at the logits, logit lens), once per layer the signal passes.
    vocab_size = int(pd.read_parquet(one.paths.target_ranks)["vocab_size"].iloc[0])
    rtol = int(model.n_layer) * math.sqrt(vocab_size) * float(np.finfo(np.float32).eps)
    for name in ANALYSIS_TABLES:
        left, right = pd.read_parquet(one.paths[name]), pd.read_parquet(two.paths[name])
        floats = [c for c in left.columns if left[c].dtype.kind == "f"]
        ranks = [c for c in VOCABULARY_RANKS.get(name, ()) if c in left.columns]
        pd.testing.assert_frame_equal(left.drop(columns=floats + ranks), right.drop(columns=floats + ranks))
        for column in ranks:
            moved = np.abs(left[column].to_numpy(np.int64) - right[column].to_numpy(np.int64))
            assert moved.max(initial=0) <= RANK_SLACK, (name, column, int(moved.max()))
        for column in floats:
            a, b = left[column].to_numpy(float), right[column].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), (name, column)
            scale = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 0.0
            assert np.nanmax(np.abs(a - b), initial=0.0) <= rtol * scale, (name, column)
