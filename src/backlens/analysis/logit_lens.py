"""The logit lens applied to hidden states and gradient factors.

LL(v) = softmax(W_U . final_norm(v)) with the model's own final norm (exact eps, bias) and
unembedding. Ranks are taken on logits, not float32 probabilities: softmax underflow puts
many tokens at probability 0 and would misplace the target by thousands of places.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


@dataclass
class LensPass:
    """One pass of (N, d) vectors through the vocabulary, every field on the vectors' device: the rank of
    each row's token (-1 for exact-zero rows) and, when asked for, the k most / least probable tokens."""

    ranks: torch.Tensor  # (N,) long
    top_ids: torch.Tensor | None = None  # (N, k)
    top_logits: torch.Tensor | None = None
    bottom_ids: torch.Tensor | None = None
    bottom_logits: torch.Tensor | None = None
    below: torch.Tensor | None = None  # (N,) tokens with a strictly lower logit (``with_below``)
    norms: torch.Tensor | None = None  # (N,) the vectors' L2 norms, when a table needs them
    zero: torch.Tensor | None = None  # (N,) exact-zero rows


def lens_is_odd(adapter: ArchitectureAdapter) -> bool:
    """LL(-v) = -LL(v) exactly: the final norm has no bias (RMSNorm; LayerNorm without bias), the
    unembedding none, softcapping (tanh) is odd. Then the rank of a token in LL(-v) is the number of tokens
    below it in LL(v), and the lens of a negated vector needs no second pass."""
    return getattr(adapter.final_norm, "bias", None) is None and adapter.unembedding_bias is None


def lens_pass(
    adapter: ArchitectureAdapter, vectors_Nxd: torch.Tensor, token_ids_N: torch.Tensor, *, normalized: bool = False,
    k: int = 0, excluded_ids: torch.Tensor | None = None, with_below: bool = False, chunk: int = 2048,
) -> LensPass:
    """Ranks (and with ``k`` the top / bottom ``k`` tokens, never one of ``excluded_ids``; with ``with_below``
    the count of tokens below) from one projection of each row; no host-device copy: the caller copies the
    result once. ``token_ids_N`` and ``excluded_ids`` must be on the vectors' device."""
    parts: dict[str, list[torch.Tensor]] = {"ranks": [], "below": [], "top_ids": [], "top_logits": [],
                                            "bottom_ids": [], "bottom_logits": []}
    for rows, logits in lens_logits(adapter, vectors_Nxd, normalized=normalized, chunk=chunk):
        target = logits.gather(1, token_ids_N[rows].view(-1, 1))
        # Counted in int32 (exact: V < 2**31): the (rows, V) comparison is memory-bound, and an
        # int64 sum of it cost about two thirds more than int32 on the 2-core CPU.
        parts["ranks"].append((logits > target).sum(dim=1, dtype=torch.int32))
        if with_below:
            parts["below"].append((logits < target).sum(dim=1, dtype=torch.int32))
        if k:
            # The chunk's logits are this pass's own (ranks are taken above): the excluded columns are
            # overwritten in place, never a copy of the whole (rows, V) block.
            if excluded_ids is not None:
                logits.index_fill_(1, excluded_ids, float("-inf"))
            top = logits.topk(k, dim=1)
            if excluded_ids is not None:
                logits.index_fill_(1, excluded_ids, float("inf"))
            bottom = logits.topk(k, dim=1, largest=False)
            for key, value in (("top_ids", top.indices), ("top_logits", top.values), ("bottom_ids", bottom.indices),
                               ("bottom_logits", bottom.values)):
                parts[key].append(value)
    zero = is_zero_vector(vectors_Nxd)
    empty = vectors_Nxd.new_zeros(0, dtype=torch.long)
    joined = {key: (torch.cat(value) if value else None) for key, value in parts.items()}
    for key in ("ranks", "below"):
        if joined[key] is not None:
            joined[key] = joined[key].long()
    ranks = (joined["ranks"] if joined["ranks"] is not None else empty).masked_fill(zero, -1)
    below = joined["below"].masked_fill(zero, -1) if joined["below"] is not None else None
    return LensPass(ranks, joined["top_ids"], joined["top_logits"], joined["bottom_ids"], joined["bottom_logits"], below)


def target_ranks(
    adapter: ArchitectureAdapter, vectors_Nxd: torch.Tensor, token_ids_N: torch.Tensor, *, normalized: bool = False
) -> torch.Tensor:
    """Rank of each row's token in the lens of that row; -1 for exact-zero rows (on the CPU)."""
    return lens_pass(adapter, vectors_Nxd, token_ids_N.to(vectors_Nxd.device), normalized=normalized).ranks.cpu()


def top_and_bottom(
    adapter: ArchitectureAdapter,
    vectors_Nxd: torch.Tensor,
    k: int,
    *,
    normalized: bool = False,
    exclude_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top ids, top logits, bottom ids, bottom logits), each (N, k) on the CPU: most and least probable
    tokens, never one of ``exclude_ids`` (e.g. special tokens, which no edit targets)."""
    excluded = torch.tensor(sorted(set(exclude_ids)), dtype=torch.long, device=vectors_Nxd.device)
    targets = torch.zeros(vectors_Nxd.shape[0], dtype=torch.long, device=vectors_Nxd.device)
    result = lens_pass(adapter, vectors_Nxd, targets, normalized=normalized, k=k, excluded_ids=excluded)
    return tuple(value.cpu() for value in (result.top_ids, result.top_logits, result.bottom_ids,
                                            result.bottom_logits))  # type: ignore[return-value]
