"""Efficacy by free generation (issue 26): the greedy continuation and its success rule.

The greedy decoder (left-padded batch, KV cache) is pinned to a decoder without either (each prompt
alone, the whole sequence re-run at every step): the same token ids on every tiny family. A case's
columns do not depend on the cases beside it. Constructed cases whose target is the model's own
greedy continuation score 1, a target it never says scores 0, on the unedited model and through
``evaluate_case``; the columns reach the summary, Table 1 and the scorecard's finding.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import torch
from test_editing_methods import EVALUATION, REQUEST

from backlens.analysis.beyond_summary import free_generation_finding
from backlens.editing.base import NoEdit
from backlens.editing.evaluation import evaluate_case
from backlens.editing.columns import FREE_GENERATION_COLUMNS
from backlens.editing.free_generation import (
    begins_with_answer,
    contains_answer,
    free_generation_rows,
    token_budget,
)
from backlens.editing.generation import greedy_token_ids

SETTINGS = EVALUATION["free_generation"]
PROMPTS = ["The mother tongue of Danielle Darrieux is", "He lives in",
           "Where Danielle Darrieux is from, people speak the language of", "A"]


@torch.no_grad()
def greedy_without_cache(model, tokenizer, prompt: str, n_tokens: int) -> list[int]:
    """The reference: one prompt, no padding, no KV cache, argmax of the last position's logits."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    new = []
    for _ in range(n_tokens):
        next_id = int(model(input_ids=ids).logits[0, -1].float().argmax())
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
    return new


def test_the_success_rule():
    assert begins_with_answer(" English, and French", "English")
    assert begins_with_answer("English", " English ")
    assert begins_with_answer(" Rio de Janeiro.", "Rio de Janeiro")
    assert not begins_with_answer(" Englishman", "English"), "a word cut off is no answer"
    assert not begins_with_answer(" the English", "English"), "begins with, not contains"
    assert not begins_with_answer(" english", "English"), "case-sensitive"
    assert not begins_with_answer(" Eng", "English") and not begins_with_answer("", "English")
    assert begins_with_answer(" C++ and", "C++") and begins_with_answer(" C++x", "C++")
    # The laxer reading: anywhere, as whole words.
    assert contains_answer(" of Islam,", "Islam") and contains_answer(" Islam", "Islam")
    assert contains_answer(" Rio de Janeiro.", "Rio de Janeiro") and contains_answer("xIslam Islam", "Islam")
    assert not contains_answer(" Islamic", "Islam") and not contains_answer(" pre-Islamabad", "Islam")
    assert not contains_answer(" of Isla", "Islam") and not contains_answer(" anything", "")


def test_batched_greedy_equals_each_prompt_alone_without_cache(tiny_model):
    batched = greedy_token_ids(tiny_model.model, tiny_model.tokenizer, PROMPTS, max_new_tokens=6)
    assert batched.shape == (len(PROMPTS), 6)
    for row, prompt in enumerate(PROMPTS):
        assert batched[row].tolist() == greedy_without_cache(tiny_model.model, tiny_model.tokenizer, prompt, 6), prompt


def test_a_cases_columns_do_not_depend_on_the_cases_beside_it(tiny_model):
    requests = [REQUEST, replace(REQUEST, case_id=8, target_new="Rio de Janeiro", paraphrase_prompts=()),
                replace(REQUEST, case_id=9, prompt="He lives in", subject="He", subject_start=None,
                        paraphrase_prompts=("A", "He lives in"))]
    together = free_generation_rows(tiny_model.model, tiny_model.tokenizer, requests, SETTINGS)
    alone = [free_generation_rows(tiny_model.model, tiny_model.tokenizer, [r], SETTINGS)[0] for r in requests]
    assert together == alone
    for request, row in zip(requests, together):
        assert row["gen_n_new_tokens"] == token_budget(tiny_model.tokenizer, request, SETTINGS["margin_tokens"])
        assert len(json.loads(row["gen_continuations"])) == 1 + len(request.paraphrase_prompts)
    assert together[1]["gen_paraphrase"] is None and together[2]["gen_paraphrase"] is not None


def _first_word(model, tokenizer, prompt: str) -> str:
    """The first whitespace-delimited word of the model's own greedy continuation of ``prompt``."""
    text = tokenizer.decode(greedy_without_cache(model, tokenizer, prompt, 12))
    words = text.split()
    assert words, f"the tiny model continued {prompt!r} with whitespace only: {text!r}"
    return words[0]


def test_the_models_own_continuation_scores_one_and_a_foreign_target_zero(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    paraphrase = REQUEST.paraphrase_prompts[0]
    said = _first_word(model, tokenizer, REQUEST.prompt)
    # The model says `said` after the rewrite prompt: as target_new it succeeds, as target_true too.
    own = replace(REQUEST, target_new=said, target_true=said)
    (row,) = free_generation_rows(model, tokenizer, [own], SETTINGS)
    assert row["gen_efficacy"] == 1.0 and row["gen_efficacy_true"] == 1.0 and row["gen_efficacy_contains"] == 1.0
    # A target it never generates fails; the old answer, its own continuation, is still said.
    foreign = replace(REQUEST, target_new="Zqxwv", target_true=said)
    (row,) = free_generation_rows(model, tokenizer, [foreign], SETTINGS)
    assert (row["gen_efficacy"], row["gen_paraphrase"], row["gen_efficacy_true"]) == (0.0, 0.0, 1.0)
    assert (row["gen_efficacy_contains"], row["gen_paraphrase_contains"]) == (0.0, 0.0)
    assert json.loads(row["gen_continuations"])[0].split()[0] == said
    # Through the evaluation pass Table 1 uses (the unedited model: Table 1's "Original" row).
    case = evaluate_case(NoEdit(tiny_model, {}), replace(own, paraphrase_prompts=(paraphrase,)), EVALUATION,
                         generate=False, perplexity_blocks=None)
    assert case["gen_efficacy"] == 1.0 and list(case)[-len(FREE_GENERATION_COLUMNS) - 1 : -1] == list(FREE_GENERATION_COLUMNS)
    swept = evaluate_case(NoEdit(tiny_model, {}), own, EVALUATION, generate=False, perplexity_blocks=None,
                          free_generation=False)
    assert not set(FREE_GENERATION_COLUMNS) & set(swept)


def test_the_scorecard_finding_reads_table1():
    table1 = pd.DataFrame({"method": ["none", "rome"], "label": ["Original", "ROME"], "efficacy_mean": [0.0, 100.0],
                           "efficacy_success_mean": [28.0, 100.0], "gen_efficacy_mean": [0.0, 62.0]})
    _question, ours, figure = free_generation_finding(table1)
    assert "Original 0 / 0 / 28" in ours and "ROME 62 / 100 / 100" in ours and figure == "-"
    stale = table1.drop(columns="gen_efficacy_mean")
    assert "not measured" in free_generation_finding(stale)[1]
