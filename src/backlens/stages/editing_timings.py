"""Rule ``edit_timings``: seconds per edit of every Table 1 method.

Kept apart from Table 1 because timings differ from run to run while Table 1 is byte-reproducible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.artifacts import artifact
from backlens.editing.method_configs import methods_run, not_run_line
from backlens.io import write_table, write_text

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    rows = []
    for name in methods_run(cfg, cfg.editing.table1_methods):
        timings_path, summary_path = (Path(artifact(key, editing=cfg.paths.editing, method=str(name)))
                                      for key in ("editing_timings", "editing_summary"))
        if not timings_path.exists():
            raise FileNotFoundError(f"no timings for method {name} at {timings_path}: run `snakemake {timings_path}` first")
        timings = json.loads(timings_path.read_text())
        label = json.loads(summary_path.read_text())["label"]
        rows.append({"method": str(name), "label": label, "n_cases": len(timings["edit_seconds"]),
                     "edit_seconds_mean": timings["edit_seconds_mean"], "edit_seconds_std": timings["edit_seconds_std"],
                     "setup_seconds": timings["setup_seconds"]})
    frame = pd.DataFrame(rows)
    markdown = "| Method | Seconds per edit | Set-up s |\n|---|---|---|\n" + "".join(
        f"| {r.label} | {r.edit_seconds_mean:.3f} ± {r.edit_seconds_std:.3f} | {r.setup_seconds:.1f} |\n" for r in frame.itertuples()
    )
    markdown += (f"\n{cfg.model.name}: mean ± std over the {frame['n_cases'].iloc[0]} Table 1 cases of the wall-clock time of "
                 "one edit (weights restored in between); set-up: building the editor (mean over shard jobs). "
                 "Depends on the machine and on the jobs sharing it.\n")
    markdown += not_run_line(cfg)
    out = Path(cfg.paths.edit_timings)
    write_table(frame, out)
    write_text(markdown, out.with_suffix(".md"))
    for row in frame.itertuples():
        print(f"per-edit time {row.method}: {row.edit_seconds_mean:.4f} s")
