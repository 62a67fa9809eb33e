"""The logit lens applied to hidden states and gradient factors.

LL(v) = softmax(W_U . final_norm(v)) with the model's own final norm (exact eps, bias) and
unembedding. Ranks are taken on logits, not float32 probabilities: softmax underflow puts
many tokens at probability 0 and would misplace the target by thousands of places.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from backlens.models.adapters import ArchitectureAdapter


def rescale_to_unit_rms(vectors_Nxd: torch.Tensor) -> torch.Tensor:
    """The normalized lens: give every vector RMS 1 before the final norm, so low-norm VJPs
    are not dominated by the norm's eps. Zero vectors stay zero."""
    rms = vectors_Nxd.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return torch.where(rms > 0, vectors_Nxd / rms.clamp_min(torch.finfo(vectors_Nxd.dtype).tiny), vectors_Nxd)


def lens_logits(
    adapter: ArchitectureAdapter, vectors_Nxd: torch.Tensor, *, normalized: bool = False, chunk: int = 2048
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, logits) chunks of LL for (N, d) vectors, so (N, V) is never held at once."""
    with torch.no_grad():
        for start in range(0, vectors_Nxd.shape[0], chunk):
            rows = slice(start, min(start + chunk, vectors_Nxd.shape[0]))
            block = vectors_Nxd[rows]
            if normalized:
                block = rescale_to_unit_rms(block)
            yield rows, adapter.logit_lens(block).float()


def rank_from_top(logits_NxV: torch.Tensor, token_ids_N: torch.Tensor) -> torch.Tensor:
    """Number of vocabulary items with a strictly higher logit than the token (0 = most probable)."""
    target = logits_NxV.gather(1, token_ids_N.view(-1, 1))
    return (logits_NxV > target).sum(dim=1)


def is_zero_vector(vectors_Nxd: torch.Tensor) -> torch.Tensor:
    """Exact-zero rows (e.g. last-layer VJPs before the last position): their lens is uniform."""
    return ~vectors_Nxd.ne(0).any(dim=-1)


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
