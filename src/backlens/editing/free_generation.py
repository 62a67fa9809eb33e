"""Efficacy by free generation (issue 26): does the edited model *say* the new target when it
continues the prompt on its own, without teacher forcing?

The definition (documented in editing/README.md, "Metrics"):
- prompts: the case's rewrite prompt, then each paraphrase prompt, in one left-padded batch with
  a KV cache (``generation.greedy_token_ids``);
- decoding: greedy (argmax at every step; no sampling, no seed: deterministic), for a token budget
  of the longest of target_new's and target_true's tokens after any of these prompts (as Table 1's
  scoring tokenizes them, ``requests.continuation``) plus ``margin_tokens``
  (conf/editing/default.yaml, ``editing.evaluation.free_generation``), the same budget for every
  prompt of the case; a row's tokens end at its budget or before its first EOS token;
- success: the decoded continuation, its leading whitespace removed, **begins with** the target
  (whitespace-stripped, case-sensitive), not cut inside a word (when the target ends in a letter
  or digit, the next character is not one);
- columns: ``gen_efficacy`` (rewrite prompt, target_new), ``gen_paraphrase`` (mean over the
  paraphrase prompts), ``gen_efficacy_true`` / ``gen_paraphrase_true`` (the same for
  target_true: the old answer still said), ``gen_n_new_tokens`` (the budget),
  ``gen_continuations`` (the decoded texts, rewrite first); and the laxer reading beside it,
  ``gen_efficacy_contains`` / ``gen_paraphrase_contains``: target_new anywhere in the (short)
  continuation as whole words (" of Islam," contains "Islam"; it does not begin with it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backlens.editing.generation import greedy_token_ids
from backlens.editing.requests import EditRequest, continuation



def free_generation_prompts(request: EditRequest) -> list[str]:
    """The prompts a case continues: the rewrite prompt, then its paraphrases."""
    return [request.prompt, *request.paraphrase_prompts]


def token_budget(tokenizer: PreTrainedTokenizerBase, request: EditRequest, margin_tokens: int) -> int:
    """Tokens generated for every prompt of the case: the longest target continuation + the margin."""
    if margin_tokens < 0:
        raise ValueError(f"editing.evaluation.free_generation.margin_tokens={margin_tokens}: use 0 or more")
    longest = max(len(continuation(tokenizer, prompt, target).target_ids)
                  for prompt in free_generation_prompts(request) for target in (request.target_new, request.target_true))
    return longest + margin_tokens


def begins_with_answer(text: str, answer: str) -> bool:
    """``text`` (a continuation) begins with ``answer``, leading whitespace aside, not cut inside a word."""
    text, answer = text.lstrip(), answer.strip()
    if not answer or not text.startswith(answer):
        return False
    after = text[len(answer):]
    return not (after and answer[-1].isalnum() and after[0].isalnum())


def contains_answer(text: str, answer: str) -> bool:
    """``answer`` occurs in ``text`` as whole words (no letter or digit joined to either end of it)."""
    answer = answer.strip()
    if not answer:
        return False
    start = text.find(answer)
    while start >= 0:
        before, after = text[start - 1 : start], text[start + len(answer) : start + len(answer) + 1]
        if not (before and answer[0].isalnum() and before.isalnum()) and not (after and answer[-1].isalnum() and after.isalnum()):
            return True
        start = text.find(answer, start + 1)
    return False


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def metrics_from_continuations(request: EditRequest, continuations: Sequence[str], n_new_tokens: int) -> dict[str, object]:
    """The case's columns from its decoded continuations (``free_generation_prompts`` order)."""
    rewrite, paraphrases = continuations[0], continuations[1:]
    return {
        "gen_efficacy": float(begins_with_answer(rewrite, request.target_new)),
        "gen_paraphrase": _mean([float(begins_with_answer(text, request.target_new)) for text in paraphrases]),
        "gen_efficacy_true": float(begins_with_answer(rewrite, request.target_true)),
        "gen_paraphrase_true": _mean([float(begins_with_answer(text, request.target_true)) for text in paraphrases]),
        "gen_efficacy_contains": float(contains_answer(rewrite, request.target_new)),
        "gen_paraphrase_contains": _mean([float(contains_answer(text, request.target_new)) for text in paraphrases]),
        "gen_n_new_tokens": n_new_tokens,
        "gen_continuations": json.dumps(list(continuations)),
    }


def free_generation_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                         settings: Mapping) -> list[dict[str, object]]:
    """The free-generation columns of each case, every prompt of every case in one greedy batch
    (batch row order: each case's ``free_generation_prompts`` in turn, as ``row_edits.per_row_changes``
    must be given them). ``settings``: conf/editing's ``evaluation.free_generation`` block.

    Each row stops at its own case's budget, so a case's columns do not depend on the cases beside it
    (up to the float round-off of another padded width: tests/test_free_generation.py)."""
    margin = int(settings["margin_tokens"])
    prompts = [free_generation_prompts(request) for request in requests]
    budgets = [token_budget(tokenizer, request, margin) for request in requests]
    new_tokens_BxN = greedy_token_ids(model, tokenizer, [p for case in prompts for p in case], max_new_tokens=max(budgets))
    eos = tokenizer.eos_token_id
    rows, start = [], 0
    for request, case, budget in zip(requests, prompts, budgets):
        texts = []
        for ids in new_tokens_BxN[start : start + len(case), :budget].tolist():
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            texts.append(tokenizer.decode(ids))
        rows.append(metrics_from_continuations(request, texts, budget))
        start += len(case)
    return rows
