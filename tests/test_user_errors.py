"""Bad input through the real entry points: one line on the console naming what is wrong and the
fix, a non-zero exit, and no output a rerun would take as done."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURES, PROJECT_ROOT, SHARED, require_shared

EASYEDIT = json.loads((FIXTURES / "counterfact_easyedit_form.json").read_text())


def run_stage(stage: str, *overrides: str, tmp_path, env_extra=None):
    env = {**os.environ, "BACKLENS_SHARED": str(SHARED), "BACKLENS_DATA_DIR": str(SHARED / "data"), **(env_extra or {})}
    command = [sys.executable, "-m", "backlens.stage", stage, f"hydra.run.dir={tmp_path / 'hydra'}", *overrides]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def sample_prompts(tmp_path, dataset, *overrides):
    require_shared("assets", "gpt2_tokenizer")
    out = tmp_path / "prompts.parquet"
    result = run_stage(
        "sample_prompts", "model=tiny-gpt2", f"dataset.path={dataset}", f"paths.prompts={out}",
        f"paths.prompts_meta={tmp_path / 'prompts.meta.json'}", *overrides, tmp_path=tmp_path,
    )
    line = one_error_line(result)
    assert not out.exists() and not (tmp_path / "prompts.meta.json").exists(), "no partial output"
    return line


@pytest.mark.parametrize(
    "records, expected",
    [
        ([], "holds no CounterFact records (an empty list); point dataset.path at a valid CounterFact file"),
        ([{k: v for k, v in EASYEDIT[0].items() if k != "rephrase_prompt"}], "cannot tell the CounterFact form from the first record (case 0)"),
        ("[{not json", "not valid JSON"),
    ],
)
def test_a_bad_counterfact_file_is_one_line_naming_it(tmp_path, records, expected):
    path = write(tmp_path, "cf.json", records)
    line = sample_prompts(tmp_path, path, "n_prompts=1")
    assert path in line and expected in line
    assert "skip_invalid" not in line  # skipping records cannot help with a bad file


@pytest.mark.parametrize(
    "value, expected",
    [("abc", "n_prompts='abc' is not an integer"), ("-3", "n_prompts=-3 must be at least 1"), ("0", "n_prompts=0 must be at least 1"),
     ("3", "n_prompts=3 is larger than the number of CounterFact records (2)")],
)
def test_a_bad_prompt_count_is_one_line_naming_the_key(tmp_path, value, expected):
    path = write(tmp_path, "cf.json", EASYEDIT)
    assert expected in sample_prompts(tmp_path, path, f"n_prompts={value}")


def test_an_empty_known_facts_file_is_one_line(tmp_path):
    require_shared("assets", "gpt2_tokenizer")
    path = write(tmp_path, "known.json", [])
    out = tmp_path / "screening.parquet"
    result = run_stage(
        "trace_screen", "model=tiny-gpt2", f"known_facts.path={path}", f"paths.tracing_screening={out}",
        f"paths.tracing_screening_meta={tmp_path / 'screening.json'}", tmp_path=tmp_path,
    )
    line = one_error_line(result)
    assert path in line and "no known_1000 records" in line and "known_facts.path" in line
    assert not out.exists()


def test_a_method_typo_is_one_line_listing_the_known_keys(tmp_path):
    require_shared("assets", "gpt2_tokenizer")
    path = write(tmp_path, "cf.json", EASYEDIT)
    line = sample_prompts(tmp_path, path, "n_prompts=1", "++methods.shift.etta=0.1")
    assert line == "error: methods.shift.etta: shift has no hyper-parameter 'etta'; known: direction, eta, key, layer, layer_fraction, nullspace_energy, nullspace_projection, nullspace_threshold, skip_if_predicted, stats_path"


# --- Through the workflow: DAG-time checks, and a job's error shown on the console -------------
from test_workflow import project_copy, snakemake  # noqa: E402,F401  (fixture and runner)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ("model=tiny-gpt3", "error: unknown model 'tiny-gpt3'; known: "),
        ("methods.shift.etta=0.1", "error: methods.shift.etta: shift has no hyper-parameter 'etta'; known: direction, eta,"),
        ("methods.shfit.eta=0.1", "error: methods.shfit: no method config backlens/conf/method/shfit.yaml; known methods: "),
        ("n_prompts=abc", "error: n_prompts='abc' is not an integer"),
        ("n_promts=5", "error: overrides 'n_promts=5': Could not override 'n_promts'."),
    ],
)
def test_bad_overrides_stop_the_dag_with_one_line(project_copy, overrides, expected):
    result = snakemake("-n", "--config", f"overrides={overrides}", cwd=project_copy)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output and "Traceback" not in output and "Exception" not in output, output[-2000:]


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_names_the_case_on_the_console(project_copy, tmp_path):
    require_shared("assets", "gpt2_tokenizer")
    long_prompt = "The history of " + "the old city of " * 40 + "Danielle Darrieux is"
    dataset = write(tmp_path, "long.json", [{**EASYEDIT[0], "prompt": long_prompt}])
    target = "results/tiny-gpt2__n_prompts=1/gradient_ranks.parquet"
    result = snakemake("--cores", "1", target, "--config", "models=[tiny-gpt2]", "overrides=n_prompts=1",
                       cwd=project_copy, env_extra={"BACKLENS_COUNTERFACT": dataset})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "CounterFact case 0: " in lines[0], result.stderr[-3000:]
    assert "more than tiny-gpt2's context of 128 positions" in lines[0]
    assert not (project_copy / target).exists()


@pytest.mark.slow
def test_a_killed_run_resumes_after_the_stale_lock_is_removed(project_copy):
    """SIGKILL leaves Snakemake's lock and incomplete outputs: the unlock helper (make figures
    calls it) removes a stale lock, and the workflow profile reruns the incomplete job."""
    import shutil
    import signal
    import time

    require_shared("data", "counterfact")
    shutil.copy(PROJECT_ROOT / "workflow" / "unlock_if_stale.sh", project_copy / "workflow")
    args = ["--cores", "1", "results/tiny-gpt2__n_prompts=2/prompts.parquet", "--config", "models=[tiny-gpt2]",
            "overrides=n_prompts=2"]
    from test_workflow import SNAKEMAKE

    env = dict(os.environ, BACKLENS_SHARED=str(SHARED), BACKLENS_DATA_DIR=str(SHARED / "data"))
    process = subprocess.Popen([SNAKEMAKE, *args], cwd=project_copy, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = project_copy / ".snakemake" / "locks"
    deadline = time.time() + 120
    while not (locks.exists() and any(locks.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert any(locks.iterdir()), "the killed run left its lock"
    assert "cannot be locked" in snakemake(*args, cwd=project_copy).stderr
    unlock = subprocess.run(["bash", "workflow/unlock_if_stale.sh", SNAKEMAKE], cwd=project_copy, env=env,
                            capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0 and "removing the stale Snakemake lock" in unlock.stderr
    resumed = snakemake(*args, cwd=project_copy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (project_copy / "results/tiny-gpt2__n_prompts=2/prompts.parquet").exists()
