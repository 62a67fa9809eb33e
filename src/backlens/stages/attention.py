"""Rule ``attention`` (issue 16): the Backward Lens on W_Q, W_K, W_V, W_O; rule ``attention_report``.

``run``: one capture pass (MLP and attention sites together) per batch of the sampled prompts,
three tidy tables (ranks, VJP norms, target ranks in LL of W_O's VJP), and Lemma 4.1 checked per
projection against autograd on the first ``analysis.attention.n_lemma`` prompts (with the rank
from factors cross-checked by an SVD of the full float64 gradient). ``report``: results/{run}/attention.md
from those tables only.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig

from backlens.analysis.beyond_summary import attention_markdown
from backlens.analysis.capture import CapturedBatch, capture_gradient_factors
from backlens.analysis.ranks import gradient_rank
from backlens.api.lens import ATTENTION_TABLES, BackwardLens, LensSettings
from backlens.io import write_json, write_table, write_text
from backlens.models.loading import LoadedModel, load_model
from backlens.stages.backward_lens import read_prompts
from backlens.stages.lemma_check import autograd_gradients

log = logging.getLogger(__name__)


def autograd_attention_gradients(loaded: LoadedModel, input_ids: list[int], target_id: int) -> dict:
    """dL/dW of every attention site (fused Q/K/V as one) for one prompt, by a backward pass into the weights."""
    adapter = loaded.adapter
    sites = [site for layer in range(adapter.n_layers) for site in adapter.attention_sites(layer)]
    return autograd_gradients(loaded, input_ids, target_id, sites)


def attention_lemma_rows(loaded: LoadedModel, batch: CapturedBatch, prompt: int, case_id: int,
                         input_ids: list[int], target_id: int) -> list[dict]:
    """Per (layer, projection): Lemma 4.1 from factors vs autograd's slice of the site's gradient,
    from the prompt captured alone and from its padded batch; factor rank vs full float64 SVD rank."""
    alone = capture_gradient_factors(loaded.model, loaded.adapter, [input_ids], [target_id],
                                     pad_id=loaded.tokenizer.pad_token_id, submodules=False, attention=True)
    reference = autograd_attention_gradients(loaded, input_ids, target_id)
    rows = []
    for (layer, name), projection in sorted(batch.projections.items()):
        expected = projection.select_weight(reference[(layer, projection.site.matrix)])
        scale = expected.norm().clamp_min(1e-30)
        inputs, vjps = batch.projection_factors(prompt, layer, name)
        factor_rank = gradient_rank(inputs, vjps)
        full64 = vjps.double().T @ inputs.double()
        rows.append({
            "case_id": case_id, "layer": layer, "projection": name, "n_tokens": len(input_ids),
            "relative_error": float((alone.projection_gradient(0, layer, name) - expected).norm() / scale),
            "relative_error_batched": float((batch.projection_gradient(prompt, layer, name) - expected).norm() / scale),
            "rank_factors": factor_rank.rank,
            "rank_full_float64": int(torch.linalg.matrix_rank(full64, rtol=factor_rank.rtol)),
        })
    return rows


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


def report(cfg: DictConfig) -> None:
    """results/{run}/attention.md from the attention tables and the prompt table."""
    paths = cfg.paths
    tables = {name: pd.read_parquet(paths[name]) for name in (*ATTENTION_TABLES, "attention_lemma", "prompts")}
    write_text(attention_markdown(tables, cfg.model.name), paths.attention_report)
