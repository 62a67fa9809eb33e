"""Per-case evaluation of an editor: edit, measure, restore; one JSON line per case (resumable)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from backlens.editing.base import Editor
from backlens.editing.columns import FREE_GENERATION_COLUMNS
from backlens.editing.free_generation import free_generation_prompts, free_generation_rows
from backlens.editing.generation import generation_entropy, sample_texts, sample_texts_by_case
from backlens.editing.perplexity import HeldoutPerplexity
from backlens.editing.requests import EditRequest, continuation, space_sensitive
from backlens.editing.row_edits import RowChange, per_row_changes, row_changes
from backlens.editing.scoring import AnswerScore, score_answers, score_answers_per_pair
from backlens.editing.weights import restored_after

log = logging.getLogger(__name__)

# Cases whose edits change only FF2 weights (every method of Table 1; the unedited row changes
# nothing) generate together, this many per batch: every case's greedy free-generation
# continuations, and the sampled texts of those that sample (one batch holds the default run's 10
# generating cases; 2 prompts each). Their rows are written once the batch ran, so a killed job
# redoes at most this many finished cases.
GENERATION_CASES_PER_BATCH = 10


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def case_pairs(request: EditRequest) -> list[tuple[str, str]]:
    """The (prompt, answer) pairs a case scores, in the order ``metrics_from_scores`` reads them:
    the rewrite prompt with target_new and target_true, each paraphrase with both, each neighbour
    with its own answer and target_new."""
    pairs = [(request.prompt, request.target_new), (request.prompt, request.target_true)]
    for prompt in request.paraphrase_prompts:
        pairs += [(prompt, request.target_new), (prompt, request.target_true)]
    for neighbour in request.neighborhood_prompts:
        pairs += [(neighbour.prompt, neighbour.answer), (neighbour.prompt, request.target_new)]
    return pairs


def metrics_from_scores(request: EditRequest, scores: Sequence[AnswerScore]) -> dict[str, object]:
    """MEMIT accuracies and ROME probability comparisons from the scores of ``case_pairs(request)``."""
    rewrite_new, rewrite_true = scores[0], scores[1]
    n_para = len(request.paraphrase_prompts)
    para = [(scores[2 + 2 * i], scores[3 + 2 * i]) for i in range(n_para)]
    base = 2 + 2 * n_para
    neigh = [(scores[base + 2 * i], scores[base + 2 * i + 1]) for i in range(len(request.neighborhood_prompts))]
    return {
        "efficacy": float(rewrite_new.argmax_correct),
        "paraphrase": _mean([float(new.argmax_correct) for new, _ in para]),
        "neighborhood": _mean([float(true.argmax_correct) for true, _ in neigh]),
        "efficacy_success": float(rewrite_new.mean_nll < rewrite_true.mean_nll),
        "paraphrase_success": _mean([float(new.mean_nll < true.mean_nll) for new, true in para]),
        "neighborhood_success": _mean([float(true.mean_nll < new.mean_nll) for true, new in neigh]),
        "p_new": math.exp(-rewrite_new.mean_nll),
        "p_true": math.exp(-rewrite_true.mean_nll),
    }


def case_metrics(editor: Editor, request: EditRequest, *, batch_size: int, per_pair: bool = False) -> dict[str, object]:
    """MEMIT accuracies and ROME probability comparisons for one (edited) model and case.

    All prompts of the case go through one padded batch; a prompt's targets share its sequence
    (``score_answers``). ``per_pair``: the reference path, one sequence per (prompt, target).
    """
    scorer = score_answers_per_pair if per_pair else score_answers
    return metrics_from_scores(request, scorer(editor.model, editor.tokenizer, case_pairs(request), batch_size=batch_size))


def many_case_metrics(editor: Editor, requests: Sequence[EditRequest], *, batch_size: int) -> list[dict[str, object]]:
    """``case_metrics`` of many cases with their pairs scored together in padded batches (sequential
    editing's retention: every earlier edit re-scored at a checkpoint)."""
    pairs = [case_pairs(request) for request in requests]
    scores = score_answers(editor.model, editor.tokenizer, [pair for case in pairs for pair in case], batch_size=batch_size)
    metrics, start = [], 0
    for request, case in zip(requests, pairs):
        metrics.append(metrics_from_scores(request, scores[start : start + len(case)]))
        start += len(case)
    return metrics


def efficacy_before(editor: Editor, requests: Sequence[EditRequest], *, batch_size: int) -> dict[int, float]:
    """The unedited model's efficacy (argmax equals every target_new token) of each case, the rewrite
    prompts of many cases in one batch: the only number of the unedited model a case's row keeps."""
    scores = score_answers(editor.model, editor.tokenizer, [(r.prompt, r.target_new) for r in requests],
                           batch_size=batch_size)
    return {r.case_id: float(score.argmax_correct) for r, score in zip(requests, scores)}


def request_facts(editor: Editor, request: EditRequest) -> dict[str, object]:
    """Tokenization facts counted in the results (multi-token and space-sensitive targets)."""
    new = continuation(editor.tokenizer, request.prompt, request.target_new)
    true = continuation(editor.tokenizer, request.prompt, request.target_true)
    # Every prompt the case scores, with the longer target appended, must fit the context.
    longest_target = max(len(new.target_ids), len(true.target_ids))
    for prompt in (request.prompt, *request.paraphrase_prompts, *(n.prompt for n in request.neighborhood_prompts)):
        n_tokens = len(editor.tokenizer(prompt)["input_ids"]) + longest_target
        editor.loaded.check_fits(n_tokens, f"CounterFact case {request.case_id} (prompt {prompt[:40]!r})")
    return {
        "case_id": request.case_id,
        "n_target_new_tokens": len(new.target_ids),
        "n_target_true_tokens": len(true.target_ids),
        "target_new_merged_with_prompt": new.merged,
        "target_new_space_sensitive": space_sensitive(editor.tokenizer, request.target_new),
        "n_paraphrase_prompts": len(request.paraphrase_prompts),
        "n_neighborhood_prompts": len(request.neighborhood_prompts),
        "generation_source": request.generation_source,
    }


def evaluate_case(
    editor: Editor,
    request: EditRequest,
    settings: Mapping,
    *,
    generate: bool,
    perplexity_blocks: torch.Tensor | None,
    before: float | None = None,
    per_pair: bool = False,
    deferred: list[list[RowChange]] | None = None,
    heldout: HeldoutPerplexity | None = None,
    free_generation: bool = True,
) -> dict[str, object]:
    """Edit, measure, restore. ``settings`` is conf/editing's ``evaluation`` block.

    ``before``: the unedited model's efficacy when the caller batched it over cases
    (``efficacy_before``). ``per_pair``: the reference scoring path (tests, benchmark).
    ``deferred``: when given and the edit changed only FF2 weights (``row_edits.row_changes``: rank-one
    for the shift, ROME and MEMIT, dense for FT-L and MEND), the generation (the
    free generation, and the sampled texts when ``generate``) is left to the caller
    (``generate_deferred``): the changes are appended to it and the row's generation fields and
    free-generation columns stay None.
    ``free_generation``: the efficacy by free generation (``evaluation.free_generation``; the
    method sweeps, which never read it, leave it out).
    ``heldout``: the editor's perplexity over ``perplexity_blocks`` with what the edits leave
    unchanged cached (``evaluate_editor`` keeps one across cases); None: one for this case alone.
    """
    batch_size = int(settings["batch_size"])
    row = request_facts(editor, request)
    if per_pair:
        before = case_metrics(editor, request, batch_size=batch_size, per_pair=True)["efficacy"]
    elif before is None:
        before = efficacy_before(editor, [request], batch_size=batch_size)[request.case_id]
    row["already_predicted"] = bool(before)
    row["efficacy_before"] = before
    with restored_after(editor.edited_parameters()) as snapshot:
        started = time.perf_counter()
        info = editor.apply(request)
        if editor.device.type == "cuda":
            torch.cuda.synchronize()
        row["edit_seconds"] = time.perf_counter() - started
        row["skipped"] = bool(info.pop("skipped", False))
        row["edit_info"] = json.dumps(info, sort_keys=True, default=str)
        row.update(case_metrics(editor, request, batch_size=batch_size, per_pair=per_pair))
        row["generation_entropy"] = None
        row["generated_texts"] = None
        wants_generation = generate or free_generation
        changes = row_changes(snapshot, editor.adapter) if wants_generation and deferred is not None else None
        if free_generation:
            row.update(dict.fromkeys(FREE_GENERATION_COLUMNS))
        if changes is not None:
            deferred.append(changes)
            return _finish(row, editor, perplexity_blocks, heldout, snapshot)
        if free_generation:
            row.update(free_generation_rows(editor.model, editor.tokenizer, [request], settings["free_generation"])[0])
        if generate:
            texts = sample_texts(
                editor.model,
                editor.tokenizer,
                list(request.generation_prompts),
                max_new_tokens=int(settings["generation"]["max_new_tokens"]),
                top_k=int(settings["generation"]["top_k"]),
                seed=int(settings["seed"]) + request.case_id,
            )
            row["generation_entropy"] = generation_entropy(texts)
            row["generated_texts"] = json.dumps(texts)
        return _finish(row, editor, perplexity_blocks, heldout, snapshot)


def _finish(row: dict[str, object], editor: Editor, perplexity_blocks: torch.Tensor | None,
            heldout: HeldoutPerplexity | None, snapshot) -> dict[str, object]:
    """Table 7's perplexity of the edited model (inside ``evaluate_case``'s restore): the row's last column."""
    row["perplexity"] = None
    if perplexity_blocks is not None:
        heldout = heldout or HeldoutPerplexity(editor, perplexity_blocks)
        if heldout.blocks_BxT is not perplexity_blocks:
            raise ValueError("evaluate_case: heldout was built on other blocks than perplexity_blocks")
        row["perplexity"] = heldout(snapshot.changed_parameters())
    return row


class CaseLog:
    """Append-only JSON lines: one finished case per line, so a killed run resumes where it stopped.
    ``key``: the field that names a line (a case's ``case_id``; a sequential run's ``n_edits``)."""

    def __init__(self, path: str | Path, fingerprint: str, key: str = "case_id"):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.key = key

    def _drop_torn_tail(self) -> None:
        """Cut an unterminated last line (a write cut off by a kill) so the next case starts a line of its own."""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("%s: last line cut off by an interrupted write (%d bytes); dropped, that case is redone",
                    self.path, len(data) - keep)
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())

    def finished(self) -> dict[int, dict]:
        """The finished cases; repairs a torn last line first (only an interrupted append leaves one)."""
        rows: dict[int, dict] = {}
        if not self.path.exists():
            return rows
        self._drop_torn_tail()
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # A complete but unreadable line (a torn write that earlier versions appended to): redo that case.
                log.warning("%s:%d: unreadable line (interrupted write); that case is redone", self.path, number)
                continue
            if row.get("config_fingerprint") != self.fingerprint:
                raise ValueError(
                    f"{self.path}:{number} ({self.key} {row.get(self.key)}) was written with another configuration "
                    f"({row.get('config_fingerprint')} != {self.fingerprint}); delete {self.path} to start over"
                )
            rows[int(row[self.key])] = row
        return rows

    def append(self, row: Mapping) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**row, "config_fingerprint": self.fingerprint}, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def evaluate_editor(
    editor: Editor,
    requests: Sequence[EditRequest],
    case_log: CaseLog,
    settings: Mapping,
    *,
    generation_case_ids: set[int],
    perplexity_case_ids: set[int],
    perplexity_blocks: torch.Tensor | None,
    label: str,
) -> list[dict]:
    """Evaluate every request not yet in ``case_log``; return all rows in request order."""
    done = case_log.finished()
    todo = [r for r in requests if r.case_id not in done]
    if done:
        log.info("%s: resuming, %d of %d cases already done", label, len(requests) - len(todo), len(requests))
    before = efficacy_before(editor, todo, batch_size=int(settings["batch_size"]))
    heldout = HeldoutPerplexity(editor, perplexity_blocks) if perplexity_blocks is not None else None
    # Rows whose generation waits for a batch of cases (written in case order once it ran), with
    # their edits' changes and whether they also sample texts.
    pending: list[tuple[EditRequest, dict, list[RowChange], bool]] = []

    def write_pending() -> None:
        generate_deferred(editor, pending, settings)
        for request, row, _, _ in pending:
            case_log.append(row)
            done[request.case_id] = {**row, "config_fingerprint": case_log.fingerprint}
        pending.clear()

    for request in tqdm(todo, desc=f"edit {label}", unit="case"):
        deferred: list[list[RowChange]] = []
        generate = request.case_id in generation_case_ids
        row = evaluate_case(
            editor,
            request,
            settings,
            generate=generate,
            perplexity_blocks=perplexity_blocks if request.case_id in perplexity_case_ids else None,
            before=before[request.case_id],
            deferred=deferred,
            heldout=heldout,
        )
        if deferred:
            pending.append((request, row, deferred[0], generate))
            if len(pending) >= GENERATION_CASES_PER_BATCH:
                write_pending()
            continue
        write_pending()
        case_log.append(row)
        done[request.case_id] = {**row, "config_fingerprint": case_log.fingerprint}
    write_pending()
    return [done[r.case_id] for r in requests]


