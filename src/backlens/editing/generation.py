"""Batched, seeded top-k sampling (ROME's fluency protocol), greedy decoding, and n-gram entropy."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backlens.data.batching import pad_batch, pad_id

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
    """(B, max_new_tokens) sampled continuations of every prompt, in one left-padded batch with a KV cache."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return _sample(model, tokenizer, prompts, [(slice(None), generator)], max_new_tokens=max_new_tokens, top_k=top_k)


def sample_texts_by_case(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts_per_case: list[list[str]],
    *,
    max_new_tokens: int,
    top_k: int,
    seeds: list[int],
) -> list[list[str]]:
    """``sample_texts`` of several cases in one batch: each case's rows draw from its own generator
    seeded with its seed, as ``sample_texts(prompts, seed)`` does for that case alone (the same
    draws, given the same probabilities)."""
    ids_per_case = sample_token_ids_by_case(model, tokenizer, prompts_per_case, max_new_tokens=max_new_tokens,
                                            top_k=top_k, seeds=seeds)
    return [[prompt + tokenizer.decode(ids) for prompt, ids in zip(case, case_ids)]
            for case, case_ids in zip(prompts_per_case, ids_per_case)]


def sample_token_ids_by_case(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts_per_case: list[list[str]],
    *,
    max_new_tokens: int,
    top_k: int,
    seeds: list[int],
) -> list[torch.Tensor]:
    """``sample_token_ids`` of several cases (groups of prompts) in one batch, one (n_case, max_new_tokens)
    tensor per case: each case's rows draw from its own generator seeded with its seed, as
    ``sample_token_ids(prompts, seed)`` does for that case alone (the same draws, given the same
    probabilities)."""
    if len(prompts_per_case) != len(seeds):
        raise ValueError(f"sample_token_ids_by_case: {len(prompts_per_case)} cases, {len(seeds)} seeds")
    prompts = [p for case in prompts_per_case for p in case]
    draws, start = [], 0
    for case, seed in zip(prompts_per_case, seeds):
        draws.append((slice(start, start + len(case)), torch.Generator(device="cpu").manual_seed(seed)))
        start += len(case)
    new_tokens = _sample(model, tokenizer, prompts, draws, max_new_tokens=max_new_tokens, top_k=top_k)
    return [new_tokens[rows] for rows, _ in draws]


def _sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    draws: list[tuple[slice, torch.Generator]],
    *,
    max_new_tokens: int,
    top_k: int,
) -> torch.Tensor:
    """Top-k sampling of every prompt; the rows of each ``draws`` entry sample from its generator,
    in one multinomial call per step (the order of the draws)."""

    def choose(logits_BxV: torch.Tensor) -> torch.Tensor:
        top_values, top_indices = logits_BxV.topk(top_k, dim=-1)
        next_ids = torch.empty((len(prompts), 1), dtype=torch.long)
        for rows, generator in draws:
            choice = torch.multinomial(torch.softmax(top_values[rows], dim=-1), 1, generator=generator)
            next_ids[rows] = top_indices[rows].gather(1, choice)
        return next_ids

    return _decode(model, tokenizer, prompts, choose, max_new_tokens=max_new_tokens)


def greedy_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
) -> torch.Tensor:
    """(B, max_new_tokens) greedy continuations (argmax at every step, the lowest id on a tie; no
    sampling, so no seed) of every prompt, in one left-padded batch with a KV cache."""
    return _decode(model, tokenizer, prompts, lambda logits_BxV: logits_BxV.argmax(dim=-1, keepdim=True),
                   max_new_tokens=max_new_tokens, last_logits_only=True)


@torch.no_grad()
def _decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    choose: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_new_tokens: int,
    last_logits_only: bool = False,
) -> torch.Tensor:
    """Continue every prompt, left-padded with a KV cache; ``choose`` maps the (B, V) float32 CPU
    logits of a step to the (B, 1) next ids. ``last_logits_only``: unembed only the last position
    (sampling keeps the full unembedding so its texts stay those of the code before it).

    The attention mask always spans the full sequence so far: a one-column mask on a cached
    step would silently mask the cached positions (see NOTES, transformers 5 pitfall).
    """
    device = model.device
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in prompts], pad_id(tokenizer), device, side="left")
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if last_logits_only else {}
    generated: list[torch.Tensor] = []
    past = None
    step_ids, step_positions = ids, positions
    for _ in range(max_new_tokens):
        output = model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_positions, past_key_values=past, use_cache=True,
            **keep,
        )
        past = output.past_key_values
        next_ids = choose(output.logits[:, -1].float().cpu()).to(device)
        generated.append(next_ids)
        step_ids = next_ids
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
    if not generated:
        return torch.empty((len(prompts), 0), dtype=torch.long)
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
