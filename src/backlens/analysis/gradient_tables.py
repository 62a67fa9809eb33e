"""Tidy rows built from one captured batch: gradient ranks, VJP norms, target ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.logit_lens import target_ranks
from backlens.analysis.ranks import float32_rtol, gradient_ranks_stacked
from backlens.models.adapters import ArchitectureAdapter


def gradient_rank_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """One row per (prompt, layer, matrix): the rank of dL/dW from its factors.

    ``rank`` uses ``rtol`` = P x eps of the factors' dtype (see ``backlens.analysis.ranks``);
    ``rank_float32_tol`` applies matrix_rank's float32 rule for the full matrix to the same
    singular values; ``sigma_min_ratio`` is the P-th singular value over the largest.
    All layers of one matrix go through one batched factorisation.
    """
    matrices = sorted({matrix for _, matrix in batch.sites})
    rows = []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        for matrix in matrices:
            layers = [layer for layer, m in batch.sites if m == matrix]
            inputs = torch.stack([batch.inputs[(layer, matrix)][prompt, :length] for layer in layers])
            vjps = torch.stack([batch.vjps[(layer, matrix)][prompt, :length] for layer in layers])
            site = batch.sites[(layers[0], matrix)]
            float32_tol = float32_rtol(site.out_features, site.in_features)
            for layer, result in zip(layers, gradient_ranks_stacked(inputs, vjps)):
                rows.append(
                    {
                        "case_id": case_id,
                        "layer": layer,
                        "matrix": matrix,
                        "n_tokens": length,
                        "rank": result.rank,
                        "rank_float32_tol": result.rank_at(float32_tol),
                        "sigma_min_ratio": result.sigma_ratios[-1],
                        "rtol": result.rtol,
                    }
                )
    return rows


def vjp_norm_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """One row per (prompt, layer, module, position): ||VJP|| of that module's output.

    Modules: the FF1 matrices and FF2 (whose output is the MLP's output, so its VJP is
    the MLP-output VJP delta_i of the paper), and the attention output.
    """
    per_module = dict(batch.vjps)
    per_module.update({key: vjps for key, vjps in batch.submodule_vjps.items() if key[1] == "attention"})
    keys = list(per_module)
    norms = torch.stack([per_module[key].norm(dim=-1) for key in keys]).cpu()  # (modules, B, T)
    rows = []
    for prompt, case_id in enumerate(case_ids):
        prompt_norms = norms[:, prompt, : batch.lengths[prompt]].tolist()
        for (layer, module), values in zip(keys, prompt_norms):
            rows.extend(
                {"case_id": case_id, "layer": layer, "module": module, "position": position, "norm": norm}
                for position, norm in enumerate(values)
            )
    return rows


def ff2_target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, normalized: bool = False
) -> list[dict]:
    """One row per (prompt, layer, position): rank of target_new's first token in LL(delta_i).

    ``rank`` counts tokens with a higher logit (0 = most probable, V-1 = least probable);
    -1 marks exact-zero VJPs (last layer, positions before the last), left out of averages.
    """
    return target_rank_rows(batch, case_ids, adapter, lambda prompt, layer, length: batch.vjps[(layer, "ff2")][prompt, :length],
                            normalized=normalized)


def target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter,
    vectors_at: Callable[[int, int, int], torch.Tensor], *, normalized: bool = False,
) -> list[dict]:
    """Rank of target_new's first token in the logit lens of ``vectors_at(prompt, layer, length)``
    ((P, d_model) per prompt and layer), one row per (prompt, layer, position)."""
    vectors, targets, index = [], [], []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        for layer in range(batch.n_layers):
            vectors.append(vectors_at(prompt, layer, length))
            targets.append(batch.target_ids[prompt].expand(length))
            index.extend((case_id, layer, position) for position in range(length))
    ranks = target_ranks(adapter, torch.cat(vectors), torch.cat(targets), normalized=normalized).tolist()
    vocab_size = int(adapter.unembedding.shape[0])
    return [
        {"case_id": case_id, "layer": layer, "position": position, "rank": rank, "vocab_size": vocab_size}
        for (case_id, layer, position), rank in zip(index, ranks)
    ]
