"""Single neurons versus the spanning set (Figs 7-9) and VJP similarity (Figs 22-23).

One SGD step with learning rate 1 changes
- FF2's value vector of neuron j by  -sum_i a_ij delta_i   (a: FF2 inputs, delta: FF2 VJPs),
- FF1's key vector of neuron j by    -sum_i g_ij x_i       (g: FF1 VJPs, x: FF1 inputs),
so every neuron's change lies in the span of the P vectors delta_i (FF2) or x_i (FF1).
For the neurons that change most we record how their change aligns with each spanning
vector (cosine) and where the target token ranks in the logit lens of the change.

The change alone does not say which way it moves the output: at the last token neuron j adds
a_j * v_j, so with a negative activation (SwiGLU and GELU both allow one) a change toward the
target lowers it. ``target_rank_of_signed_update`` ranks the target in the lens of
sign(coefficient at the last token) x change: the direction the step moves that output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.logit_lens import is_zero_vector, target_ranks
from backlens.models.adapters import ArchitectureAdapter


def neuron_change_factors(batch: CapturedBatch, prompt: int, layer: int, matrix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficients P x d_ff, spanning vectors P x d_model) of one SGD step (lr 1): neuron j
    changes by -sum_i coefficients[i, j] * spanning[i].

    FF2 neurons are value vectors spanned by the VJPs (coefficients: FF2 inputs); FF1
    neurons are key vectors spanned by the inputs (coefficients: FF1 VJPs).
    """
    inputs, vjps = batch.factors(prompt, (layer, matrix))
    if matrix == "ff2":
        return inputs, vjps
    return vjps, inputs


def change_norms(coefficients_PxF: torch.Tensor, spanning_PxD: torch.Tensor) -> torch.Tensor:
    """||change_j|| for every neuron via the P x P Gram matrix, without forming d_ff x d changes."""
    gram = spanning_PxD @ spanning_PxD.T
    return ((gram @ coefficients_PxF) * coefficients_PxF).sum(dim=0).clamp_min(0).sqrt()


def neuron_update_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, top_k: int
) -> list[dict]:
    """One row per (prompt, layer, matrix, top-k neuron, spanning position): the cosine between
    that neuron's change and the spanning vector, with the neuron's share of the update's
    squared norm and the target's rank in the logit lens of the change."""
    meta, changes_for_lens, signed_for_lens, targets = [], [], [], []
    for prompt, case_id in enumerate(case_ids):
        for layer, matrix in batch.sites:
            coefficients, spanning = neuron_change_factors(batch, prompt, layer, matrix)
            norms = change_norms(coefficients, spanning)
            total = norms.pow(2).sum()
            if total == 0:
                continue
            top = norms.topk(min(top_k, norms.numel()))
            changes = -(coefficients[:, top.indices].T @ spanning)  # (k, d_model)
            cosines = F.cosine_similarity(changes[:, None, :], spanning[None, :, :], dim=-1)
            cosines = cosines.masked_fill(is_zero_vector(spanning)[None, :], float("nan"))
            last_coefficients = coefficients[-1, top.indices]
            signs = torch.where(last_coefficients < 0, -1.0, 1.0).to(changes.dtype)
            for order, (neuron, norm) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
                meta.append((case_id, layer, matrix, neuron, order, norm, norm**2 / float(total), cosines[order].tolist(),
                             float(last_coefficients[order])))
                changes_for_lens.append(changes[order])
                signed_for_lens.append(signs[order] * changes[order])
                targets.append(batch.target_ids[prompt])
    if not meta:
        return []
    lens_ranks = target_ranks(adapter, torch.stack(changes_for_lens), torch.stack(targets)).tolist()
    signed_ranks = target_ranks(adapter, torch.stack(signed_for_lens), torch.stack(targets)).tolist()
    vocab_size = int(adapter.unembedding.shape[0])
    rows = []
    for (case_id, layer, matrix, neuron, order, norm, share, cosines, last_coefficient), lens_rank, signed_rank in zip(
        meta, lens_ranks, signed_ranks
    ):
        for position, cosine in enumerate(cosines):
            rows.append(
                {
                    "case_id": case_id,
                    "layer": layer,
                    "matrix": matrix,
                    "neuron": neuron,
                    "norm_order": order,
                    "update_norm": norm,
                    "update_share": share,
                    "target_rank_of_update": lens_rank,
                    "last_coefficient": last_coefficient,
                    "target_rank_of_signed_update": signed_rank,
                    "vocab_size": vocab_size,
                    "position": position,
                    "cosine": cosine,
                }
            )
    return rows


def _cosine_matrix(vectors_Nxd: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(vectors_Nxd.double(), dim=-1)
    cosines = unit @ unit.T
    zero = is_zero_vector(vectors_Nxd)
    return cosines.masked_fill(zero[:, None] | zero[None, :], float("nan"))


def vjp_similarity_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """Cosine similarity of FF2 VJPs (delta) between token pairs within each layer
    (kind "tokens") and between layer pairs at the last token (kind "layers")."""
    rows = []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        for layer in range(batch.n_layers):
            cosines = _cosine_matrix(batch.vjps[(layer, "ff2")][prompt, :length])
            for a in range(length):
                for b in range(a + 1, length):
                    rows.append(
                        {"case_id": case_id, "kind": "tokens", "layer_a": layer, "layer_b": layer,
                         "position_a": a, "position_b": b, "cosine": float(cosines[a, b])}
                    )
        last_token = torch.stack([batch.vjps[(layer, "ff2")][prompt, length - 1] for layer in range(batch.n_layers)])
        cosines = _cosine_matrix(last_token)
        for a in range(batch.n_layers):
            for b in range(a + 1, batch.n_layers):
                rows.append(
                    {"case_id": case_id, "kind": "layers", "layer_a": a, "layer_b": b,
                     "position_a": length - 1, "position_b": length - 1, "cosine": float(cosines[a, b])}
                )
    return rows
