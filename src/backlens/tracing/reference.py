"""Full recomputation of one restored run through the model's own forward, with hooks.

The slow, obvious definition the reuse in ``restore.py`` must agree with: one complete
forward pass of all noise samples per (kind, token, layer) cell.
"""

from __future__ import annotations

import torch

from backlens.models.adapters import ArchitectureAdapter
from backlens.models.hooks import replace_outputs
from backlens.tracing.restore import _FROZEN_SITE_OF_KIND, _SITE_OF_KIND, restore_window
from backlens.tracing.runs import RecordedRun


def _set_token(token: int, values_Nxd: torch.Tensor):
    def patch(output_NxTxd: torch.Tensor) -> torch.Tensor:
        patched = output_NxTxd.clone()
        patched[:, token] = values_Nxd
        return patched

    return patch


@torch.no_grad()
def reference_restored_prob(
    adapter: ArchitectureAdapter,
    corrupted_embeddings_NxTxd: torch.Tensor,
    clean: RecordedRun,
    corrupted: RecordedRun,
    kind: str,
    token: int,
    layer: int,
    window: int,
    answer_id: int,
) -> float:
    """P(answer) averaged over the noise samples, restoring ``kind`` at (token, layer) by full recomputation."""
    n_layers = adapter.n_layers
    n_samples = corrupted_embeddings_NxTxd.shape[0]
    site_modules = {"attention": adapter.attention, "mlp": adapter.mlp}
    patches = {}
    if kind in _SITE_OF_KIND:
        site = _SITE_OF_KIND[kind]
        for block in restore_window(layer, window, n_layers):
            clean_state = getattr(clean, site)[block, 0, token].expand(n_samples, -1)
            patches[site_modules[site](block)] = _set_token(token, clean_state)
    else:
        patches[adapter.blocks[layer]] = _set_token(token, clean.residual[layer + 1, 0, token].expand(n_samples, -1))
        frozen_site = _FROZEN_SITE_OF_KIND.get(kind)
        if frozen_site is not None:
            for block in range(layer + 1, n_layers):
                frozen = getattr(corrupted, frozen_site)[block, :, token]
                patches[site_modules[frozen_site](block)] = _set_token(token, frozen)
    # The model's own forward from token embeddings: it adds positions and builds its mask itself.
    with replace_outputs(patches):
        logits = adapter.model(inputs_embeds=corrupted_embeddings_NxTxd).logits[:, -1].float()
    return float(torch.softmax(logits, dim=-1)[:, answer_id].mean())


@torch.no_grad()
def reference_residual_restoration_prob(
    adapter: ArchitectureAdapter,
    corrupted_embeddings_NxTxd: torch.Tensor,
    clean: RecordedRun,
    cells: list[tuple[int, int]],
    answer_id: int,
) -> float:
    """P(answer) averaged over samples when the clean residual is restored at every (token, layer) in ``cells``."""
    by_layer: dict[int, list[int]] = {}
    for token, layer in cells:
        by_layer.setdefault(layer, []).append(token)
    n_samples = corrupted_embeddings_NxTxd.shape[0]

    def restore(layer: int, tokens: list[int]):
        def patch(output_NxTxd: torch.Tensor) -> torch.Tensor:
            patched = output_NxTxd.clone()
            patched[:, tokens] = clean.residual[layer + 1, 0, tokens].expand(n_samples, -1, -1)
            return patched

        return patch

    with replace_outputs({adapter.blocks[layer]: restore(layer, tokens) for layer, tokens in by_layer.items()}):
        logits = adapter.model(inputs_embeds=corrupted_embeddings_NxTxd).logits[:, -1].float()
    return float(torch.softmax(logits, dim=-1)[:, answer_id].mean())
