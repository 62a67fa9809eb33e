"""The shift sweep's evaluation (rule ``edit_shift_sweep``, Fig 26): each (layer, case, eta) scored
through ``ScoresAboveBlock`` (the stream entering the edited block once per case, then only the
blocks from it on) against the whole forward per eta (the path before), side by side in one run on
the same cases, variants, layers and etas, alternately; the rows of the two must be equal.

    python benchmarks/sweep_speed.py [--model smollm2-135m] [--cases 4] [--repeats 2] [--out F.json] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from backlens.bench import goal, write_result
from backlens.conf import DEFAULT_MODEL
from backlens.editing.run_config import requests_in_range, sweep_layers
from backlens.editing.selection import METRICS, unedited_metrics
from backlens.models.adapters import ArchitectureAdapter
from backlens.models.loading import load_model
from backlens.project import project_root
from backlens.stages.editing_sweep import sweep_variant

VARIANTS = ("shift", "shift_whitened")  # the plain key and the whitened one (which reads the FF2 statistics)
SMOKE = {"model": "tiny-llama", "cases": 2, "repeats": 1, "variants": ("shift",)}


def sweep_rows(cfg, loaded, variants, requests, baseline, batch_size: int, whole: bool) -> pd.DataFrame:
    """The sweep's rows; ``whole``: every eta through the whole forward (no block counts as the lowest changed)."""
    original = ArchitectureAdapter.lowest_block
    if whole:
        ArchitectureAdapter.lowest_block = lambda self, parameters: None
    try:
        return pd.DataFrame([row for method in variants for row in sweep_variant(
            cfg, loaded, method, sweep_layers(cfg, method, loaded.adapter.n_layers), requests, baseline, batch_size)])
    finally:
        ArchitectureAdapter.lowest_block = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cases", type=int, default=4, help="sweep cases (editing.sweep.first_case on)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sweep job runs with one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help=f"seconds: {SMOKE}")
    args = parser.parse_args()
    model, cases, repeats, variants = ((SMOKE["model"], SMOKE["cases"], SMOKE["repeats"], SMOKE["variants"])
                                       if args.smoke else (args.model, args.cases, args.repeats, VARIANTS))
    torch.set_num_threads(args.threads)
    # The whitened key needs the FF2 statistics, which the smoke model has none of: its sweep is the plain shift.
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    loaded = load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    requests = requests_in_range(cfg, int(cfg.editing.sweep.first_case), cases, "editing.sweep")
    batch_size = int(cfg.editing.evaluation.batch_size)
    baseline = unedited_metrics(loaded, requests, batch_size)
    wall: dict[str, list[float]] = {"cached": [], "whole": []}
    cpu: dict[str, list[float]] = {"cached": [], "whole": []}
    rows: dict[str, pd.DataFrame] = {}
    for _ in range(repeats):
        for name in ("whole", "cached"):
            started, started_cpu = time.perf_counter(), time.process_time()
            rows[name] = sweep_rows(cfg, loaded, variants, requests, baseline, batch_size, whole=name == "whole")
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    metrics = list(METRICS)
    if not rows["cached"][metrics].equals(rows["whole"][metrics]):
        raise SystemExit("the cached stream's sweep rows differ from the whole forward's")
    cached_s, whole_s = min(wall["cached"]), min(wall["whole"])
    write_result(args.out, Path(__file__).stem, model=loaded.name, device="cpu", smoke=args.smoke,
                 settings={"variants": list(variants), "cases": cases, "etas": list(cfg.editing.sweep.etas),
                           "layers": {m: sweep_layers(cfg, m, loaded.adapter.n_layers) for m in variants},
                           "evaluations": len(rows["cached"]), "repeats": repeats, "threads": args.threads,
                           "rows_equal": True},
                 timings={"sweep_cached": cached_s, "sweep_whole": whole_s,
                          "sweep_cached_cpu": min(cpu["cached"]), "sweep_whole_cpu": min(cpu["whole"])},
                 ratios={"whole_over_cached": whole_s / cached_s,
                         "whole_over_cached_cpu": min(cpu["whole"]) / min(cpu["cached"])},
                 goals=[goal("sweep whole forward / cached stream (CPU)", min(cpu["whole"]) / min(cpu["cached"]), 1.5,
                             at_most=False)])


if __name__ == "__main__":
    main()
