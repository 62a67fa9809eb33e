"""Start time of ``backlens explain``: the GGUF de-quantized on every start against the cache folder.

Each start is a fresh ``backlens`` process, run one after the other in this run on the same prompt:
- off:  ``BACKLENS_CACHE=off``, the GGUF parsed and de-quantized (the behaviour before the cache);
- cold: an empty cache folder: the same, plus writing the entry;
- warm: the entry read back, no resident server (``BACKLENS_SERVER=off``): every start pays Python's
  imports (torch, pandas, transformers), as a Snakemake job does;
- served_next: the start right after the one that started the resident server
  (backlens.commands.resident), which may still be importing;
- served: the server ready (the second start on, as a user typing commands gets it).
``warm`` and ``served`` keep the fastest of ``--warm`` starts. The model-load part of each
(``loaded in X s`` on stderr) is kept as ``load_<kind>_s``.

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


def start(model: str, cache: str, servers: str | None = None, argv: tuple[str, ...] = ()) -> tuple[float, float]:
    """(wall seconds of one ``backlens explain`` process, its model load as it reports it); with
    ``servers`` (a folder for the resident server's socket) the server is on, else off."""
    env = {**os.environ, "BACKLENS_CACHE": cache, "BACKLENS_SERVER": "on" if servers else "off",
           "BACKLENS_SERVER_DIR": servers or "",
           "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    began = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "backlens", *(argv or ("explain", PROMPT, TARGET, "--model",
                                                                              model))],
                               cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if argv:
        return wall, 0.0
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
    # The socket's folder is short (a socket path is limited to about 100 bytes).
    with tempfile.TemporaryDirectory(prefix="backlens-start-") as cache, \
            tempfile.TemporaryDirectory(prefix="bl-", dir="/tmp") as servers:
        off, load_off = start(args.model, "off")
        cold, load_cold = start(args.model, cache)
        warm, load_warm = min(start(args.model, cache) for _ in range(args.warm))
        try:
            start(args.model, cache, servers)  # runs in its own process, then starts the server
            served_next, load_served_next = start(args.model, cache, servers)
            served, load_served = min(start(args.model, cache, servers) for _ in range(args.warm))
            answered = sum(log.read_text().count("served explain") for log in Path(servers).glob("*.log"))
            if answered != 1 + args.warm:
                raise SystemExit(f"the resident server answered {answered} of the {1 + args.warm} starts meant for it")
        finally:
            start(args.model, cache, servers, argv=("server", "stop"))
    write_result(
        args.out, "start_time", model=args.model, device="cpu", smoke=args.smoke,
        settings={"prompt": PROMPT, "target": TARGET, "warm_starts": args.warm, "load_average": os.getloadavg()[0]},
        timings={"off": off, "cold": cold, "warm": warm, "served_next": served_next, "served": served,
                 "load_off": load_off, "load_cold": load_cold, "load_warm": load_warm,
                 "load_served_next": load_served_next, "load_served": load_served},
        ratios={"off_over_warm": off / warm, "load_off_over_load_warm": load_off / load_warm,
                "warm_over_served": warm / served},
        goals=[goal("explain from the second start (s), resident server", served, 5.0),
               goal("explain from the second start (s), no server", warm, 5.0)],
    )


if __name__ == "__main__":
    main()
