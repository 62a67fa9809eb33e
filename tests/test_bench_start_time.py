"""benchmarks/start_time.py --smoke runs end to end and writes the benchmark JSON convention."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import PROJECT_ROOT

from backlens.bench import check_result


def test_start_time_smoke_writes_its_json(tmp_path):
    out = tmp_path / "start_time.json"
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    completed = subprocess.run([sys.executable, "benchmarks/start_time.py", "--smoke", "--out", str(out)],
                               cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert check_result(result) == []
    assert result["benchmark"] == "start_time" and result["smoke"] is True and result["model"] == "tiny-llama"
    for kind in ("off", "cold", "warm", "served_next", "served"):
        assert result[f"{kind}_s"] > result[f"load_{kind}_s"] >= 0
    assert result["ratios"]["off_over_warm"] == result["off_s"] / result["warm_s"]
