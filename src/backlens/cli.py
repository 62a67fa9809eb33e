"""Shared behaviour of every stage run through ``python -m backlens.stage`` (src/backlens/stage.py)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from backlens.config_checks import check_run_config
from backlens.errors import UserError

log = logging.getLogger("backlens")


def run_stage(cfg: DictConfig, stage: Callable[[DictConfig], None]) -> None:
    """Log the resolved config, run one stage, and turn user errors into one clear line."""
    log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("num_threads") is not None:
        limit_threads(int(cfg.num_threads))
    try:
        check_run_config(cfg)
        stage(cfg)
    except UserError as error:
        # The message already says what is wrong and how to fix it: one line, no traceback.
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def limit_threads(n_threads: int) -> None:
    """At most ``n_threads`` torch threads in this process. The workflow runs several jobs side by side,
    each with its `threads`; more torch threads than that on a shared CPU stall on synchronisation.
    A stage whose module loaded torch gets the limit now; one that did not (figures, tables, reports)
    does not load it for this (about 1 s of each such job): torch reads OMP_NUM_THREADS when loaded."""
    os.environ["OMP_NUM_THREADS"] = str(n_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n_threads)
