"""benchmarks/editing_latency.py --smoke runs end to end and writes the benchmark JSON convention."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import PROJECT_ROOT, require_shared

from backlens.bench import check_result


def test_editing_latency_smoke_writes_its_json(tmp_path):
    require_shared("data", "counterfact")
    out = tmp_path / "editing_latency.json"
    # The worktree's sources first, as the benchmark is run from the project root; a bare
    # composition without the ${artifact:...} resolver used to fail here (issue 23).
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    completed = subprocess.run(
        [sys.executable, "benchmarks/editing_latency.py", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert check_result(result) == []
    assert result["benchmark"] == "editing_latency" and result["smoke"] is True and result["model"] == "tiny-llama"
    assert result["settings"]["methods"] == ["shift", "ft", "rome"] and result["settings"]["left_out"] == {}
    for method in result["settings"]["methods"]:
        for kind in ("edit", "eval", "eval_generating", "perplexity", "perplexity_first", "perplexity_full",
                     "eval_reference", "eval_generating_reference"):
            assert result[f"{method}_{kind}_s"] > 0
        ratio = result["ratios"][f"{method}_perplexity_over_full"]
        assert ratio == result[f"{method}_perplexity_s"] / result[f"{method}_perplexity_full_s"]
        # The cached and the whole forward's perplexity: the same number to float32 round-off.
        values = result["perplexity_values"][method]
        assert values["rel_diff"] == abs(values["cached"] - values["full"]) / values["full"] < 1e-5
        for kind in ("eval", "eval_generating"):
            ratio = result["ratios"][f"{method}_{kind}_over_reference"]
            assert ratio == result[f"{method}_{kind}_s"] / result[f"{method}_{kind}_reference_s"]
    assert result["ratios"]["rome_edit_over_shift_edit"] == result["rome_edit_s"] / result["shift_edit_s"]
    # Efficacy by free generation (issue 26): its time per case alone and in the rule's batch, against
    # a shift scoring case's evaluation.
    for kind in ("alone", "batch"):
        assert result[f"free_generation_{kind}_s"] > 0
        assert result["ratios"][f"shift_free_generation_{kind}_over_eval"] == result[f"free_generation_{kind}_s"] / result["shift_eval_s"]
    assert result["shift_eval_generating_batch_s"] > 0 and result["settings"]["generation_batch"] == 2
    assert {goal["name"].split(":")[0] for goal in result["goals"]} == {"shift_eval_s", "shift_eval_generating_batch_s"}
    for goal in result["goals"]:
        assert goal["met"] == (goal["value"] <= goal["bound"])
    assert all(key.endswith("_s") for key, value in result.items() if isinstance(value, float))


def test_any_backlens_import_registers_the_artifact_resolver(tmp_path):
    """A script that imports some backlens module and composes conf/ resolves ${artifact:...} paths
    (the benchmark failed on method.base.stats_path when only conftest registered it)."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "import backlens.editing.requests\n"
        f"with initialize_config_dir(config_dir={str(PROJECT_ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('config', ['method=rome'])\n"
        "print(cfg.method.base.stats_path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().endswith("editing/ff2_mom2.pt")
