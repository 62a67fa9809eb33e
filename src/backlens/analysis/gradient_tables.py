"""Tidy rows built from one captured batch: gradient ranks, VJP norms, target ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.logit_lens import target_ranks
from backlens.analysis.ranks import float32_rtol, gradient_rank
from backlens.models.adapters import ArchitectureAdapter


def gradient_rank_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> list[dict]:
    """One row per (prompt, layer, matrix): the rank of dL/dW from its factors.

    ``rank`` uses ``rtol`` = P x eps of the factors' dtype (see ``backlens.analysis.ranks``);
    ``rank_float32_tol`` applies matrix_rank's float32 rule for the full matrix to the same
    singular values; ``sigma_min_ratio`` is the P-th singular value over the largest.
    """
    rows = []
    for prompt, case_id in enumerate(case_ids):
        for (layer, matrix), site in batch.sites.items():
            inputs, vjps = batch.factors(prompt, (layer, matrix))
            result = gradient_rank(inputs, vjps)
            rows.append(
                {
                    "case_id": case_id,
                    "layer": layer,
                    "matrix": matrix,
                    "n_tokens": batch.lengths[prompt],
                    "rank": result.rank,
                    "rank_float32_tol": result.rank_at(float32_rtol(site.out_features, site.in_features)),
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
    rows = []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        per_module = {key: batch.vjps[key][prompt, :length] for key in batch.sites}
        for (layer, submodule), vjps in batch.submodule_vjps.items():
            if submodule == "attention":
                per_module[(layer, "attention")] = vjps[prompt, :length]
        for (layer, module), vjps in per_module.items():
            norms = vjps.norm(dim=-1).tolist()
            rows.extend(
                {"case_id": case_id, "layer": layer, "module": module, "position": position, "norm": norm}
                for position, norm in enumerate(norms)
            )
    return rows


def ff2_target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, normalized: bool = False
) -> list[dict]:
    """One row per (prompt, layer, position): rank of target_new's first token in LL(delta_i).

    ``rank`` counts tokens with a higher logit (0 = most probable, V-1 = least probable);
    -1 marks exact-zero VJPs (last layer, positions before the last), left out of averages.
    """
    vectors, targets, index = [], [], []
    for prompt, case_id in enumerate(case_ids):
        length = batch.lengths[prompt]
        for layer in range(batch.n_layers):
            vectors.append(batch.vjps[(layer, "ff2")][prompt, :length])
            targets.append(batch.target_ids[prompt].expand(length))
            index.extend((case_id, layer, position) for position in range(length))
    ranks = target_ranks(adapter, torch.cat(vectors), torch.cat(targets), normalized=normalized).tolist()
    vocab_size = int(adapter.unembedding.shape[0])
    return [
        {"case_id": case_id, "layer": layer, "position": position, "rank": rank, "vocab_size": vocab_size}
        for (case_id, layer, position), rank in zip(index, ranks)
    ]
