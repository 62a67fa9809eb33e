"""Teacher-forced scoring of answers after prompts, batched (one forward pass per batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backlens.data.batching import pad_batch, pad_id
from backlens.editing.requests import continuation


@dataclass(frozen=True)
class AnswerScore:
    """How the model scores `` answer`` after ``prompt``.

    ``mean_nll``: mean negative log-probability of the answer's tokens (ROME's probability
    metrics compare these); ``argmax_correct``: the greedy prediction equals every answer
    token when the previous answer tokens are fed (MEMIT's accuracy); ``merged``: the answer
    fused with the prompt's last token and was tokenized on its own.
    """

    mean_nll: float
    argmax_correct: bool
    n_tokens: int
    merged: bool


@torch.no_grad()
def score_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    *,
    batch_size: int = 32,
) -> list[AnswerScore]:
    """Score each (prompt, answer) pair; results in the order given."""
    device = next(model.parameters()).device
    scores: list[AnswerScore] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [continuation(tokenizer, prompt, answer) for prompt, answer in pairs[start : start + batch_size]]
        sequences = [c.prompt_ids + c.target_ids for c in chunk]
        ids, mask = pad_batch(sequences, pad_id(tokenizer), device)
        log_probs_BxTxV = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, item in enumerate(chunk):
            first = len(item.prompt_ids) - 1
            positions = torch.arange(first, first + len(item.target_ids), device=device)
            targets = torch.tensor(item.target_ids, device=device)
            token_log_probs = log_probs_BxTxV[row, positions, targets]
            predicted = log_probs_BxTxV[row, positions].argmax(dim=-1)
            scores.append(
                AnswerScore(
                    mean_nll=float(-token_log_probs.mean()),
                    argmax_correct=bool((predicted == targets).all()),
                    n_tokens=len(item.target_ids),
                    merged=item.merged,
                )
            )
    return scores
