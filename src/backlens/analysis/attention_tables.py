"""Tidy rows of the attention projections (W_Q, W_K, W_V, W_O) from one captured batch.

The same three views the paper takes of the MLP (Figs 3, 5, 6), asked of attention: the rank of
each projection's gradient from its P x d factors, the VJP norms by token, and the target's rank
in the logit lens of W_O's VJP (the attention output's VJP, a d_model vector like FF2's).
The batch must come from ``capture_gradient_factors(..., attention=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.gradient_tables import target_rank_rows
from backlens.analysis.ranks import float32_rtol, gradient_ranks_stacked
from backlens.models.adapters import PROJECTIONS, ArchitectureAdapter


def _require_attention(batch: CapturedBatch) -> None:
    if not batch.projections:
        raise ValueError("the batch holds no attention factors; capture it with attention=True")


def attention_rank_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """One row per (prompt, layer, projection): rank of dL/dW_proj from its factors.

    Columns as ``gradient_rank_rows`` (rank at P x eps of the factors' dtype, rank at matrix_rank's
    float32 rule for the full matrix, smallest over largest singular value) plus the projection's
    ``d_in`` / ``d_out`` (k and v have fewer output units under grouped-query attention, so their
    rank can be capped by d_out rather than P). All layers of one projection go through one
    batched factorisation.
    """
    _require_attention(batch)
    rows = []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        for name in PROJECTIONS:
            layers = sorted(layer for layer, n in batch.projections if n == name)
            factors = [batch.projection_factors(prompt, layer, name) for layer in layers]
            inputs_LxPxIn = torch.stack([inputs for inputs, _ in factors])
            vjps_LxPxOut = torch.stack([vjps for _, vjps in factors])
            projection = batch.projections[(layers[0], name)]
            d_in, d_out = projection.site.in_features, projection.out_features
            float32_tol = float32_rtol(d_out, d_in)
            for layer, result in zip(layers, gradient_ranks_stacked(inputs_LxPxIn, vjps_LxPxOut)):
                rows.append({
                    "case_id": case_id, "layer": layer, "projection": name, "n_tokens": length,
                    "d_in": d_in, "d_out": d_out, "rank": result.rank,
                    "rank_float32_tol": result.rank_at(float32_tol),
                    "sigma_min_ratio": result.sigma_ratios[-1], "rtol": result.rtol,
                })
    return rows


def attention_vjp_norm_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """One row per (prompt, layer, projection, position): ||VJP|| of the projection's output
    (q_i, k_i, v_i or the attention output) and ||x_i|| of its input (the normed residual for
    q/k/v, the heads' concatenated outputs for o)."""
    _require_attention(batch)
    keys = sorted(batch.projections)
    vjp_norms, input_norms = [], []
    for layer, name in keys:
        projection = batch.projections[(layer, name)]
        site_key = (layer, projection.site.matrix)
        vjp_norms.append(projection.select_outputs(batch.attention_vjps[site_key]).norm(dim=-1))
        input_norms.append(batch.attention_inputs[site_key].norm(dim=-1))
    vjp_KxBxT = torch.stack(vjp_norms).cpu()
    input_KxBxT = torch.stack(input_norms).cpu()
    rows = []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        vjps_KxP = vjp_KxBxT[:, prompt, :length].tolist()
        inputs_KxP = input_KxBxT[:, prompt, :length].tolist()
        for (layer, name), vjp_row, input_row in zip(keys, vjps_KxP, inputs_KxP):
            rows.extend(
                {"case_id": case_id, "layer": layer, "projection": name, "position": position,
                 "vjp_norm": vjp_norm, "input_norm": input_norm}
                for position, (vjp_norm, input_norm) in enumerate(zip(vjp_row, input_row))
            )
    return rows


def attention_output_vjp(batch: CapturedBatch, prompt: int, layer: int) -> torch.Tensor:
    """(P, d_model) VJP of W_O's output, i.e. of the attention output added to the residual."""
    _, vjps_PxD = batch.projection_factors(prompt, layer, "o")
    return vjps_PxD


def attention_target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, normalized: bool = False
) -> pd.DataFrame:
    """One row per (prompt, layer, position): rank of target_new's first token in LL(VJP of W_O).

    Same columns and conventions as the FF2 table (``ff2_target_rank_rows``): 0 = most probable,
    V-1 = least probable (the end a descent step promotes), -1 = exact-zero VJP (last layer's
    positions before the last reach no loss term), left out of averages.
    """
    _require_attention(batch)
    return target_rank_rows(batch, case_ids, adapter, lambda prompt, layer, length: attention_output_vjp(batch, prompt, layer),
                            normalized=normalized)
