"""Rule ``lemma_check``: Lemma 4.1 against autograd, and factor ranks against full-matrix SVDs.

For every sampled prompt, dL/dW of every MLP matrix is computed by a plain backward
pass of that prompt alone into the weights (the reference) and compared with
sum_i delta_i x_i^T built from captured factors: ``relative_error`` uses factors captured
from that prompt alone (the Lemma itself), ``relative_error_batched`` the factors captured
in padded batches, exactly as the ``backward_lens`` rule uses them (float32 round-off of
the batched forward pass adds to it). On the first ``n_crosscheck`` prompts the rank from the factors is also
compared with ``torch.linalg.matrix_rank`` of the full gradient: in float64 with the same
tolerance (must agree) and in float32 with matrix_rank's default tolerance (the pitfall).
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig

from backlens.analysis.capture import CapturedBatch, capture_gradient_factors, last_position_loss
from backlens.analysis.ranks import gradient_rank
from backlens.data.batching import pad_batch
from backlens.io import write_table
from backlens.models.loading import LoadedModel, load_model
from backlens.models.sites import LinearSite
from backlens.stages.backward_lens import capture_batches, read_prompts

log = logging.getLogger(__name__)


def autograd_gradients(loaded: LoadedModel, input_ids: list[int], target_id: int,
                       sites: list[LinearSite] | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """dL/dW of every MLP matrix (or of ``sites``) for one prompt, from a backward pass into the weights."""
    adapter = loaded.adapter
    if sites is None:
        sites = [site for layer in range(adapter.n_layers) for site in adapter.linear_sites(layer)]
    ids, mask = pad_batch([input_ids], loaded.tokenizer.pad_token_id, loaded.device)
    with torch.enable_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
        loss = last_position_loss(logits, [len(input_ids)], torch.tensor([target_id], device=loaded.device)).sum()
        grads = torch.autograd.grad(loss, [site.weight for site in sites])
    return {(site.layer, site.matrix): grad for site, grad in zip(sites, grads)}


def lemma_rows(loaded: LoadedModel, batch: CapturedBatch, prompt: int, case_id: int, input_ids: list[int],
               target_id: int, crosscheck: bool) -> list[dict]:
    """Rows for one prompt of a captured batch: reconstruction error and rank checks."""
    alone = capture_gradient_factors(
        loaded.model, loaded.adapter, [input_ids], [target_id], pad_id=loaded.tokenizer.pad_token_id, submodules=False
    )
    rows = []
    for key, reference in autograd_gradients(loaded, input_ids, target_id).items():
        scale = reference.norm().clamp_min(1e-30)
        inputs, vjps = batch.factors(prompt, key)
        factor_rank = gradient_rank(inputs, vjps)
        row = {
            "case_id": case_id,
            "layer": key[0],
            "matrix": key[1],
            "n_tokens": len(input_ids),
            "relative_error": float((alone.gradient(0, key) - reference).norm() / scale),
            "relative_error_batched": float((batch.gradient(prompt, key) - reference).norm() / scale),
            "rank_factors": factor_rank.rank,
            "rank_full_float64": None,
            "rank_full_float32_default_tol": None,
        }
        if crosscheck:
            full64 = vjps.double().T @ inputs.double()
            row["rank_full_float64"] = int(torch.linalg.matrix_rank(full64, rtol=factor_rank.rtol))
            row["rank_full_float32_default_tol"] = int(torch.linalg.matrix_rank(reference.float()))
        rows.append(row)
    return rows


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompts = read_prompts(cfg.paths.prompts, cfg.model.name)
    n_crosscheck = int(cfg.analysis.lemma.n_crosscheck)
    rows: list[dict] = []
    index = 0  # position in sample order, which the batches follow
    for case_ids, batch in capture_batches(loaded, prompts, int(cfg.analysis.batch_size), submodules=False):
        for prompt, case_id in enumerate(case_ids):
            rows.extend(lemma_rows(loaded, batch, prompt, case_id, prompts.input_ids[index],
                                   prompts.target_ids[index], crosscheck=index < n_crosscheck))
            index += 1
    table = pd.DataFrame(rows)
    table.insert(0, "model", cfg.model.name)
    table.insert(1, "dtype", str(loaded.dtype).removeprefix("torch."))
    for column in ("rank_full_float64", "rank_full_float32_default_tol"):
        table[column] = table[column].astype("Int64")
    write_table(table, cfg.paths.lemma_check)
    log.info("max relative error %.3g (batched capture: %.3g) over %d gradients",
             table.relative_error.max(), table.relative_error_batched.max(), len(table))
