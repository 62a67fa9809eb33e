"""The public API on tiny random models: its tables are the pipeline's, edits are undone bit for bit,
a trace returns the effect tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from backlens.api import BackwardLens, edit, editor, next_tokens, trace
from backlens.api.lens import GRADIENT_TABLES, LENS_TABLES
from backlens.api.tracing import MAP_KINDS
from backlens.editing.keys_values import outputs_at_subject
from backlens.io import write_table
from backlens.stages import backward_lens, logit_lens_examples, sample_prompts
from conftest import compose_config, require_shared
from tolerances import assert_close_float32, vocab_chain


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def pipeline(request, tmp_path_factory):
    """The pipeline's Backward Lens and Fig 4 tables for one tiny model."""
    require_shared("data", "counterfact")
    if request.param == "tiny-gpt2":
        require_shared("assets", "gpt2_tokenizer")
    results = tmp_path_factory.mktemp(request.param)
    cfg = compose_config(f"model={request.param}", "n_prompts=6", f"paths.results={results}", "analysis.batch_size=4")
    for stage in (sample_prompts, backward_lens, logit_lens_examples):
        stage.run(cfg)
    return cfg


def same_bytes(frame: pd.DataFrame, path: str, tmp_path) -> bool:
    """The API table written as the stage writes its tables is byte for byte the stage's file."""
    ours = write_table(frame, tmp_path / "ours.parquet")
    return ours.read_bytes() == Path(path).read_bytes()


def test_run_equals_the_backward_lens_tables(pipeline, tmp_path):
    prompts = pd.read_parquet(pipeline.paths.prompts).groupby("sample_index").first()
    lens = BackwardLens(pipeline.model.name)
    result = lens.run(prompts.prompt.tolist(), prompts.target_new.tolist(), prompts.subject.tolist(),
                      case_ids=prompts.case_id.tolist(), batch_size=int(pipeline.analysis.batch_size),
                      tables=GRADIENT_TABLES, progress=False)
    for name in GRADIENT_TABLES:
        expected = pd.read_parquet(pipeline.paths[name])
        pd.testing.assert_frame_equal(result.tables[name], expected, check_exact=True)
        assert same_bytes(result.tables[name], pipeline.paths[name], tmp_path), name


def test_run_equals_the_fig4_tables(pipeline, tmp_path):
    settings = pipeline.analysis.logit_lens
    examples = list(settings.examples)
    result = BackwardLens(pipeline.model.name).run(
        [e.prompt for e in examples], [e.target_new for e in examples], [e.subject for e in examples],
        target_trues=[e.target_true for e in examples], batch_size=1, tables=LENS_TABLES, top_k=int(settings.top_k),
        progress=False,
    )
    assert same_bytes(result.lens_cells, pipeline.paths.logit_lens_cells, tmp_path)
    assert same_bytes(result.lens_tokens, pipeline.paths.logit_lens_tokens, tmp_path)


def test_batching_changes_lens_numbers_by_round_off_only(pipeline):
    lens = BackwardLens(pipeline.model.name)
    examples = list(pipeline.analysis.logit_lens.examples)
    args = ([e.prompt for e in examples], [e.target_new for e in examples])
    alone = lens.run(*args, batch_size=1, tables=LENS_TABLES, progress=False).lens_cells
    batched = lens.run(*args, batch_size=len(examples), tables=LENS_TABLES, progress=False).lens_cells
    assert (alone.is_zero == batched.is_zero).all()
    assert_close_float32(torch.tensor(batched.norm.values), torch.tensor(alone.norm.values), **vocab_chain(lens.loaded))


def test_summary_is_one_row_per_layer_and_token(tiny_gpt2):
    lens = BackwardLens(tiny_gpt2)
    result = lens.run("Obama grew up in", " Paris", "Obama", progress=False)
    summary = result.summary()
    n_tokens = len(tiny_gpt2.tokenizer("Obama grew up in")["input_ids"])
    assert len(summary) == n_tokens * tiny_gpt2.adapter.n_layers
    last_layer = summary[summary.layer == summary.layer.max()]
    zero = last_layer[last_layer.position < n_tokens - 1]
    assert (zero.delta_target_rank == -1).all() and zero.delta_bottom.isna().all()
    assert summary.loc[summary.position == 0, "segment"].eq("last_subject").all()
    assert {"gradient_ranks", "vjp_norms", "target_ranks"} <= set(result.tables)


def parameters(loaded) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in loaded.model.named_parameters()}


