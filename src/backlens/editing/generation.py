"""Batched, seeded top-k sampling (ROME's fluency protocol) and n-gram entropy."""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backlens.data.batching import pad_id

_WORD = re.compile(r"\w+|[^\w\s]")


def sample_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    top_k: int,
    seed: int,
) -> list[str]:
    """Continue every prompt (top-k sampling, seeded); returns prompt + continuation."""
    new_tokens = sample_token_ids(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, top_k=top_k, seed=seed
    )
    return [prompt + tokenizer.decode(new_tokens[row]) for row, prompt in enumerate(prompts)]


@torch.no_grad()
def sample_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    top_k: int,
    seed: int,
) -> torch.Tensor:
    """(B, max_new_tokens) sampled continuations of every prompt, in one left-padded batch with a KV cache.

    The attention mask always spans the full sequence so far: a one-column mask on a cached
    step would silently mask the cached positions (see NOTES, transformers 5 pitfall).
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(prompts), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, sequence in enumerate(encoded):
        ids[row, width - len(sequence) :] = torch.tensor(sequence)
        mask[row, width - len(sequence) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    generated: list[torch.Tensor] = []
    past = None
    step_ids, step_positions = ids, positions
    for _ in range(max_new_tokens):
        output = model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_positions, past_key_values=past, use_cache=True
        )
        past = output.past_key_values
        logits_BxV = output.logits[:, -1].float().cpu()
        top_values, top_indices = logits_BxV.topk(top_k, dim=-1)
        choice = torch.multinomial(torch.softmax(top_values, dim=-1), 1, generator=generator)
        next_ids = top_indices.gather(1, choice).to(device)
        generated.append(next_ids)
        step_ids = next_ids
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
    return torch.cat(generated, dim=1).cpu()


def ngram_entropy(text: str, n: int) -> float:
    """Entropy (bits) of the n-gram frequency distribution of ``text``'s words."""
    words = _WORD.findall(text.lower())
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in grams.values())


def generation_entropy(texts: list[str]) -> float:
    """ROME's fluency: per text, the mean of 2/3 x bigram and 4/3 x trigram entropy; mean over texts."""
    if not texts:
        raise ValueError("generation_entropy needs at least one text")
    per_text = [(2 / 3 * ngram_entropy(t, 2) + 4 / 3 * ngram_entropy(t, 3)) / 2 for t in texts]
    return sum(per_text) / len(per_text)
