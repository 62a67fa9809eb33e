"""Rule ``embedding_anisotropy``: the rank of t in LL(e_t) and LL(e_t - mean) for a seeded sample
of tokens (issue 17's diagnostic; the analysis report summarises it)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from backlens.analysis.anisotropy import embedding_self_ranks, sample_token_ids
from backlens.analysis.anisotropy_summary import anisotropy_summary
from backlens.io import write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    settings = cfg.analysis.anisotropy
    vocab_size = int(loaded.adapter.input_embedding.shape[0])
    token_ids = sample_token_ids(vocab_size, settings.n_tokens, int(cfg.seed))
    ranks = embedding_self_ranks(loaded.adapter, token_ids)
    decode = loaded.tokenizer.decode
    ranks["token"] = [decode([t]) for t in ranks["token_id"]]
    ranks["top_token"] = [decode([t]) for t in ranks["top_token_id"]]
    ranks.insert(0, "model", cfg.model.name)
    write_table(ranks, cfg.paths.embedding_anisotropy)
    for row in anisotropy_summary(ranks).itertuples():
        log.info("%s: t first in its own lens for %.1f%% of %d tokens (median rank %g); recurring tops: %s",
                 row.variant, 100 * row.share_rank_first, row.n_tokens, row.median_rank, row.recurring_top_tokens)
