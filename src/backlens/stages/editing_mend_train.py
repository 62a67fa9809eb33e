"""Rule ``edit_mend_train``: train MEND's editor on cases outside the evaluation range."""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from backlens.data.sources import identity_from_config
from backlens.editing.base import NoEdit
from backlens.editing.mend_training import train_mend
from backlens.editing.run_config import other_method_hparams, requests_in_range
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    training = cfg.editing.mend_training
    first, count = int(training.first_case), int(training.n_cases)
    evaluation_end = int(cfg.editing.first_case) + int(cfg.editing.n_cases)
    if first < evaluation_end and int(cfg.editing.first_case) < first + count:
        raise ValueError(
            f"editing.mend_training cases {first}..{first + count - 1} overlap the evaluation range "
            f"{cfg.editing.first_case}..{evaluation_end - 1}; move editing.mend_training.first_case"
        )
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    hparams = other_method_hparams(cfg, "mend", loaded.adapter.n_layers)
    requests = requests_in_range(cfg, first, count, "editing.mend_training")
    state = train_mend(NoEdit(loaded, {}), requests, hparams, cfg.paths.editing_mend, seed=int(training.seed),
                       dataset=identity_from_config(cfg.dataset, "CounterFact"))
    last = state["history"][-25:]
    log.info(
        "MEND trained %d steps in %.0f s; last 25 steps: edit NLL %.3f, locality KL %.4f",
        len(state["history"]), time.perf_counter() - started,
        sum(h["edit_nll"] for h in last) / len(last), sum(h["locality_kl"] for h in last) / len(last),
    )
