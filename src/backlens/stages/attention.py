"""Rule ``attention`` (issue 16): the Backward Lens on W_Q, W_K, W_V, W_O.

``run``: one capture pass (MLP and attention sites together) per batch of the sampled prompts,
three tidy tables (ranks, VJP norms, target ranks in LL of W_O's VJP), and Lemma 4.1 checked per
projection against autograd on the first ``analysis.attention.n_lemma`` prompts (with the rank
from factors cross-checked by an SVD of the full float64 gradient). Its report, results/{run}/attention.md,
is rule ``attention_report`` (``stages/beyond_reports.py``), from those tables only.
"""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from backlens.analysis.lemma import attention_lemma_rows
from backlens.api.lens import ATTENTION_TABLES, BackwardLens, LensSettings
from backlens.api.sampled_prompts import read_prompts
from backlens.io import write_json, write_table
from backlens.models.loading import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompts = read_prompts(cfg.paths.prompts, cfg.model.name)
    settings = cfg.analysis
    n_prompts = settings.attention.n_prompts
    prompts = prompts.sliced(0, len(prompts.case_ids) if n_prompts is None else int(n_prompts))
    items = prompts.items()
    lens = BackwardLens(loaded)
    result = lens.run_prepared(items, batch_size=int(settings.batch_size), tables=ATTENTION_TABLES,
                               settings=LensSettings(normalized=bool(settings.normalized)))
    for name in ATTENTION_TABLES:
        write_table(result.tables[name], cfg.paths[name])
        log.info("wrote %s (%d rows)", cfg.paths[name], len(result.tables[name]))
    n_check = min(int(settings.attention.n_lemma), len(items))
    lemma_rows: list[dict] = []
    if n_check:
        # The checked prompts in the padded batch the tables used (the first batch_size prompts).
        _, batch = next(lens.capture(items[: int(settings.batch_size)], int(settings.batch_size),
                                     submodules=False, attention=True, progress=False))
        for prompt in range(n_check):
            lemma_rows += attention_lemma_rows(loaded, batch, prompt, prompts.case_ids[prompt],
                                               prompts.input_ids[prompt], prompts.target_ids[prompt])
    lemma = pd.DataFrame(lemma_rows)
    lemma.insert(0, "model", cfg.model.name)
    write_table(lemma, cfg.paths.attention_lemma)
    write_json({
        "model": cfg.model.name, "model_source": loaded.source, "architecture": loaded.adapter.describe(),
        "dtype": str(loaded.dtype), "n_prompts": len(items), "n_lemma_prompts": n_check,
        "projections": {f"{p.name}": {"site": p.site.matrix, "d_in": p.site.in_features, "d_out": p.out_features}
                        for p in loaded.adapter.attention_projections(0)},
        "loss": cfg.paper.loss, "seconds": result.seconds,
    }, cfg.paths.attention_meta)
    if len(lemma):
        log.info("Lemma 4.1 per projection: max relative error %.3g (batched %.3g) over %d gradients",
                 lemma.relative_error.max(), lemma.relative_error_batched.max(), len(lemma))
