"""``python -m backlens.stage``: every stage the rules call is in its table and every table entry is
a function that exists (a broken entry is otherwise found only when its rule runs, possibly hours into
a pipeline); a misspelt name is one line; the config is the project's from any directory."""

import re
import subprocess
import sys

import pytest

from backlens.stage import STAGES, stage_function
from conftest import PROJECT_ROOT

# The stage a rule runs: the first argument of a command helper of common.smk, or the word after
# {STAGE}. An f-string's {fields} (edit_{wc.table}) stand for any word.
STAGE_CALL = re.compile(r'(?:hydra_call|stage_command|docs_command|docs_runs_command)\(\s*f?"([^"]+)"|\{STAGE\} (\w+)')


def rule_stage_patterns():
    patterns = set()
    for path in sorted((PROJECT_ROOT / "workflow" / "rules").glob("*.smk")):
        for called, after_prefix in STAGE_CALL.findall(path.read_text()):
            name = called or after_prefix
            patterns.add(re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(name)))
    return patterns


def test_every_stage_the_rules_call_is_known_and_every_known_stage_is_called():
    patterns = rule_stage_patterns()
    assert len(patterns) > 30, patterns  # the parser still sees the rules
    unknown = [p for p in patterns if not any(re.fullmatch(p, name) for name in STAGES)]
    assert not unknown, f"rules call stages backlens.stage does not know: {unknown}"
    uncalled = [name for name in STAGES if not any(re.fullmatch(p, name) for p in patterns)]
    assert not uncalled, f"stages no rule calls: {uncalled}"


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_is_an_existing_function(name):
    assert callable(stage_function(name))


def stage(*arguments, cwd=PROJECT_ROOT):
    return subprocess.run([sys.executable, "-m", "backlens.stage", *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_an_unknown_stage_is_one_line_and_a_failure():
    result = stage("sample_promtps", "model=gpt2")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: unknown stage 'sample_promtps'; known: ")
    assert "sample_prompts" in result.stderr and "Traceback" not in result.stderr


def test_no_stage_prints_the_usage_and_fails():
    result = stage()
    assert result.returncode != 0 and "usage: python -m backlens.stage" in result.stderr
    assert "trace_shard" in result.stderr


def test_the_project_config_is_composed_from_any_directory_under_the_stage_name(tmp_path):
    result = stage("render_figure", "figure=fig3", "--cfg", "all", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The overrides reach the config, and Hydra's job (default run directory, log) is the stage's.
    assert "figure: fig3" in result.stdout
    assert re.search(r"^  job:\n    name: render_figure$", result.stdout, re.MULTILINE), result.stdout


# Stages that draw or report from tables: a job of theirs loads no model, so it must not pay for torch
# and transformers (about 4 s of CPU in each of the 40-odd such jobs of `make figures`, issue 23): neither
# their modules nor the config check every job runs first (run_stage's check_run_config, which once
# loaded every editor for the methods' refusal reasons and so torch in every job).
TABLE_ONLY_STAGES = ("render_figure", "trace_figures", "edit_fig26", "tracing_report", "edit_merge", "edit_table1",
                     "edit_table7", "edit_timings", "trace_merge", "scorecard", "scorecard_models", "compare_runs",
                     "attention_report", "ft_trace_report", "backward_lens_merge", "analysis_report")


@pytest.mark.parametrize("name", TABLE_ONLY_STAGES)
def test_a_table_only_stage_loads_neither_torch_nor_transformers(name):
    code = (f"import sys; from backlens.stage import stage_function; stage_function({name!r}); "
            "from hydra import compose, initialize_config_dir; from backlens.config_checks import check_run_config; "
            f"initialize_config_dir(config_dir={str(PROJECT_ROOT / 'conf')!r}, version_base='1.3'); "
            # tiny-gemma3: a model whose run refuses methods, so the refusals are read too.
            "check_run_config(compose(config_name='config', overrides=['model=tiny-gemma3'])); "
            "from backlens.cli import limit_threads; limit_threads(1); "
            "import os; print(sorted({'torch', 'transformers'} & set(sys.modules)), os.environ['OMP_NUM_THREADS'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "1"]


def test_the_thread_limit_reaches_torch_loaded_before_or_after():
    code = ("import torch; from backlens.cli import limit_threads; limit_threads(1); a = torch.get_num_threads(); "
            "print(a)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["1"]
    code = "from backlens.cli import limit_threads; limit_threads(1); import torch; print(torch.get_num_threads())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["1"]


def test_the_gallery_does_not_load_pandas():
    code = "import sys, backlens.figures.gallery; print('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False"]
