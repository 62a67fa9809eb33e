"""Today's table builders (before issue 22), kept verbatim as the reference the tensor builders are
tested against (tests/test_table_equivalence.py). Not used by the library."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Helpers issue 22 left unchanged are imported from the library; what follows is the former table logic.
from backlens.analysis.capture import CapturedBatch
from backlens.analysis.logit_lens import is_zero_vector, lens_logits, rank_from_top
from backlens.analysis.ranks import float32_rtol, gradient_ranks_stacked
from backlens.analysis.spanning_sets import change_norms, neuron_change_factors
from backlens.models.adapters import ArchitectureAdapter


def target_ranks(
    adapter: ArchitectureAdapter, vectors_Nxd: torch.Tensor, token_ids_N: torch.Tensor, *, normalized: bool = False
) -> torch.Tensor:
    """Rank of each row's token in the lens of that row; -1 for exact-zero rows."""
    ranks = torch.empty(vectors_Nxd.shape[0], dtype=torch.long)
    for rows, logits in lens_logits(adapter, vectors_Nxd, normalized=normalized):
        ranks[rows] = rank_from_top(logits, token_ids_N[rows].to(logits.device)).cpu()
    ranks[is_zero_vector(vectors_Nxd).cpu()] = -1
    return ranks


def top_and_bottom(
    adapter: ArchitectureAdapter,
    vectors_Nxd: torch.Tensor,
    k: int,
    *,
    normalized: bool = False,
    exclude_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top ids, top logits, bottom ids, bottom logits), each (N, k): most and least probable tokens,
    never one of ``exclude_ids`` (e.g. special tokens, which no edit targets)."""
    outputs: list[list[torch.Tensor]] = [[], [], [], []]
    excluded = torch.tensor(sorted(set(exclude_ids)), dtype=torch.long)
    for _, logits in lens_logits(adapter, vectors_Nxd, normalized=normalized):
        columns = excluded.to(logits.device)
        top = logits.index_fill(1, columns, float("-inf")).topk(k, dim=1)
        bottom = logits.index_fill(1, columns, float("inf")).topk(k, dim=1, largest=False)
        for store, value in zip(outputs, (top.indices, top.values, bottom.indices, bottom.values)):
            store.append(value.cpu())
    return tuple(torch.cat(parts) for parts in outputs)  # type: ignore[return-value]


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


def lens_rows(adapter, tokenizer, batch: CapturedBatch, prompt: int, item, settings,
              excluded: Sequence[int]) -> tuple[list[dict], list[dict]]:
    """(cell rows, token rows) of one prompt of a batch: per layer and token, LL(x_i) of the FF1
    input and LL(delta_i) of the FF2 VJP. Exact-zero VJPs (last layer, before the last token)
    are marked and get no token rows."""
    n_positions = batch.lengths[prompt]
    first_ff1 = adapter.ff1_sites(0)[0].matrix  # gated MLPs: gate and up share their input
    vectors, index = [], []
    for layer in range(adapter.n_layers):
        inputs, _ = batch.factors(prompt, (layer, first_ff1))
        _, vjps = batch.factors(prompt, (layer, "ff2"))
        for kind, block in (("ff1_input", inputs), ("ff2_vjp", vjps)):
            vectors.append(block)
            index.extend((layer, position, kind) for position in range(n_positions))
    stacked = torch.cat(vectors)
    target_id = item.target_id
    ranks = target_ranks(adapter, stacked, torch.full((len(stacked),), target_id),
                         normalized=settings.normalized).tolist()
    top_k = settings.top_k
    top_ids, top_logits, bottom_ids, bottom_logits = top_and_bottom(
        adapter, stacked, top_k, normalized=settings.normalized, exclude_ids=excluded
    )
    zero = is_zero_vector(stacked).tolist()
    norms = stacked.norm(dim=-1).tolist()
    example = item.case_id
    common = {"example": example, "prompt": item.prompt, "target_new": item.target_new,
              "target_new_id": target_id, "target_true": item.target_true,
              "vocab_size": int(adapter.unembedding.shape[0])}
    cells, tokens = [], []
    for row, (layer, position, kind) in enumerate(index):
        cells.append({**common, "layer": layer, "position": position, "token": item.tokens[position],
                      "segment": item.segments[position], "vector": kind, "norm": norms[row],
                      "is_zero": zero[row], "target_rank": ranks[row]})
        if zero[row]:
            continue
        for end, ids, logits in (("top", top_ids, top_logits), ("bottom", bottom_ids, bottom_logits)):
            for k in range(top_k):
                token_id = int(ids[row, k])
                tokens.append({"example": example, "layer": layer, "position": position, "vector": kind,
                               "end": end, "k": k, "token_id": token_id, "token_text": tokenizer.decode([token_id]),
                               "logit": float(logits[row, k])})
    return cells, tokens
