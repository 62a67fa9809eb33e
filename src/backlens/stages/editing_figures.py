"""Rule ``edit_fig26``: Fig 26 from the shift sweep table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.figures.editing import shift_sweep_figure


def run(cfg: DictConfig) -> None:
    choice = json.loads(Path(cfg.paths.editing_sweep_choice).read_text())
    shift_sweep_figure(pd.read_parquet(cfg.paths.editing_sweep), cfg.model.name, cfg.paths.fig26, choice)
