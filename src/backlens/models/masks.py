"""Attention masks for a layer-range forward, built by the model's own transformers utilities.

The families' forward passes call ``create_causal_mask`` / ``create_sliding_window_causal_mask``
per layer type; calling the same functions here keeps windows, padding and the attention
implementation's mask format (None for SDPA's is_causal, boolean, additive) identical.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

MASK_BUILDERS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


class _MaskSizes:
    """What the mask builders ask of a cache: where the queries start, how far the keys reach.

    A layer-range forward's cache stand-ins hand every layer all earlier positions (sliding-window
    layers included), so each layer attends over positions 0 .. first_position + S - 1 and the
    window is left to the mask, as in a forward without cache.
    """

    def __init__(self, first_position: int) -> None:
        self.first_position = first_position

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.first_position

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.first_position + query_length, 0


def attention_mask(
    kind: str,
    config: PretrainedConfig,
    hidden_BxSxd: torch.Tensor,
    position_ids_1xS: torch.Tensor,
    first_position: int,
    padding_mask: torch.Tensor | None,
) -> object:
    """The mask a block of attention type ``kind`` gets for queries at positions first_position..;
    ``padding_mask``: (B, first_position + S), 1 at real tokens (None: no padding)."""
    if kind not in MASK_BUILDERS:
        raise NotImplementedError(f"no layer-range mask for layer type {kind!r}; known: {sorted(MASK_BUILDERS)}")
    return MASK_BUILDERS[kind](
        config=config, inputs_embeds=hidden_BxSxd, attention_mask=padding_mask,
        past_key_values=_MaskSizes(first_position), position_ids=position_ids_1xS,
    )
