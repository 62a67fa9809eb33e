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

All prompts, layers and neurons of a batch go through one set of batched tensor operations on the
batch's device (factors padded with zero rows, which change no sum), copied to the CPU once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.gradient_tables import stacked_layers, to_device
from backlens.analysis.logit_lens import is_zero_vector, lens_is_odd, lens_pass
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


def neuron_update_tensors(batch: CapturedBatch, adapter: ArchitectureAdapter, *, top_k: int) -> dict[str, torch.Tensor]:
    """On the batch's device, dims (B, L, M, k) over prompts, layers, the layer's matrices (site order) and
    the top-k neurons by change norm: ``neuron``, ``norm``, ``total`` (squared norm of the whole update,
    (B, L, M)), ``last_coefficient``, ``rank`` and ``signed_rank`` (target in the lens of the change and of
    the signed change) and ``cosine`` (B, L, M, k, T; NaN against a zero spanning vector)."""
    matrices = [matrix for layer, matrix in batch.sites if layer == 0]
    any_key = next(iter(batch.inputs))
    device, n_padded = batch.inputs[any_key].device, batch.inputs[any_key].shape[1]
    lengths = to_device(np.asarray(batch.lengths, dtype=np.int64), device)
    real_BxT = torch.arange(n_padded, device=device)[None, :] < lengths[:, None]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ("neuron", "norm", "total", "last_coefficient",
                                                                "change", "cosine")}
    for matrix in matrices:
        inputs = stacked_layers(batch.inputs, batch.n_layers, matrix) * real_BxT[:, None, :, None]  # (B, L, T, d_in)
        vjps = stacked_layers(batch.vjps, batch.n_layers, matrix)  # exactly zero at padding
        coefficients, spanning = (inputs, vjps) if matrix == "ff2" else (vjps, inputs)
        gram = spanning @ spanning.mT  # (B, L, T, T): norms via the Gram matrix, never d_ff x d changes
        norms = ((gram @ coefficients) * coefficients).sum(dim=-2).clamp_min(0).sqrt()  # (B, L, F)
        top = norms.topk(min(top_k, norms.shape[-1]), dim=-1)
        chosen = coefficients.gather(-1, top.indices[:, :, None, :].expand(-1, -1, n_padded, -1))  # (B, L, T, k)
        changes = -(chosen.mT @ spanning)  # (B, L, k, d)
        eps = 1e-8  # F.cosine_similarity's: each norm clamped at eps
        unit_changes = changes / changes.norm(dim=-1, keepdim=True).clamp_min(eps)
        unit_spanning = spanning / spanning.norm(dim=-1, keepdim=True).clamp_min(eps)
        cosines = (unit_changes @ unit_spanning.mT).masked_fill(is_zero_vector(spanning)[:, :, None, :], float("nan"))
        last = (lengths - 1)[:, None, None, None].expand(-1, batch.n_layers, 1, chosen.shape[-1])
        out["neuron"].append(top.indices)
        out["norm"].append(top.values)
        out["total"].append(norms.pow(2).sum(dim=-1))
        out["last_coefficient"].append(chosen.gather(2, last)[:, :, 0, :])
        out["change"].append(changes)
        out["cosine"].append(cosines)
    result = {name: torch.stack(parts, dim=2) for name, parts in out.items()}  # matrices after layers
    changes = result.pop("change")
    flat = changes.reshape(-1, changes.shape[-1])
    per_row = changes.shape[1] * changes.shape[2] * changes.shape[3]
    targets = batch.target_ids[:, None].expand(-1, per_row).reshape(-1)  # (repeat_interleave may sync)
    negative = result["last_coefficient"] < 0
    if lens_is_odd(adapter):  # LL(-c) = -LL(c): the signed change's rank is the count below in LL(c)
        lens = lens_pass(adapter, flat, targets, with_below=True)
        result["rank"] = lens.ranks.view(negative.shape)
        result["signed_rank"] = torch.where(negative, lens.below.view(negative.shape), result["rank"])
    else:  # a biased final norm or unembedding: the negated changes need their own projection
        signs = torch.where(negative, -1.0, 1.0).to(flat.dtype).reshape(-1, 1)
        result["rank"] = lens_pass(adapter, flat, targets).ranks.view(negative.shape)
        result["signed_rank"] = lens_pass(adapter, signs * flat, targets).ranks.view(negative.shape)
    return result


