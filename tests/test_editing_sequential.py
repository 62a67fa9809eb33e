"""Sequential and batch editing (issue 26): edits accumulate and earlier ones are re-scored, a killed run
resumes to the same rows, MEMIT's batch update (one fact = the single edit, two facts = both moved),
collapse detection, and the stages on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from backlens.data.counterfact import PromptWithAnswer
from backlens.editing.alphaedit import AlphaEditMemory
from backlens.editing.evaluation import CaseLog, many_case_metrics
from backlens.editing.memit import MassEditingMemory
from backlens.editing.requests import EditRequest
from backlens.editing.sequential import SequentialSettings, detect_collapse, planned_checkpoints, run_sequential
from backlens.editing.shift import ForwardPassShift
from backlens.editing.weights import restored_after
from backlens.errors import ConfigError
from backlens.figures.sequential import sequential_figure
from backlens.stages import editing_covariance, editing_sequential, render_figure, sequential_report
from conftest import compose_config, require_shared
from test_beyond_stages import _check_readable
from test_editing_methods import MEMIT_TEMPLATES, REQUEST, VALUE_HPARAMS, nll_new
from test_null_space import spectrum_moment

SETTINGS = SequentialSettings(checkpoints=(1, 2, 4), batch_size=8, perplexity_multiple=2.0, retention_floor=0.5)
HELDOUT = torch.arange(1, 49).view(3, 16)
TIMES = ("edit_seconds", "eval_seconds", "n_edits_timed")
REQUESTS = [
    REQUEST,
    EditRequest(case_id=8, prompt="The Eiffel Tower is located in", subject="Eiffel Tower", target_new="Rome",
                target_true="Paris", paraphrase_prompts=("Where is the Eiffel Tower? It is in",),
                neighborhood_prompts=(PromptWithAnswer("The Louvre is located in", "Paris"),)),
    EditRequest(case_id=9, prompt="Michel Rocard speaks", subject="Michel Rocard", target_new="German", target_true="French",
                neighborhood_prompts=(PromptWithAnswer("Danielle Darrieux speaks", "French"),)),
    replace(REQUEST, case_id=10, target_new="Paris"),
]


def strip_times(rows):
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


def shift(loaded, **extra):
    return ForwardPassShift(loaded, {"layer": 1, "eta": 5.0, "skip_if_predicted": False, **extra})


def edited_weight(editor):
    return editor.edited_parameters()[0].detach().clone()


def test_checkpoints_keep_those_in_range_and_add_the_last_edit():
    assert planned_checkpoints([1, 10, 100, 1000], 50) == [1, 10, 50]
    assert planned_checkpoints([1, 2], 2) == [1, 2]
    with pytest.raises(ValueError):
        planned_checkpoints([1], 0)


def test_edits_accumulate_and_every_earlier_edit_is_rescored(tiny_gpt2, tmp_path):
    editor = shift(tiny_gpt2)
    with restored_after(editor.edited_parameters()):
        original = edited_weight(editor)
        editor.apply(REQUESTS[0])
        after_one = edited_weight(editor)
        one = many_case_metrics(editor, REQUESTS[:1], batch_size=8)
        editor.apply(REQUESTS[1])
        after_two = edited_weight(editor)
        two = many_case_metrics(editor, REQUESTS[:2], batch_size=8)
    assert not torch.equal(after_one, original) and not torch.equal(after_two, after_one)
    with restored_after(editor.edited_parameters()):
        progress = CaseLog(tmp_path / "progress.jsonl", "f", key="n_edits")
        rows, base = run_sequential(editor, REQUESTS[:2], SETTINGS, progress, tmp_path / "state.pt", HELDOUT, "shift")
        assert torch.equal(edited_weight(editor), after_two)  # nothing restored between the edits
    assert [row["n_edits"] for row in rows] == [1, 2]
    # Edit 1 is scored again after edit 2, on the weights both edits left.
    assert rows[1]["cases"]["case_id"] == [7, 8]
    for field in ("efficacy_success", "neighborhood_success"):
        assert rows[0]["cases"][field] == [m[field] for m in one]
        assert rows[1]["cases"][field] == [m[field] for m in two]
    assert rows[1]["retention"] == sum(m["efficacy_success"] for m in two) / 2
    name = next(iter(rows[1]["update_norms"]))
    assert rows[0]["update_norms"][name]["frobenius"] == pytest.approx(float((after_one - original).double().norm()), rel=1e-6)
    assert rows[1]["update_norms"][name]["frobenius"] == pytest.approx(float((after_two - original).double().norm()), rel=1e-6)
    assert rows[1]["perplexity"] is not None and base.perplexity == rows[0]["unedited_perplexity"]
    assert rows[1]["retention_unedited"] == sum(m["efficacy_success"] for m in base.cases[:2]) / 2


class KilledAfter:
    """An editor that dies on its ``n``-th edit, as a killed job would."""

    def __init__(self, editor, n):
        self.editor, self.n, self.calls = editor, n, 0

    def __getattr__(self, name):
        return getattr(self.editor, name)

    def apply(self, request):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("killed")
        return self.editor.apply(request)


def alphaedit(loaded):
    mom2, threshold = spectrum_moment(loaded.adapter.ff2_site(0).in_features)
    hparams = {**VALUE_HPARAMS, "v_num_grad_steps": 3, "clamp_norm_factor": 0.75, "layers": [0, 1], "mom2_update_weight": 1.0,
               "nullspace_projection": True, "nullspace_threshold": threshold, "L2": 1e-3}
    return AlphaEditMemory(loaded, hparams, second_moments={0: mom2, 1: mom2}, templates=MEMIT_TEMPLATES)


@pytest.mark.parametrize("make", [shift, alphaedit], ids=["shift", "alphaedit"])
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_rows(tiny_gpt2, tmp_path, make):
    editor = make(tiny_gpt2)
    run = lambda ed, name: run_sequential(ed, REQUESTS, SETTINGS, CaseLog(tmp_path / f"{name}.jsonl", "f", key="n_edits"),
                                          tmp_path / f"{name}.pt", HELDOUT, name)[0]
    with restored_after(editor.edited_parameters()):
        complete = run(editor, "complete")
    # Killed on the 3rd edit: checkpoints 1 and 2 are logged and the weights after 2 edits saved.
    with restored_after(editor.edited_parameters()), pytest.raises(KeyboardInterrupt):
        run(KilledAfter(editor, 3), "killed")
    assert sorted(CaseLog(tmp_path / "killed.jsonl", "f", key="n_edits").finished()) == [1, 2]
    # A new process starts from the unedited weights (AlphaEdit's cache comes from the state file).
    fresh = make(tiny_gpt2)
    with restored_after(fresh.edited_parameters()):
        resumed = run(fresh, "killed")
    assert strip_times(resumed) == strip_times(complete)
    if isinstance(fresh, AlphaEditMemory):
        assert fresh.n_cached == len(REQUESTS)
    # Killed after saving the weights of checkpoint 4 but before logging it: that row is measured again.
    lines = (tmp_path / "killed.jsonl").read_text().splitlines()
    (tmp_path / "killed.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with restored_after(fresh.edited_parameters()):
        again = run(make(tiny_gpt2), "killed")
    assert strip_times(again) == strip_times(complete)


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_llama"])
def test_a_batch_of_one_is_the_single_memit_edit_exactly(request, model):
    loaded = request.getfixturevalue(model)
    mom2, _ = spectrum_moment(loaded.adapter.ff2_site(0).in_features)
    editor = MassEditingMemory(loaded, {**VALUE_HPARAMS, "v_num_grad_steps": 4, "clamp_norm_factor": 0.75, "layers": [0, 1],
                                        "mom2_update_weight": 1.0}, second_moments={0: mom2, 1: mom2}, templates=MEMIT_TEMPLATES)
    with restored_after(editor.edited_parameters()):
        editor.apply(REQUEST)
        single = [p.detach().clone() for p in editor.edited_parameters()]
    with restored_after(editor.edited_parameters()):
        facts = editor.apply_batch([REQUEST])
        batch = [p.detach().clone() for p in editor.edited_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(single, batch)) and facts["n_requests"] == 1


def test_a_batch_of_two_facts_moves_both_targets(tiny_neox):
    # As test_null_space: MEMIT raises the target's probability on tiny NeoX with KL and weight decay off.
    mom2, _ = spectrum_moment(tiny_neox.adapter.ff2_site(0).in_features)
    hparams = {**VALUE_HPARAMS, "v_num_grad_steps": 10, "v_lr": 2.0, "v_weight_decay": 0.0, "kl_factor": 0.0,
               "clamp_norm_factor": 100.0, "layers": [0, 1], "mom2_update_weight": 1e-3}
    editor = MassEditingMemory(tiny_neox, hparams, second_moments={0: mom2, 1: mom2}, templates=[["{}"]])
    facts = REQUESTS[:2]
    before = [nll_new(tiny_neox, r) for r in facts]
    with restored_after(editor.edited_parameters()):
        values = [editor.optimise_value(r) for r in facts]
        factors, _ = editor.update_factors_batch(facts, values)
        after = [nll_new(tiny_neox, r) for r in facts]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    # One update of rank 2 per layer: both facts' keys in one solve.
    assert all(keys.shape[0] == 2 and residuals.shape[0] == 2 for keys, residuals in factors)


def test_collapse_is_the_first_checkpoint_past_either_bound():
    rows = [{"n_edits": n, "perplexity": p, "retention": r}
            for n, p, r in [(1, 10.0, 1.0), (10, 12.0, 0.9), (100, 25.0, 0.8), (1000, 40.0, 0.2)]]
    assert detect_collapse(rows, 10.0, SETTINGS) == {"collapse_at": 100, "collapse_reasons": ["perplexity"],
                                                     "collapse_perplexity": 25.0, "collapse_retention": 0.8}
    gentle = [{**row, "perplexity": 11.0} for row in rows]
    assert detect_collapse(gentle, 10.0, SETTINGS)["collapse_at"] == 1000
    assert detect_collapse(gentle, 10.0, SETTINGS)["collapse_reasons"] == ["retention"]
    assert detect_collapse(gentle[:3], 10.0, SETTINGS)["collapse_at"] is None


def test_the_range_must_stay_outside_every_other_range():
    with pytest.raises(ConfigError, match="overlap editing \\(Table 1\\)"):
        editing_sequential.check_range(compose_config("editing.sequential.first_case=40"), 20)
    with pytest.raises(ConfigError, match="counterfact_corpus"):
        editing_sequential.check_range(compose_config("editing.sequential.first_case=12005"), 20)
    editing_sequential.check_range(compose_config(), 1000)


def test_sequential_and_batch_stages_on_a_tiny_model(tmp_path):
    require_shared("data", "counterfact")
    base = [f"paths.results={tmp_path}", "model=tiny-llama", "editing.corpus.n_blocks=8", "editing.corpus.batch_size=8",
            "editing.corpus.block_tokens=16", "editing.corpus.n_heldout_blocks=2", "editing.sequential.checkpoints=[1,2]",
            "editing.sequential.n_edits.shift=3", "++methods.memit.v_num_grad_steps=2",
            "++methods.memit.context_template_length_params=[[4,2]]"]
    editing_covariance.run(compose_config(*base, "method=memit"))
    single = compose_config(*base, "method=shift")
    editing_sequential.run(single)
    batch = compose_config(*base, "method=memit", "editing.sequential.batch=2")
    editing_sequential.run(batch)
    assert "sequential/shift/single/" in single.paths.sequential_checkpoints
    assert "sequential/memit/batch2/" in batch.paths.sequential_checkpoints
    rows = pd.read_parquet(single.paths.sequential_checkpoints)
    assert rows.n_edits.tolist() == [1, 2, 3] and rows.series.unique().tolist() == ["single"]
    assert (rows.perplexity_ratio > 0).all() and (rows.update_norm > 0).all()
    cases = pd.read_parquet(single.paths.sequential_cases)
    assert cases.groupby("n_edits").size().tolist() == [1, 2, 3] and cases.case_id.min() == 1000
    norms = pd.read_parquet(single.paths.sequential_norms)
    assert norms.parameter.nunique() == 1 and len(norms) == 3
    summary = json.loads(Path(single.paths.sequential_summary).read_text())
    assert summary["n_edits"] == 3 and summary["checkpoints"] == [1, 2, 3] and "collapse_at" in summary
    # A rerun finds every row logged: the same table, byte for byte.
    first = Path(single.paths.sequential_checkpoints).read_bytes()
    editing_sequential.run(single)
    assert Path(single.paths.sequential_checkpoints).read_bytes() == first
    batch_rows = pd.read_parquet(batch.paths.sequential_checkpoints)
    assert batch_rows.n_edits.tolist() == [2] and batch_rows.series.tolist() == ["batch"] and batch_rows.batch_size.tolist() == [2]
    joined = compose_config(*base, f"paths.sequential_inputs=[{single.paths.sequential_checkpoints},{batch.paths.sequential_checkpoints}]")
    editing_sequential.merge(joined)
    table = pd.read_parquet(joined.paths.sequential_table)
    assert len(table) == 4 and set(table.method) == {"shift", "memit"}
    timings = pd.read_csv(joined.paths.sequential_timings_table)
    assert timings.n_edits.tolist() == [3, 2] and (timings.seconds_per_edit > 0).all()
    figure = sequential_figure(table)
    _check_readable(figure)
    plt.close(figure)
    render_figure.run(compose_config(*base, "figure=sequential", f"paths.figure={tmp_path}/sequential.pdf"))
    assert (tmp_path / "sequential.png").stat().st_size > 5000
    sequential_report.run(joined)
    text = Path(joined.paths.sequential_report).read_text()
    last = rows.iloc[-1]
    assert f"| {last.label} | 3 | {100 * last.retention:.1f} |" in text
    assert "## One batch update against the same facts edited in sequence" in text
    assert "Not run on" not in text  # tiny Llama: no method refuses it
    # A Gemma 3 run's report names the sequential methods its editors refuse (editing.refused_methods).
    gemma = sequential_report.report(table, timings, compose_config(*base[:1], "model=tiny-gemma3"))
    assert "Not run on tiny-gemma3 (editing.refused_methods): memit, alphaedit: a block does not add" in gemma


def test_the_report_says_where_the_shift_breaks_and_how_far_the_weights_moved():
    """The shift goal's line names the first checkpoint below the floor and the accumulated update
    there against the first edit's (the report's 'why it breaks'), from the table's numbers."""
    rows = pd.DataFrame({
        "method": ["shift_whitened_nullspace"] * 3, "label": ["Shift (null space)"] * 3, "n_edits": [1, 10, 100],
        "retention": [1.0, 0.9, 0.5], "perplexity_ratio": [1.01, 1.5, 40.0], "neighborhood_success": [0.6, 0.5, 0.2],
        "neighborhood_success_unedited": [0.66] * 3, "update_norm_relative": [0.7, 5.0, 25.0],
    })
    (line,) = sequential_report.shift_goal_lines(rows, 0.8, 100)
    assert "retention 50.0% after 100 edits: misses the goal" in line
    assert "first below 80.0% at 100 edits (perplexity x40.000, NS 20.0% against 66.0% unedited" in line
    assert "accumulated update 25.000 x |W0| against 0.700 x |W0| after 1 edit(s)" in line


def test_the_report_shows_table1_with_the_rows_beyond_the_paper(tmp_path):
    csv = tmp_path / "table1_beyond.csv"
    (tmp_path / "table1_beyond.md").write_text("| Method | Efficacy |\n|---|---|\n| r-ROME | 94.0 |\n")
    cfg = compose_config(f"paths.table1_beyond={csv}")
    text = "\n".join(sequential_report.table1_beyond_section(cfg))
    assert "## Table 1 with the rows beyond the paper" in text and "| r-ROME | 94.0 |" in text
    assert ", ".join(cfg.editing.sequential.table1_methods) in text
    # Without the table (a hand-run of the report alone) the section is left out, not left empty.
    assert sequential_report.table1_beyond_section(compose_config(f"paths.table1_beyond={tmp_path}/none.csv")) == []


def test_report_numbers_stay_readable_when_perplexity_explodes():
    from backlens.stages.sequential_report import num

    assert num(7.12345) == "7.12" and num(7.12345, 3) == "7.123" and num(999999.0, 1) == "999999.0"
    assert num(3.4986377538727960e79) == "3.50e+79" and num(1.0e6, 3) == "1.00e+06"
    assert num(None) == "n/a" and num(float("nan")) == "n/a"
