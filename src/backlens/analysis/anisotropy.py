"""How well the input embedding e_t alone points at its own token through the final norm and
unembedding (issue 17): the forward pass shift writes eta * e_t into the residual stream, so when
LL(e_t) does not rank t first, the shift pushes prompts toward whatever LL(e_t) does rank first.

On an anisotropic embedding matrix (a large common mean) LL(e_t) ranks the same few tokens first
for most t; removing the mean, LL(e_t - mean_j e_j), shows what the centred shift variant writes.
"""

from __future__ import annotations

import pandas as pd
import torch

from backlens.analysis.anisotropy_summary import VARIANTS
from backlens.models.adapters import ArchitectureAdapter



@torch.no_grad()
def self_rank_tensors(adapter: ArchitectureAdapter, token_ids_B: torch.Tensor, variant: str) -> dict[str, torch.Tensor]:
    """rank of t in LL(probe_t), the top token of LL(probe_t) and the cosine of e_t with the mean embedding,
    for the tokens ``token_ids_B``; computed on the model's device (the ids are moved there), no host sync."""
    embedding_VxD = adapter.input_embedding.detach().float()
    mean_D = embedding_VxD.mean(0)
    ids_B = token_ids_B.to(embedding_VxD.device)
    vectors_BxD = embedding_VxD[ids_B]
    probe_BxD = vectors_BxD if variant == "raw" else vectors_BxD - mean_D
    logits_BxV = adapter.logit_lens(probe_BxD).float()
    own_B = logits_BxV.gather(1, ids_B[:, None])
    return {"rank": (logits_BxV > own_B).sum(1), "top_token_id": logits_BxV.argmax(1),
            "cosine_with_mean": torch.nn.functional.cosine_similarity(vectors_BxD, mean_D[None], dim=-1)}


@torch.no_grad()
def embedding_self_ranks(adapter: ArchitectureAdapter, token_ids: list[int], *, batch_size: int = 256) -> pd.DataFrame:
    """One row per (token, variant): the rank of t in LL(e_t) (0 = most probable), the top token
    of LL(e_t) and the cosine of e_t with the mean embedding. ``raw``: e_t; ``centered``: e_t - mean_j e_j."""
    ids = torch.tensor(token_ids, dtype=torch.long)
    rows = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        for variant in VARIANTS:
            values = {name: tensor.cpu().tolist() for name, tensor in self_rank_tensors(adapter, batch, variant).items()}
            rows += [{"token_id": int(t), "variant": variant, "rank": r, "top_token_id": top, "cosine_with_mean": c}
                     for t, r, top, c in zip(batch.tolist(), values["rank"], values["top_token_id"],
                                             values["cosine_with_mean"])]
    return pd.DataFrame(rows)


def sample_token_ids(vocab_size: int, n_tokens: int | None, seed: int) -> list[int]:
    """Every token id (n_tokens None or >= V) or a seeded sample of n_tokens, sorted."""
    if n_tokens is None or n_tokens >= vocab_size:
        return list(range(vocab_size))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(vocab_size, generator=generator)[:n_tokens].tolist())