def neuron_update_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, top_k: int
) -> pd.DataFrame:
    """One row per (prompt, layer, matrix, top-k neuron, spanning position): the cosine between
    that neuron's change and the spanning vector, with the neuron's share of the update's
    squared norm and the target's rank in the logit lens of the change. (prompt, layer, matrix)
    whose whole update is zero get no rows."""
    host = {name: value.cpu().numpy() for name, value in neuron_update_tensors(batch, adapter, top_k=top_k).items()}
    matrices = np.array([matrix for layer, matrix in batch.sites if layer == 0], dtype=object)
    n_prompts, n_layers, n_matrices, k = host["neuron"].shape
    b, layer, m, order = (index.reshape(-1) for index in np.indices((n_prompts, n_layers, n_matrices, k)))
    keep = host["total"][b, layer, m] != 0
    b, layer, m, order = b[keep], layer[keep], m[keep], order[keep]
    lengths = np.asarray(batch.lengths, dtype=np.int64)[b]
    row = np.repeat(np.arange(len(b)), lengths)
    position = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    b, layer, m, order = b[row], layer[row], m[row], order[row]
    norm = host["norm"][b, layer, m, order].astype(np.float64)
    return pd.DataFrame({
        "case_id": np.asarray(case_ids, dtype=np.int64)[b],
        "layer": layer.astype(np.int64),
        "matrix": matrices[m],
        "neuron": host["neuron"][b, layer, m, order].astype(np.int64),
        "norm_order": order.astype(np.int64),
        "update_norm": norm,
        "update_share": norm**2 / host["total"][b, layer, m].astype(np.float64),
        "target_rank_of_update": host["rank"][b, layer, m, order].astype(np.int64),
        "last_coefficient": host["last_coefficient"][b, layer, m, order].astype(np.float64),
        "target_rank_of_signed_update": host["signed_rank"][b, layer, m, order].astype(np.int64),
        "vocab_size": int(adapter.unembedding.shape[0]),
        "position": position.astype(np.int64),
        "cosine": host["cosine"][b, layer, m, order, position].astype(np.float64),
    })


def _cosine_matrices(vectors_NxTxd: torch.Tensor) -> torch.Tensor:
    """(N, T, T) cosines between the T vectors of each of N groups; NaN with a zero vector. float32 suffices:
    the figures average cosines, and float32 round-off (~1e-7) is far below their differences."""
    unit = F.normalize(vectors_NxTxd, dim=-1)
    cosines = unit @ unit.mT
    zero = is_zero_vector(vectors_NxTxd)
    return cosines.masked_fill(zero[..., :, None] | zero[..., None, :], float("nan"))


def vjp_similarity_tensors(batch: CapturedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """On the batch's device: FF2 VJP cosines between token pairs per layer (B, L, T, T) and between
    layer pairs at each prompt's last token (B, L, L)."""
    vjps = stacked_layers(batch.vjps, batch.n_layers, "ff2")  # (B, L, T, d)
    last = to_device(np.asarray(batch.lengths, dtype=np.int64) - 1, vjps.device)
    last_token = vjps.gather(2, last[:, None, None, None].expand(-1, vjps.shape[1], 1, vjps.shape[-1]))[:, :, 0]
    return _cosine_matrices(vjps), _cosine_matrices(last_token)


def vjp_similarity_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> pd.DataFrame:
    """Cosine similarity of FF2 VJPs (delta) between token pairs within each layer
    (kind "tokens") and between layer pairs at the last token (kind "layers")."""
    tokens, layers = (t.cpu().numpy() for t in vjp_similarity_tensors(batch))
    n_prompts, n_layers, n_padded = tokens.shape[:3]
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    case = np.asarray(case_ids, dtype=np.int64)
    a, b = np.triu_indices(n_padded, 1)  # a-major, as the pairs were listed
    prompt, layer, pair = (index.reshape(-1) for index in np.indices((n_prompts, n_layers, len(a))))
    keep = b[pair] < lengths[prompt]
    prompt, layer, pair = prompt[keep], layer[keep], pair[keep]
    token_rows = pd.DataFrame({
        "case_id": case[prompt], "kind": "tokens", "layer_a": layer, "layer_b": layer,
        "position_a": a[pair], "position_b": b[pair],
        "cosine": tokens[prompt, layer, a[pair], b[pair]].astype(np.float64),
    })
    token_prompt = prompt
    la, lb = np.triu_indices(n_layers, 1)
    prompt, pair = (index.reshape(-1) for index in np.indices((n_prompts, len(la))))
    layer_rows = pd.DataFrame({
        "case_id": case[prompt], "kind": "layers", "layer_a": la[pair], "layer_b": lb[pair],
        "position_a": lengths[prompt] - 1, "position_b": lengths[prompt] - 1,
        "cosine": layers[prompt, la[pair], lb[pair]].astype(np.float64),
    })
    # Per prompt: its token pairs (layer by layer), then its layer pairs.
    order = np.argsort(np.concatenate([token_prompt * 2, prompt * 2 + 1]), kind="stable")
    return pd.concat([token_rows, layer_rows], ignore_index=True).iloc[order].reset_index(drop=True)
