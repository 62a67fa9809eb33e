"""Editing metrics on hand-built cases, resumable per-case logs, and the Table 1 stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from backlens.data.sources import sha256_of
from backlens.editing.base import NoEdit
from backlens.editing.evaluation import CaseLog, evaluate_editor
from backlens.editing.generation import generation_entropy, ngram_entropy, sample_texts
from backlens.editing.requests import continuation
from backlens.editing.scoring import score_answers
from backlens.editing.shift import ForwardPassShift
from backlens.stages import editing_evaluate, editing_merge, editing_tables
from conftest import compose_config, require_shared
from test_editing_methods import EVALUATION, REQUEST


def test_ngram_entropy_matches_hand_computed_values():
    # bigrams of "a b a b": (a b) twice, (b a) once -> H = -(2/3 log2 2/3 + 1/3 log2 1/3)
    assert ngram_entropy("a b a b", 2) == pytest.approx(-(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3)))
    assert ngram_entropy("x x x x", 3) == 0.0
    # four distinct trigrams (2 bits) and five distinct bigrams (log2 5 bits)
    text = "one two three four five six"
    assert generation_entropy([text]) == pytest.approx((2 / 3 * math.log2(5) + 4 / 3 * 2.0) / 2)


def test_scores_agree_with_a_hand_computed_forward_pass(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    prompt = "The capital of France is"
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    greedy = tokenizer.decode([int(logits.argmax())])
    runner_up = tokenizer.decode([int(logits.topk(2).indices[1])])
    greedy_score, other_score = score_answers(model, tokenizer, [(prompt, greedy), (prompt, runner_up)])
    greedy_item = continuation(tokenizer, prompt, greedy)
    if len(greedy_item.target_ids) == 1 and greedy_item.target_ids[0] == int(logits.argmax()):
        assert greedy_score.argmax_correct
        expected = -torch.log_softmax(logits, -1)[int(logits.argmax())]
        assert greedy_score.mean_nll == pytest.approx(float(expected), rel=1e-5)
    assert greedy_score.mean_nll <= other_score.mean_nll + 1e-6


def test_multi_token_targets_are_scored_on_every_token(tiny_gpt2):
    tokenizer = tiny_gpt2.tokenizer
    item = continuation(tokenizer, "He lives in", "Rio de Janeiro")
    assert len(item.target_ids) > 1 and not item.merged
    (score,) = score_answers(tiny_gpt2.model, tokenizer, [("He lives in", "Rio de Janeiro")])
    assert score.n_tokens == len(item.target_ids)


def test_sampling_is_seeded_and_batch_independent(tiny_model):
    prompts = ["The mother tongue of", "A long prompt that is padded on the left side"]
    first = sample_texts(tiny_model.model, tiny_model.tokenizer, prompts, max_new_tokens=5, top_k=5, seed=3)
    again = sample_texts(tiny_model.model, tiny_model.tokenizer, prompts, max_new_tokens=5, top_k=5, seed=3)
    assert first == again and all(t.startswith(p) for t, p in zip(first, prompts))


def _requests():
    from dataclasses import replace

    return [replace(REQUEST, case_id=i, target_new=t) for i, t in enumerate(["English", "Paris", "Rio de Janeiro"])]


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k != "edit_seconds"} for r in rows]


def test_an_interrupted_run_resumes_to_the_same_rows(tiny_model, tmp_path):
    editor = ForwardPassShift(tiny_model, {"layer": 1, "eta": 5.0, "skip_if_predicted": True})
    requests = _requests()
    options = dict(generation_case_ids={0}, perplexity_case_ids={1},
                   perplexity_blocks=torch.arange(1, 33).view(2, 16), label="shift")
    complete = evaluate_editor(editor, requests, CaseLog(tmp_path / "full.jsonl", "f"), EVALUATION, **options)
    interrupted_log = CaseLog(tmp_path / "killed.jsonl", "f")
    evaluate_editor(editor, requests[:2], interrupted_log, EVALUATION, **options)
    with interrupted_log.path.open("a") as handle:
        handle.write('{"case_id": 2, "efficacy": ')  # a write cut off by the kill
    resumed = evaluate_editor(editor, requests, interrupted_log, EVALUATION, **options)
    assert _strip_times(resumed) == _strip_times(complete)
    # The torn line is gone: every line parses and a later resume finds the redone case done.
    lines = interrupted_log.path.read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == [0, 1, 2]
    assert sorted(CaseLog(interrupted_log.path, "f").finished()) == [0, 1, 2]
    assert complete[0]["generation_entropy"] is not None and complete[1]["perplexity"] is not None
    with pytest.raises(ValueError, match="another configuration"):
        CaseLog(tmp_path / "full.jsonl", "other").finished()


def test_evaluate_and_table1_stages_on_tiny_gpt2(tmp_path):
    require_shared("data", "counterfact")
    base = [f"paths.results={tmp_path}", "model=tiny-gpt2", "editing.n_cases=3", "editing.n_generation_cases=1",
            "editing.n_perplexity_cases=0", "editing.table1_methods=[none,shift]", "editing.evaluation.generation.max_new_tokens=4"]
    for method in ("none", "shift"):
        editing_evaluate.run(compose_config(*base, f"method={method}"))
    cfg = compose_config(*base)
    editing_tables.run_table1(cfg)
    table = pd.read_csv(cfg.paths.table1)
    assert list(table["method"]) == ["none", "shift"] and (table["n_cases"] == 3).all()
    assert table["efficacy_mean"].between(0, 100).all()
    markdown = (tmp_path / "tables" / "table1.md").read_text()
    assert "Forward pass shift" in markdown and "±" in markdown
    assert (tmp_path / "tables" / "table1.tex").read_text().startswith("\\begin{tabular}")
    summary = json.loads((tmp_path / "editing" / "shift" / "summary.json").read_text())
    assert summary["generation_sources"] == ["edit_and_paraphrase_prompts"]
    cases_path = tmp_path / "editing" / "shift" / "cases.parquet"
    cases = pd.read_parquet(cases_path)
    assert summary["n_cases"] == 3 and "edit_seconds" not in cases
    # Efficacy by free generation (issue 26): every case, into the summary and Table 1.
    assert cases["gen_efficacy"].notna().all() and cases["gen_continuations"].notna().all()
    gen_metrics = ("efficacy", "paraphrase", "efficacy_true", "paraphrase_true", "efficacy_contains", "paraphrase_contains")
    for column in (f"gen_{m}" for m in gen_metrics):
        assert summary[f"{column}_mean"] == pytest.approx(cases[column].mean())
        assert table.set_index("method").loc["shift", f"{column}_mean"] == pytest.approx(100 * cases[column].mean())
    assert "| Gen. efficacy | Gen. paraphrase | Gen. true target |" in markdown and "Gen. efficacy / paraphrase" in markdown
    new_columns = [f"gen_{m}_{s}" for m in gen_metrics for s in ("mean", "std", "ci_low", "ci_high")]
    assert list(table.columns[-len(new_columns):]) == new_columns, "the new columns come last"
    # Results made before the metric: n/a in Table 1, named in its note, every other number unchanged.
    stale = cases.drop(columns=[c for c in cases if c.startswith("gen_")])
    stale.to_parquet(cases_path)
    editing_tables.run_table1(cfg)
    stale_table = pd.read_csv(cfg.paths.table1)
    assert stale_table.drop(columns=new_columns).equals(table.drop(columns=new_columns))
    assert stale_table.set_index("method")["gen_efficacy_mean"].isna().tolist() == [False, True]
    assert "n/a: not measured in the results of shift" in (tmp_path / "tables" / "table1.md").read_text()
    timings = json.loads((tmp_path / "editing" / "shift" / "timings.json").read_text())
    assert timings["edit_seconds_mean"] > 0 and sorted(timings["edit_seconds"]) == ["0", "1", "2"]


def test_shards_merge_to_the_rows_of_one_job_whatever_the_shard_size(tmp_path):
    require_shared("data", "counterfact")
    base = ["model=tiny-gpt2", "method=shift", "editing.n_cases=3", "editing.n_generation_cases=2",
            "editing.n_perplexity_cases=0", "editing.evaluation.generation.max_new_tokens=4", "++methods.shift.eta=2.0"]
    whole = compose_config(*base, f"paths.results={tmp_path}/whole")
    editing_evaluate.run(whole)
    for name, cuts in (("ones", [(0, 1), (1, 2), (2, 3)]), ("uneven", [(0, 2), (2, 3)])):
        shard_paths = []
        for start, stop in cuts:
            path = tmp_path / name / f"{start}-{stop}.parquet"
            editing_evaluate.run(compose_config(*base, f"paths.results={tmp_path}/{name}",
                                                f"editing.shard=[{start},{stop}]", f"paths.editing_cases={path}"))
            shard_paths.append(str(path))
        merged = compose_config(*base, f"paths.results={tmp_path}/{name}", f"paths.editing_shards=[{','.join(shard_paths)}]")
        editing_merge.merge(merged)
        pd.testing.assert_frame_equal(pd.read_parquet(merged.paths.editing_cases), pd.read_parquet(whole.paths.editing_cases))
        summary = json.loads((tmp_path / name / "editing" / "shift" / "summary.json").read_text())
        assert summary == json.loads(Path(whole.paths.editing_summary).read_text())
        assert sorted(json.loads(Path(merged.paths.editing_timings).read_text())["edit_seconds"]) == sorted(
            json.loads(Path(whole.paths.editing_timings).read_text())["edit_seconds"])
        assert summary["hparams"]["eta"] == 2.0 and summary["n_generation_cases"] == 2
    with pytest.raises(ValueError, match="do not cover"):
        editing_merge.merge(compose_config(*base, f"paths.results={tmp_path}/ones",
                                              f"paths.editing_shards=[{tmp_path}/ones/0-1.parquet,{tmp_path}/ones/2-3.parquet]"))


def test_the_data_file_is_part_of_the_resume_fingerprint(tmp_path):
    records = json.loads(require_shared("data", "counterfact", "counterfact_easyedit.json").read_text())
    files = {"a": tmp_path / "a.json", "b": tmp_path / "b.json"}
    files["a"].write_text(json.dumps(records[:5]))
    files["b"].write_text(json.dumps(records[1:6]))  # another case 0: different numbers
    base = [f"paths.results={tmp_path}/run", "model=tiny-gpt2", "method=none", "editing.n_cases=1",
            "editing.n_generation_cases=0", "editing.n_perplexity_cases=0"]
    fingerprints = {}
    for name, path in files.items():
        cfg = compose_config(*base, f"dataset.path={path}")
        editing_evaluate.run(cfg)
        summary = json.loads(Path(cfg.paths.editing_summary).read_text())
        assert summary["dataset"] == {"path": str(path.resolve()), "sha256": sha256_of(path)}
        fingerprints[name] = pd.read_parquet(cfg.paths.editing_cases)["config_fingerprint"].iloc[0]
    assert fingerprints["a"] != fingerprints["b"]
    # One progress file per configuration: the second data file did not resume the first one's rows.
    logs = sorted(p.name for p in (tmp_path / "run" / "editing" / "none").glob("*.jsonl"))
    assert logs == sorted(f"cases.{f}.jsonl" for f in fingerprints.values())


def test_one_padding_function_pads_either_side():
    """Scoring and tracing pad on the right (tokens keep their positions), generation on the left (every
    row ends at the last column): both from data.batching.pad_batch."""
    from backlens.data.batching import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], 0, torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, torch.device("cpu"), side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side='middle'"):
        pad_batch([[1]], 0, torch.device("cpu"), side="middle")
