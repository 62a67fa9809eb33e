"""Lemma 4.1 checked against autograd: a weight's gradient is sum_i delta_i x_i^T over the positions i,
from the module's inputs x_i and output VJPs delta_i (rules ``lemma_check`` and ``attention``).

One forward and backward pass of a prompt alone goes both into the hooked modules (their x_i and
delta_i) and into the weights: autograd's dL/dW is the reference. ``relative_error`` compares the sum
built from the factors of that same pass (autograd forms the same sum, so 0 means bit-identical; a
wrong factor or position shows as an error of order 1) and ``relative_error_batched`` the factors
captured in padded batches, as the Backward Lens tables use them (float32 round-off of the batched
forward pass adds to it).
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from backlens.analysis.capture import CapturedBatch, capture_gradient_factors, last_position_loss
from backlens.analysis.ranks import gradient_rank
from backlens.data.batching import pad_batch
from backlens.models.loading import LoadedModel
from backlens.models.sites import LinearSite


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


def relative_error(site: LinearSite, reference: torch.Tensor, inputs_PxIn: torch.Tensor,
                   vjps_PxOut: torch.Tensor) -> float:
    """||sum_i delta_i x_i^T - dL/dW||_F / ||dL/dW||_F, the sum built in the module's weight layout
    (in place, so one d_out x d_in buffer per call)."""
    difference = site.gradient_from_factors(inputs_PxIn, vjps_PxOut).sub_(reference)
    return float(difference.norm() / reference.norm().clamp_min(1e-30))


def lemma_rows(loaded: LoadedModel, batch: CapturedBatch, prompt: int, case_id: int, input_ids: list[int],
               target_id: int, crosscheck: bool | Collection[int]) -> list[dict]:
    """Rows for one prompt of a captured batch: reconstruction error and rank checks.

    One forward and backward pass of the prompt alone gives both its factors (inputs x_i and VJPs
    delta_i at the hooked modules) and autograd's dL/dW of every MLP weight (the reference).
    """
    alone = capture_gradient_factors(
        loaded.model, loaded.adapter, [input_ids], [target_id], pad_id=loaded.tokenizer.pad_token_id,
        submodules=False, weight_gradients=True,
    )
    rows = []
    for key, reference in alone.weight_gradients.items():
        site = alone.sites[key]
        inputs, vjps = batch.factors(prompt, key)
        factor_rank = gradient_rank(inputs, vjps)
        row = {
            "case_id": case_id,
            "layer": key[0],
            "matrix": key[1],
            "n_tokens": len(input_ids),
            "relative_error": relative_error(site, reference, *alone.factors(0, key)),
            "relative_error_batched": relative_error(site, reference, inputs, vjps),
            "rank_factors": factor_rank.rank,
            "rank_full_float64": None,
            "rank_full_float32_default_tol": None,
        }
        if crosscheck is True or (crosscheck and key[0] in crosscheck):
            full64 = vjps.double().T @ inputs.double()
            row["rank_full_float64"] = int(torch.linalg.matrix_rank(full64, rtol=factor_rank.rtol))
            row["rank_full_float32_default_tol"] = int(torch.linalg.matrix_rank(reference.float()))
        rows.append(row)
    return rows


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
