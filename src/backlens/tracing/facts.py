"""Known facts as traced prompts, and the screen that keeps the ones the model answers correctly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm

from backlens.data.batching import pad_batch, pad_id
from backlens.data.known_facts import KnownFact
from backlens.data.segments import SegmentationError, SegmentedPrompt, first_target_token, segment_prompt, slot_start
from backlens.models.loading import LoadedModel


@dataclass(frozen=True)
class TracedPrompt:
    """A known fact tokenized for tracing; ``answer_id`` is the first token of `` attribute``."""

    fact: KnownFact
    segmented: SegmentedPrompt
    answer_id: int
    answer_token: str


def prepare_fact(tokenizer, fact: KnownFact) -> TracedPrompt:
    """Tokenize and segment a fact; its subject sits where the template's slot is."""
    try:
        segmented = segment_prompt(tokenizer, fact.prompt, fact.subject, subject_char_start=slot_start(fact.template))
    except SegmentationError as error:
        raise SegmentationError(f"known_id={fact.known_id}: {error}") from error
    answer_id = first_target_token(tokenizer, fact.prompt, fact.attribute)
    return TracedPrompt(fact, segmented, answer_id, tokenizer.decode([answer_id]))


@torch.no_grad()
def screen_facts(loaded: LoadedModel, prompts: Sequence[TracedPrompt], batch_size: int) -> pd.DataFrame:
    """One row per fact: the model's greedy next token, P(answer), and whether the answer is the argmax.

    ROME keeps facts whose greedy continuation starts with the attribute; with one next
    token that is: the first token of `` attribute`` is the argmax at the last position.
    """
    rows = []
    for prompt in prompts:
        loaded.check_fits(len(prompt.segmented), f"known_1000 fact known_id={prompt.fact.known_id}")
    for start in tqdm(range(0, len(prompts), batch_size), desc="screen known facts", unit="batch"):
        batch = prompts[start : start + batch_size]
        lengths = torch.tensor([len(p.segmented) for p in batch])
        # Right padding: real tokens keep their positions, the mask hides the padding.
        ids, mask = pad_batch([p.segmented.input_ids for p in batch], pad_id(loaded.tokenizer), loaded.device)
        # Unembed only the positions that end some prompt, not every position of the batch.
        last_positions = torch.unique(lengths - 1)
        logits = loaded.model(input_ids=ids, attention_mask=mask, logits_to_keep=last_positions.to(loaded.device)).logits
        column = torch.searchsorted(last_positions, lengths - 1)
        last = logits[torch.arange(len(batch)), column.to(loaded.device)].float()
        probs = torch.softmax(last, dim=-1)
        predicted = last.argmax(dim=-1)
        for i, prompt in enumerate(batch):
            rows.append(
                {
                    "known_id": prompt.fact.known_id,
                    "answer_id": prompt.answer_id,
                    "answer_token": prompt.answer_token,
                    "predicted_id": int(predicted[i]),
                    "predicted_token": loaded.tokenizer.decode([int(predicted[i])]),
                    "p_answer": float(probs[i, prompt.answer_id]),
                    "correct": bool(predicted[i] == prompt.answer_id),
                }
            )
    return pd.DataFrame(rows)
