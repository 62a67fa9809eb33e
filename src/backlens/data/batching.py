"""Token id lists as one right-padded batch, and the id that pads them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, else its EOS token, else 0: padding is masked, so any id will do
    as long as it is one (GPT-2 has no pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(input_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device, *,
              side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (B, T) ids and attention mask. ``side="right"`` keeps every real token
    at its position (scoring, tracing); ``"left"`` ends every row at the last column (generation
    appends there)."""
    if side not in ("right", "left"):
        raise ValueError(f"pad_batch: side={side!r}; use right or left")
    longest = max(len(ids) for ids in input_ids)
    ids = torch.full((len(input_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
    for row, prompt_ids in enumerate(input_ids):
        columns = slice(0, len(prompt_ids)) if side == "right" else slice(longest - len(prompt_ids), longest)
        ids[row, columns] = torch.tensor(prompt_ids, dtype=torch.long)
        mask[row, columns] = 1
    return ids.to(device), mask.to(device)
