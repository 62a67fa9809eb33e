"""The batched evaluation (shared sequences, logits only where read, the unedited efficacy over
cases) gives the reference path's numbers on tiny GPT-2 and tiny Llama (issue 23).

Bound: float32 round-off of a different batch shape and of the unembedding on fewer positions;
the measured largest difference of mean NLL is 9.5e-7 on both models (one float32 ulp at their
NLLs of 10-11 nats), the bound is 1e-5 (absolute); every accuracy and success flag is equal.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from backlens.data.counterfact import PromptWithAnswer
from backlens.editing.base import Editor
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.evaluation import CaseLog, case_metrics, efficacy_before, evaluate_case, evaluate_editor
from backlens.editing.row_edits import DenseChange, RankOneChange, dense_changes, rank_one_changes, row_changes
from backlens.editing.requests import continuation
from backlens.editing.scoring import score_answers, score_answers_per_pair, shared_sequences
from backlens.editing.shift import ForwardPassShift
from backlens.editing.weights import restored_after
from test_editing_methods import EVALUATION, REQUEST

NLL_BOUND = 1e-5

PAIRS = [
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("The mother tongue of Danielle Darrieux is", "Rio de Janeiro"),
    ("The mother tongue of Danielle Darrieux is", "Rio de Janeiro"),
    ("He lives in", "Rio de Janeiro"),
    ("He lives in", "São Paulo"),
    ("He lives in", "Paris"),
    ("Where Danielle Darrieux is from, people speak the language of", "French"),
    ("A prompt ending in a space ", "English"),
    ("Michel Rocard is a native speaker of", "French"),
]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"], scope="module")
def loaded(request):
    return request.getfixturevalue(request.param)


def assert_same_scores(batched, reference):
    assert len(batched) == len(reference)
    for new, old in zip(batched, reference):
        assert new.argmax_correct == old.argmax_correct and new.n_tokens == old.n_tokens and new.merged == old.merged
        assert new.mean_nll == pytest.approx(old.mean_nll, abs=NLL_BOUND)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_shared_sequences_score_as_one_sequence_per_pair(loaded, batch_size):
    batched = score_answers(loaded.model, loaded.tokenizer, PAIRS, batch_size=batch_size)
    reference = score_answers_per_pair(loaded.model, loaded.tokenizer, PAIRS, batch_size=batch_size)
    assert_same_scores(batched, reference)
    assert any(s.n_tokens > 1 for s in reference)


def test_a_prompt_needs_one_sequence_per_multi_token_answer(loaded):
    items = [continuation(loaded.tokenizer, p, a) for p, a in PAIRS]
    sequences, where = shared_sequences(items)
    for item, index in zip(items, where):
        assert sequences[index][: len(item.prompt_ids)] == item.prompt_ids
        if len(item.target_ids) > 1:
            assert sequences[index] == item.prompt_ids + item.target_ids
    prompts = {item.prompt_ids for item in items}
    multi = {item.prompt_ids + item.target_ids for item in items if len(item.target_ids) > 1}
    only_single = {p for p in prompts if not any(s[: len(p)] == p and len(s) > len(p) for s in multi)}
    assert len(sequences) == len(multi) + len(only_single) < len(PAIRS)


def _requests():
    neighbour = PromptWithAnswer("Michel Rocard is a native speaker of", "French")
    return [
        REQUEST,
        replace(REQUEST, case_id=8, target_new="Rio de Janeiro"),
        replace(REQUEST, case_id=9, target_true="São Paulo", neighborhood_prompts=(neighbour, neighbour)),
    ]


def test_case_rows_equal_the_reference_path(loaded):
    editor = ForwardPassShift(loaded, {"layer": 1, "eta": 5.0, "skip_if_predicted": False})
    for request in _requests():
        reference = evaluate_case(editor, request, EVALUATION, generate=True, perplexity_blocks=None, per_pair=True)
        batched = evaluate_case(editor, request, EVALUATION, generate=True, perplexity_blocks=None)
        for key in ("p_new", "p_true"):
            assert batched.pop(key) == pytest.approx(reference.pop(key), rel=NLL_BOUND)
        batched.pop("edit_seconds"), reference.pop("edit_seconds")
        assert batched == reference
        unedited = case_metrics(editor, request, batch_size=8, per_pair=True)
        assert batched["efficacy_before"] == unedited["efficacy"]
    # The unedited efficacy batched over cases is each case's own.
    requests = _requests()
    assert efficacy_before(editor, requests, batch_size=2) == {
        r.case_id: case_metrics(editor, r, batch_size=8, per_pair=True)["efficacy"] for r in requests}


class RandomFF2Edits(Editor):
    """Seeded random changes of two FF2 weights per case: rank one each (as MEMIT's), or of rank
    three (as MEND's, whose rows share a batch through ``DenseChange``)."""

    def __init__(self, loaded, rank_one: bool):
        super().__init__(loaded, {})
        self.sites = [loaded.adapter.ff2_site(layer) for layer in (0, 1)]
        self.rank_one = rank_one

    def edited_parameters(self):
        return [site.weight for site in self.sites]

    def apply(self, request):
        generator = torch.Generator().manual_seed(request.case_id)
        with torch.no_grad():
            for site in self.sites:
                rank = 1 if self.rank_one else 3
                u = torch.randn(rank, site.in_features, generator=generator)
                v = torch.randn(rank, site.out_features, generator=generator)
                site.weight.add_(site.gradient_from_factors(u, v))
        return {}


def _editors(loaded):
    return {
        "shift": ForwardPassShift(loaded, {"layer": 1, "eta": 5.0, "skip_if_predicted": True}),
        "two rank-one layers": RandomFF2Edits(loaded, rank_one=True),
        "rank three": RandomFF2Edits(loaded, rank_one=False),
        # Full rank, and the bias too on GPT-2 (Conv1D's layout).
        "ft": ConstrainedFineTuning(loaded, {"layer": 1, "num_steps": 3, "lr": 1e-2, "norm_constraint": 0.05,
                                             "stop_below_loss": 0.0}),
    }


def test_rank_one_changes_reproduce_the_edit_or_refuse(loaded):
    for name, editor in _editors(loaded).items():
        with restored_after(editor.edited_parameters()) as snapshot:
            editor.apply(REQUEST)
            changes = rank_one_changes(snapshot, loaded.adapter)
            if name in ("rank three", "ft"):
                assert changes is None
                continue
            assert len(changes) == len(snapshot.changes()) > 0
            for (parameter, delta), change in zip(snapshot.changes(), changes):
                site = next(s for s in (loaded.adapter.ff2_site(i) for i in range(3)) if s.weight is parameter)
                rebuilt = site.gradient_from_factors(change.u_In[None], change.v_Out[None])
                assert torch.allclose(rebuilt, delta, rtol=0, atol=1e-5 * float(delta.abs().max()))


def test_edits_of_higher_rank_are_dense_changes_that_reproduce_the_edited_outputs(loaded):
    """FT-L and rank-three edits share a batch as DenseChange (weight and bias changes of their FF2
    modules); each module's output plus the change's addition is the edited module's output (float
    round-off: 1e-6 of the largest output); a change outside FF2 modules is refused."""
    x_BxTxIn = torch.randn(2, 3, loaded.adapter.ff2_site(0).in_features, generator=torch.Generator().manual_seed(1))
    for name, editor in _editors(loaded).items():
        with restored_after(editor.edited_parameters()) as snapshot:
            editor.apply(REQUEST)
            changes = row_changes(snapshot, loaded.adapter)
            kind = DenseChange if name in ("rank three", "ft") else RankOneChange
            assert changes and all(isinstance(change, kind) for change in changes), name
            if kind is RankOneChange:
                continue
            assert [c.module for c in dense_changes(snapshot, loaded.adapter)] == [c.module for c in changes]
            if name == "ft" and getattr(changes[0].module, "bias", None) is not None:
                assert changes[0].bias_delta is not None  # GPT-2's Conv1D: the bias is fine-tuned too
            with torch.no_grad():
                edited = {id(change.module): change.module(x_BxTxIn) for change in changes}
        for change in changes:
            with torch.no_grad():
                unedited_plus = change.module(x_BxTxIn) + change.addition(x_BxTxIn)
            reference = edited[id(change.module)]
            assert torch.allclose(unedited_plus, reference, rtol=0, atol=1e-6 * float(reference.abs().max())), name
    embeddings = loaded.model.get_input_embeddings().weight
    with restored_after([embeddings]) as snapshot, torch.no_grad():
        embeddings[0] += 1.0
        assert dense_changes(snapshot, loaded.adapter) is None and row_changes(snapshot, loaded.adapter) is None


def test_cases_generating_in_one_batch_give_each_case_its_own_rows(loaded, tmp_path):
    """evaluate_editor samples the generating cases' texts together, and runs every case's greedy
    free generation (issue 26) together, each row with its case's changes through a hook (rank-one,
    or dense for FT-L and the rank-three edits); the texts and columns equal those of each case's
    edited weights alone."""
    evaluation = {**EVALUATION, "generation": {"max_new_tokens": 8, "top_k": 5}}
    requests = [*_requests(), replace(REQUEST, case_id=10, target_new="Paris")]
    for name, editor in _editors(loaded).items():
        rows = evaluate_editor(editor, requests, CaseLog(tmp_path / f"{name}.jsonl", "f"), evaluation,
                               generation_case_ids={7, 8, 9}, perplexity_case_ids=set(), perplexity_blocks=None,
                               label=name)
        for request, row in zip(requests, rows):
            alone = evaluate_case(editor, request, evaluation, generate=request.case_id in {7, 8, 9},
                                  perplexity_blocks=None)
            for key in ("p_new", "p_true"):
                assert row.pop(key) == pytest.approx(alone.pop(key), rel=NLL_BOUND)
            for key in ("edit_seconds", "config_fingerprint"):
                row.pop(key, None), alone.pop(key, None)
            assert row == alone, (name, request.case_id)
            assert (row["generated_texts"] is not None) == (request.case_id in {7, 8, 9})
            assert row["gen_continuations"] is not None and row["gen_efficacy"] in (0.0, 1.0)


@pytest.mark.parametrize("family", ["tiny_gpt2", "tiny_llama", "tiny_gemma3"])
def test_scores_above_a_block_equal_the_whole_forward(request, family):
    """The shift sweep's path (``ScoresAboveBlock``): the stream entering the edited block computed
    once on the unedited model, then for each change of that block's FF2 only the blocks from it on;
    the scores equal ``score_answers`` on the changed model (the same bound; Gemma 3: sliding-window
    layers in the range)."""
    from backlens.editing.scoring import ScoresAboveBlock
    from backlens.editing.weights import weights_added
    from backlens.models.adapters import adapter_for

    loaded = request.getfixturevalue(family)
    adapter = adapter_for(loaded.model)
    layer = adapter.n_layers // 2
    weight = adapter.ff2_site(layer).weight
    scorer = ScoresAboveBlock(adapter, loaded.tokenizer, PAIRS, layer, batch_size=3)
    assert_same_scores(scorer(), score_answers(loaded.model, loaded.tokenizer, PAIRS, batch_size=3))
    unedited = [score.mean_nll for score in scorer()]
    generator = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0):  # two edits through the same cached stream
        change = scale * torch.outer(torch.randn(weight.shape[0], generator=generator),
                                     torch.randn(weight.shape[1], generator=generator))
        with weights_added(weight, change.to(weight.dtype)):
            reference = score_answers(loaded.model, loaded.tokenizer, PAIRS, batch_size=3)
            assert_same_scores(scorer(), reference)
        assert max(abs(new.mean_nll - old) for new, old in zip(reference, unedited)) > 1e-3  # the change shows
        assert adapter.lowest_block([weight]) == layer