@pytest.mark.parametrize("method, extra", [
    ("shift", {"skip_if_predicted": False}),
    ("ft", {}),
    ("rome", {"templates": ["{}"]}),
    ("memit", {"templates": [["{}"]]}),
])
def test_edit_changes_weights_inside_and_restores_them_bit_for_bit(tiny_gpt2, method, extra):
    before = parameters(tiny_gpt2)
    d_ff = tiny_gpt2.adapter.ff2_site(0).in_features
    covariance = torch.eye(d_ff, dtype=torch.float64) if method in ("rome", "memit") else None
    with edit(tiny_gpt2, "{} is located in", "The Eiffel Tower", " Rome", method=method, covariance=covariance,
              **extra) as result:
        inside = parameters(tiny_gpt2)
        changed = [name for name in before if not torch.equal(before[name], inside[name])]
        assert changed and all("mlp" in name for name in changed)
        assert result.request.prompt == "The Eiffel Tower is located in"
        assert result.facts
    after = parameters(tiny_gpt2)
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])  # Conv1D (in, out) and nn.Linear (out, in)
@pytest.mark.parametrize("method, templates", [("rome", ["{}"]), ("memit", [["{}"]])])
def test_edit_returns_the_update_factors_and_the_loss_curve(request, model_name, method, templates):
    loaded = request.getfixturevalue(model_name)
    before = parameters(loaded)
    d_ff = loaded.adapter.ff2_site(0).in_features
    with edit(loaded, "{} is located in", "The Eiffel Tower", " Rome", method=method,
              covariance=torch.eye(d_ff, dtype=torch.float64), templates=templates) as result:
        update = result.update
        layers = [result.hparams["layer"]] if method == "rome" else result.hparams["layers"]
        assert [layer.layer for layer in update.layers] == layers
        for layer in update.layers:
            site = loaded.adapter.ff2_site(layer.layer)
            name = next(n for n, p in loaded.model.named_parameters() if p is site.weight)
            change = site.weight.detach() - before[name]
            # The weight gained u v^T in (in, out) terms: outer(v, u) as an (out, in) matrix.
            outer_out_in = torch.outer(layer.v_Out, layer.u_In).to(change.dtype)
            torch.testing.assert_close(site.as_out_in(change), outer_out_in, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(change, layer.weight_change(site).to(change.dtype), rtol=1e-4, atol=1e-6)
        if method == "rome":
            # ROME's equality constraint: the edited FF2 maps the prompt's key to v*.
            editor = result.editor
            after = outputs_at_subject(editor, editor.layer, result.request, editor.fact_token)["ff2_out"]
            torch.testing.assert_close(after, update.v_star_Out, rtol=1e-4, atol=1e-5)
        losses, stop = update.losses, result.hparams["stop_below_loss"]
        assert len(losses) == result.facts["v_steps"] >= 1 and losses[-1] == result.facts["v_last_loss"]
        # Every loss but the last is above the stop value; the last is below it or the last step's.
        assert all(loss >= stop for loss in losses[:-1])
        assert losses[-1] < stop or len(losses) == result.hparams["v_num_grad_steps"]


def test_editor_handle_builds_once_and_edits_as_edit_does(tiny_gpt2, monkeypatch):
    """The handle samples ROME's templates and inverts C once; each of its edits equals ``edit``'s."""
    before = parameters(tiny_gpt2)
    d_ff = tiny_gpt2.adapter.ff2_site(0).in_features
    covariance = torch.eye(d_ff, dtype=torch.float64) * 2.0
    handle = editor(tiny_gpt2, "rome", covariance=covariance, v_num_grad_steps=3)
    kept = (handle.editor.templates, handle.editor.inverse_mom2)
    inversions = []
    monkeypatch.setattr(torch.linalg, "inv", lambda *a, **k: inversions.append(1))  # any later inversion is counted
    facts = [("The Eiffel Tower", " Rome"), ("The Space Needle", " Paris")]
    for subject, target in facts:
        with handle.edit("{} is located in", subject, target) as result:
            change = {n: p.detach() - before[n] for n, p in tiny_gpt2.model.named_parameters()}
        assert result.method == "rome" and result.editor is handle.editor
        monkeypatch.undo()
        with edit(tiny_gpt2, "{} is located in", subject, target, method="rome", covariance=covariance,
                  templates=kept[0], v_num_grad_steps=3) as single:
            for name, p in tiny_gpt2.model.named_parameters():
                torch.testing.assert_close(p.detach() - before[name], change[name], rtol=0, atol=0)
        assert single.facts["v_last_loss"] == result.facts["v_last_loss"]
        monkeypatch.setattr(torch.linalg, "inv", lambda *a, **k: inversions.append(1))
    assert not inversions and handle.editor.templates is kept[0] and handle.editor.inverse_mom2 is kept[1]
    after = parameters(tiny_gpt2)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_edit_of_other_methods_has_no_factored_update(tiny_gpt2):
    with edit(tiny_gpt2, "{} is located in", "The Eiffel Tower", " Rome", method="ft") as result:
        assert result.update is None and result.facts


def test_edit_restores_the_weights_when_the_block_fails(tiny_gpt2):
    before = parameters(tiny_gpt2)
    with pytest.raises(KeyError):
        with edit(tiny_gpt2, "The Eiffel Tower is located in", "The Eiffel Tower", " Rome", skip_if_predicted=False):
            raise KeyError("inside")
    after = parameters(tiny_gpt2)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_next_tokens_are_sorted_probabilities(tiny_gpt2):
    table = next_tokens(tiny_gpt2, ["The Eiffel Tower is located in", "Paris is"], k=5)
    assert len(table) == 10 and table.groupby("prompt").prob.apply(lambda p: p.is_monotonic_decreasing).all()


def test_trace_returns_the_three_effect_maps(tiny_gpt2):
    traced = trace(tiny_gpt2, "The Space Needle is in the city of", "The Space Needle", " Seattle", progress=False)
    n_tokens = len(traced.tokens)
    assert set(traced.effects.kind) == set(MAP_KINDS)
    for kind in MAP_KINDS:
        assert traced.grid(kind).shape == (n_tokens, tiny_gpt2.adapter.n_layers)
    ids = torch.tensor([traced.tokens.token_id.tolist()])
    with torch.no_grad():
        probs = torch.softmax(tiny_gpt2.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    assert_close_float32(traced.fact["p_clean"], probs[traced.fact["answer_id"]], **vocab_chain(tiny_gpt2))
    assert traced.fact["subject_start"] == 0 and traced.tokens.model.eq("tiny-gpt2").all()
