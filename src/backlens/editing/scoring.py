"""Teacher-forced scoring of answers after prompts, batched (one forward pass per batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backlens.data.batching import pad_batch, pad_id
from backlens.editing.requests import Continuation, continuation


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


def _score(log_probs_KxV: torch.Tensor, item: Continuation) -> AnswerScore:
    """``log_probs_KxV``: the log-probabilities at the positions that predict each answer token."""
    targets = torch.tensor(item.target_ids, device=log_probs_KxV.device)
    token_log_probs = log_probs_KxV[torch.arange(len(targets), device=targets.device), targets]
    return AnswerScore(
        mean_nll=float(-token_log_probs.mean()),
        argmax_correct=bool((log_probs_KxV.argmax(dim=-1) == targets).all()),
        n_tokens=len(item.target_ids),
        merged=item.merged,
    )


def shared_sequences(items: list[Continuation]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The fewest token sequences that score every item, and the sequence each item reads.

    Causal attention: the logits at the prompt's last position see nothing after it, so any
    sequence that starts with the prompt gives a one-token answer's score. A prompt therefore
    needs one sequence per distinct multi-token answer (prompt + answer), or the prompt alone
    when all its answers are one token: a CounterFact case's two targets share one pass.
    """
    sequences: list[tuple[int, ...]] = []
    index: dict[tuple[int, ...], int] = {}
    of_prompt: dict[tuple[int, ...], int] = {}

    def add(sequence: tuple[int, ...], prompt: tuple[int, ...]) -> int:
        if sequence not in index:
            index[sequence] = len(sequences)
            sequences.append(sequence)
        of_prompt.setdefault(prompt, index[sequence])
        return index[sequence]

    where = [-1] * len(items)
    for number, item in enumerate(items):
        if len(item.target_ids) > 1:
            where[number] = add(item.prompt_ids + item.target_ids, item.prompt_ids)
    for number, item in enumerate(items):
        if len(item.target_ids) == 1:
            where[number] = of_prompt.get(item.prompt_ids, None)
            if where[number] is None:
                where[number] = add(item.prompt_ids, item.prompt_ids)
    return sequences, where


def _readers(where: list[int]) -> dict[int, list[int]]:
    """Sequence index -> the items read from it."""
    readers: dict[int, list[int]] = {}
    for number, sequence_index in enumerate(where):
        readers.setdefault(sequence_index, []).append(number)
    return readers


def _needed_positions(items: list[Continuation], readers: dict[int, list[int]], rows: range) -> list[int]:
    """Every position some answer token is predicted from, over the batch's rows."""
    return sorted({len(items[n].prompt_ids) - 1 + k for s in rows for n in readers[s]
                   for k in range(len(items[n].target_ids))})


def _read_scores(scores: list, log_probs_BxKxV: torch.Tensor, rows: range, needed: list[int],
                 items: list[Continuation], readers: dict[int, list[int]]) -> None:
    """Fill ``scores`` for the items read from the batch's rows (log-probabilities at ``needed``)."""
    column = {position: c for c, position in enumerate(needed)}
    for row, s in enumerate(rows):
        for n in readers[s]:
            first = len(items[n].prompt_ids) - 1
            columns = [column[first + k] for k in range(len(items[n].target_ids))]
            scores[n] = _score(log_probs_BxKxV[row, columns], items[n])


@torch.no_grad()
def score_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    *,
    batch_size: int = 32,
) -> list[AnswerScore]:
    """Score each (prompt, answer) pair; results in the order given.

    Pairs share sequences (``shared_sequences``) and logits are computed only at the positions
    read (``logits_to_keep``); the numbers are those of one sequence per pair
    (``score_answers_per_pair``) up to float round-off (tests/test_editing_batched.py).
    """
    device = model.device
    items = [continuation(tokenizer, prompt, answer) for prompt, answer in pairs]
    sequences, where = shared_sequences(items)
    readers = _readers(where)
    scores: list[AnswerScore | None] = [None] * len(items)
    for start in range(0, len(sequences), batch_size):
        rows = range(start, min(start + batch_size, len(sequences)))
        needed = _needed_positions(items, readers, rows)
        ids, mask = pad_batch([sequences[s] for s in rows], pad_id(tokenizer), device)
        logits_BxKxV = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor(needed, device=device)).logits
        _read_scores(scores, torch.log_softmax(logits_BxKxV.float(), dim=-1), rows, needed, items, readers)
    return scores


class ScoresAboveBlock:
    """``score_answers`` of fixed pairs for many models that differ from the one at construction only
    in blocks ``start`` and above (the shift sweep: one layer's FF2 at every eta). The residual stream
    entering ``start`` is computed once, at construction; each call runs blocks ``start`` .. last on it
    and the unembedding at the positions read. Rows are right-padded, so no padding mask is needed
    (``run_layers``). The numbers equal ``score_answers`` on the changed model up to float round-off
    (tests/test_editing_batched.py); only valid while nothing below ``start`` has changed."""

    @torch.no_grad()
    def __init__(self, adapter, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], start: int, *,
                 batch_size: int = 32):
        self.adapter, self.start = adapter, start
        self.items = [continuation(tokenizer, prompt, answer) for prompt, answer in pairs]
        sequences, where = shared_sequences(self.items)
        self.readers = _readers(where)
        self.batches = []  # (rows, needed positions, (B, T, d) stream entering ``start``)
        for first in range(0, len(sequences), batch_size):
            rows = range(first, min(first + batch_size, len(sequences)))
            ids, _ = pad_batch([sequences[s] for s in rows], pad_id(tokenizer), adapter.model.device)
            self.batches.append((rows, _needed_positions(self.items, self.readers, rows),
                                 adapter.residual_entering(ids, start)))

    @torch.no_grad()
    def __call__(self) -> list[AnswerScore]:
        scores: list[AnswerScore | None] = [None] * len(self.items)
        for rows, needed, entering_BxTxd in self.batches:
            hidden_BxTxd = self.adapter.run_layers(entering_BxTxd, self.start, self.adapter.n_layers)
            logits_BxKxV = self.adapter.logit_lens(hidden_BxTxd[:, needed])
            log_probs_BxKxV = torch.log_softmax(logits_BxKxV.float(), dim=-1)
            _read_scores(scores, log_probs_BxKxV, rows, needed, self.items, self.readers)
        return scores


@torch.no_grad()
def score_answers_per_pair(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    *,
    batch_size: int = 32,
) -> list[AnswerScore]:
    """The reference: one sequence per pair and the logits at every position (the code before
    issue 23; kept for the tests and the benchmark's side-by-side timing)."""
    device = model.device
    scores: list[AnswerScore] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [continuation(tokenizer, prompt, answer) for prompt, answer in pairs[start : start + batch_size]]
        sequences = [c.prompt_ids + c.target_ids for c in chunk]
        ids, mask = pad_batch(sequences, pad_id(tokenizer), device)
        log_probs_BxTxV = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, item in enumerate(chunk):
            first = len(item.prompt_ids) - 1
            positions = torch.arange(first, first + len(item.target_ids), device=device)
            scores.append(_score(log_probs_BxTxV[row, positions], item))
    return scores
