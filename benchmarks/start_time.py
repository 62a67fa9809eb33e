"""Start time of ``backlens explain``: the GGUF de-quantized on every start against the cache folder.

Each start is a fresh Python process (imports included, as a user or a Snakemake job pays them),
run one after the other in this run on the same prompt:
- off:  ``BACKLENS_CACHE=off``, the GGUF parsed and de-quantized (the behaviour before the cache);
- cold: an empty cache folder: the same, plus writing the entry;
- warm: the entry read back (the second start on; ``--warm`` starts, the fastest kept).
The model-load part of each (``loaded in X s`` on stderr) is kept as ``load_<kind>_s``.

Usage (from the project root, inside the environment):
    python benchmarks/start_time.py [--model smollm2-135m] [--warm 2] [--out F.json] [--smoke]
Goal (issue 27): ``backlens explain "Obama grew up in" " Paris"`` within 5 s end to end from the
second start on, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROMPT, TARGET = "Obama grew up in", " Paris"
SMOKE = {"model": "tiny-llama", "warm": 1}


def start(model: str, cache: str) -> tuple[float, float]:
    """(wall seconds of one ``backlens explain`` process, its model load as it reports it)."""
    env = {**os.environ, "BACKLENS_CACHE": cache,
           "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    began = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "backlens", "explain", PROMPT, TARGET, "--model", model],
                               cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if completed.returncode != 0:
        raise SystemExit(f"backlens explain failed (BACKLENS_CACHE={cache}):\n{completed.stderr[-2000:]}")
    loaded = re.search(r"loaded in ([0-9.]+) s", completed.stderr)
    if loaded is None:
        raise SystemExit(f"no 'loaded in X s' line in backlens explain's stderr:\n{completed.stderr[-2000:]}")
    return wall, float(loaded.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--warm", type=int, default=2, help="warm starts timed, the fastest kept")
    parser.add_argument("--out", default=None, help="write the benchmark JSON here")
    parser.add_argument("--smoke", action="store_true", help=f"tiny random model (only its tokenizer cached): {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.warm = SMOKE["model"], SMOKE["warm"]
    with tempfile.TemporaryDirectory(prefix="backlens-start-") as cache:
        off, load_off = start(args.model, "off")
        cold, load_cold = start(args.model, cache)
        warm, load_warm = min(start(args.model, cache) for _ in range(args.warm))
    write_result(
        args.out, "start_time", model=args.model, device="cpu", smoke=args.smoke,
        settings={"prompt": PROMPT, "target": TARGET, "warm_starts": args.warm, "load_average": os.getloadavg()[0]},
        timings={"off": off, "cold": cold, "warm": warm, "load_off": load_off, "load_cold": load_cold,
                 "load_warm": load_warm},
        ratios={"off_over_warm": off / warm, "load_off_over_load_warm": load_off / load_warm},
        goals=[goal("explain from the second start (s)", warm, 5.0)],
    )


if __name__ == "__main__":
    main()
