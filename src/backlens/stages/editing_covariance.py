"""Rule ``edit_covariance``: FF2 second moments for ROME/MEMIT and held-out blocks for perplexity."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from backlens.editing.covariance import accumulate_second_moments, blocks_for, corpus_batches, corpus_description
from backlens.editing.run_config import statistics_layers
from backlens.io import write_torch
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    corpus = OmegaConf.to_container(cfg.editing.corpus, resolve=True)
    layers = statistics_layers(cfg, loaded.adapter.n_layers)
    d_ff = max(loaded.adapter.ff2_site(layer).in_features for layer in layers)
    corpus["n_blocks"] = blocks_for(corpus, d_ff)
    log.info("FF2 second moments of layers %s on %s", layers, corpus_description(corpus))
    out = Path(cfg.paths.editing_stats)
    state = accumulate_second_moments(loaded, layers, corpus, out.with_suffix(".partial"))
    mom2 = {layer: (total / state["n_tokens"]) for layer, total in state["sums"].items()}
    write_torch({"mom2": mom2, "n_tokens": state["n_tokens"], "corpus": state["corpus"], "layers": layers,
                 "model": cfg.model.name}, out)
    out.with_suffix(".partial").unlink(missing_ok=True)
    n_heldout_batches = -(-int(corpus["n_heldout_blocks"]) // int(corpus["batch_size"]))
    with torch.no_grad():
        heldout = torch.cat(corpus_batches(loaded, corpus, range(n_heldout_batches), held_out=True))
    heldout = heldout[: int(corpus["n_heldout_blocks"])]
    write_torch({"blocks": heldout, "corpus": state["corpus"]}, cfg.paths.editing_heldout)
    log.info(
        "wrote %s (%d tokens, corpus %s) and %d held-out blocks in %.0f s",
        out, state["n_tokens"], state["corpus"], len(heldout), time.perf_counter() - started,
    )