def generate_deferred(editor: Editor, pending: Sequence[tuple[EditRequest, dict, list[RowChange], bool]],
                      settings: Mapping) -> None:
    """Fill the pending rows: the greedy free-generation continuations of every pending case in one
    batch, then the sampled texts of those that sample (the flag) in one batch of their own (the same
    cases as before the free generation existed), each with its own seed. Each batch row runs with
    its case's changes (the model's weights are the unedited ones here)."""
    free = [(request, row, changes) for request, row, changes, _ in pending if "gen_efficacy" in row]
    if free:
        with per_row_changes([changes for request, _, changes in free for _ in free_generation_prompts(request)]):
            columns = free_generation_rows(editor.model, editor.tokenizer, [request for request, _, _ in free],
                                           settings["free_generation"])
        for (_, row, _), values in zip(free, columns):
            row.update(values)
    sampling = [(request, row, changes) for request, row, changes, generate in pending if generate]
    if not sampling:
        return
    prompts = [list(request.generation_prompts) for request, _, _ in sampling]
    changes_per_row = [changes for (_, _, changes), case in zip(sampling, prompts) for _ in case]
    with per_row_changes(changes_per_row):
        texts_per_case = sample_texts_by_case(
            editor.model, editor.tokenizer, prompts,
            max_new_tokens=int(settings["generation"]["max_new_tokens"]), top_k=int(settings["generation"]["top_k"]),
            seeds=[int(settings["seed"]) + request.case_id for request, _, _ in sampling],
        )
    for (_, row, _), texts in zip(sampling, texts_per_case):
        row["generation_entropy"] = generation_entropy(texts)
        row["generated_texts"] = json.dumps(texts)
