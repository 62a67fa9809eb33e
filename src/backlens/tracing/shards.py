"""What the causal tracing shards share (rules ``trace_screen``, ``trace_shard``, ``trace_merge``): the
facts the screening chose, and the settings a shard's numbers depend on, which the merge checks."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from backlens.data.sources import identity_from_config


def settings_record(cfg: DictConfig, std: float | None) -> dict:
    """What a shard's numbers depend on (besides the model); shards merged together must agree."""
    tracing = cfg.tracing
    return {
        "model": str(cfg.model.name),
        "dtype": str(cfg.dtype),
        "seed": int(cfg.seed),
        "noise_scale": float(tracing.noise_scale),
        "noise_std": std,
        "noise_samples": int(tracing.noise_samples),
        "window": tracing.get("window"),
        "window_fraction": tracing.get("window_fraction"),
        "kinds": list(tracing.kinds),
        "severed_kinds": list(tracing.severed_kinds),
        "severed_at": str(tracing.severed_at),
        "known_facts": identity_from_config(cfg.known_facts, "known_1000"),
    }


def read_screening(path: str | Path) -> dict:
    """screening.json of rule trace_screen: the chosen facts (``chosen_known_ids``) and the screening's counts."""
    return json.loads(Path(path).read_text())
