"""Rule ``logit_lens_examples``: logit-lens tables of FF1 inputs and FF2 VJPs (Fig 4, Figs 11-15).

For each configured edit (prompt -> target_new) one forward and backward pass of the
paper's loss; per layer and prompt token, the most and least probable tokens of LL(x_i)
(FF1 input) and LL(delta_i) (FF2 VJP) and the rank of target_new's first token. Exact-zero
VJPs (last layer, before the last token) are marked and get no token rows. The loop is the
public API's (``backlens.api.lens.BackwardLens``), one example per batch.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from backlens.api.lens import BackwardLens, LensSettings
from backlens.io import write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    lens = BackwardLens(load_model(cfg.model, device=cfg.device, dtype=cfg.dtype))
    settings = cfg.analysis.logit_lens
    examples = list(settings.examples)
    items = lens.prepare(
        [e.prompt for e in examples], [e.target_new for e in examples], [e.subject for e in examples],
        target_trues=[e.get("target_true") for e in examples],
    )
    result = lens.run_prepared(
        items, batch_size=1, tables=("lens_cells", "lens_tokens"),
        settings=LensSettings(normalized=bool(settings.normalized), top_k=int(settings.top_k),
                              mask_special=bool(settings.get("mask_special_tokens", True))),
    )
    cells = result.lens_cells
    for index, example in enumerate(examples):
        last = cells[(cells.example == index) & (cells.vector == "ff2_vjp") & (cells.segment == "last")]
        log.info("%r -> %r: target rank in LL(delta) at the last token per layer: %s",
                 example.prompt, example.target_new, last.target_rank.tolist())
    write_table(cells, cfg.paths.logit_lens_cells)
    write_table(result.lens_tokens, cfg.paths.logit_lens_tokens)
