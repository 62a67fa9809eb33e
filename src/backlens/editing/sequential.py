"""Many edits without restoring (issue 26): single edits one after another, or MEMIT's batch update,
measured at checkpoints.

Table 1 restores the weights after every edit; here the edits accumulate. After n edits (a
checkpoint) every edit made so far is re-scored on the model as it now is:

- retention: the share of the n edits whose rewrite prompt still gives P(target_new) > P(target_true)
  (ROME's efficacy success, the probability comparison of Table 1), with the argmax accuracy beside it;
- paraphrase success and NS (the neighbour prompts keep P(true) > P(new)) of the same n cases, as
  Table 1 defines them (``evaluation.metrics_from_scores``), with the unedited model's values of
  the same cases for reference;
- held-out perplexity (``perplexity.perplexity`` on the cached held-out blocks);
- the Frobenius norm of the accumulated update W - W0 of each edited weight.

All pairs of a checkpoint are scored together in padded batches (``evaluation.many_case_metrics``).
Collapse (``detect_collapse``): the first checkpoint whose perplexity exceeds a multiple of the
unedited one or whose retention falls below a floor.

Resuming: one JSON line per checkpoint (``CaseLog`` keyed by ``n_edits``), and at each checkpoint
the edited weights themselves (and an editor's own sequential state: AlphaEdit's key cache) in one
file, written before the line. A killed run loads the last saved weights and redoes only the
edits after them. The weights, not their change W - W0, are saved: W0 + (W - W0) is not W in
float arithmetic, and the resumed rows must equal an uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.evaluation import CaseLog, many_case_metrics
from backlens.editing.perplexity import perplexity
from backlens.editing.requests import EditRequest
from backlens.io import write_torch

log = logging.getLogger(__name__)

# Per-case values kept at each checkpoint (the cases table: which edits are forgotten, by age).
CASE_FIELDS = ("efficacy_success", "efficacy", "paraphrase_success", "neighborhood_success")


@dataclass(frozen=True)
class SequentialSettings:
    """``checkpoints``: edit counts at which to measure (those above the run's N are dropped, N is
    added); ``batch_size``: scoring batch; collapse when perplexity > ``perplexity_multiple`` x the
    unedited perplexity or retention < ``retention_floor``."""

    checkpoints: tuple[int, ...]
    batch_size: int
    perplexity_multiple: float
    retention_floor: float


def planned_checkpoints(checkpoints: Sequence[int], n_edits: int) -> list[int]:
    """The checkpoints of a run of ``n_edits`` edits: those in range, and N itself."""
    if n_edits < 1:
        raise ValueError(f"a sequential run needs at least one edit (n_edits={n_edits})")
    return sorted({int(c) for c in checkpoints if 1 <= int(c) <= n_edits} | {n_edits})


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def parameter_names(model: nn.Module, parameters: Sequence[nn.Parameter]) -> list[str]:
    """The model's names of ``parameters`` (the state file and the norms table are keyed by them)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for p in parameters]


def edited_parameters(editor: Editor) -> dict[str, nn.Parameter]:
    """{name: parameter} of every parameter the editor may change (each once)."""
    unique = list({id(p): p for p in editor.edited_parameters()}.values())
    return dict(zip(parameter_names(editor.model, unique), unique))


class Accumulation:
    """The edited parameters and their values before the first edit (W0), for the update norms."""

    def __init__(self, editor: Editor):
        self.parameters = edited_parameters(editor)
        self.originals = {name: p.detach().clone() for name, p in self.parameters.items()}

    def norms(self) -> dict[str, dict[str, float]]:
        """Per parameter: |W - W0|_F and that over |W0|_F (float64 sums)."""
        result = {}
        for name, parameter in self.parameters.items():
            original = self.originals[name].double()
            change = float((parameter.detach().double() - original).norm())
            result[name] = {"frobenius": change, "relative": change / float(original.norm())}
        return result

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.parameters.items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        if sorted(weights) != sorted(self.parameters):
            raise ValueError(f"saved weights {sorted(weights)} are not the editor's parameters {sorted(self.parameters)}")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(weights[name].to(parameter.device, parameter.dtype))


def measure(editor: Editor, requests: Sequence[EditRequest], unedited: Sequence[dict], accumulation: Accumulation,
            heldout_BxT: torch.Tensor | None, unedited_perplexity: float | None, batch_size: int) -> dict[str, object]:
    """One checkpoint's row: every case of ``requests`` (the edits made so far) re-scored now."""
    started = time.perf_counter()
    now = many_case_metrics(editor, requests, batch_size=batch_size)
    norms = accumulation.norms()
    total = math.sqrt(sum(n["frobenius"] ** 2 for n in norms.values()))
    scale = math.sqrt(sum(float(p.double().norm()) ** 2 for p in accumulation.originals.values()))
    ppl = perplexity(editor, heldout_BxT) if heldout_BxT is not None else None
    row = {
        "n_edits": len(requests),
        "retention": _mean(m["efficacy_success"] for m in now),
        "retention_accuracy": _mean(m["efficacy"] for m in now),
        "paraphrase_success": _mean(m["paraphrase_success"] for m in now),
        "neighborhood_success": _mean(m["neighborhood_success"] for m in now),
        "neighborhood": _mean(m["neighborhood"] for m in now),
        "retention_unedited": _mean(m["efficacy_success"] for m in unedited),
        "neighborhood_success_unedited": _mean(m["neighborhood_success"] for m in unedited),
        "perplexity": ppl,
        "perplexity_ratio": ppl / unedited_perplexity if ppl is not None and unedited_perplexity else None,
        "update_norm": total,
        "update_norm_relative": total / scale if scale else None,
        "update_norms": norms,
        "cases": {"case_id": [r.case_id for r in requests], **{f: [m[f] for m in now] for f in CASE_FIELDS}},
    }
    row["eval_seconds"] = time.perf_counter() - started
    return row


def detect_collapse(rows: Sequence[dict], unedited_perplexity: float | None, settings: SequentialSettings) -> dict[str, object]:
    """The first checkpoint (by n_edits) where perplexity > perplexity_multiple x unedited or retention <
    retention_floor, and which of the two broke there (both may)."""
    for row in sorted(rows, key=lambda r: r["n_edits"]):
        reasons = []
        if row.get("perplexity") is not None and unedited_perplexity and \
                row["perplexity"] > settings.perplexity_multiple * unedited_perplexity:
            reasons.append("perplexity")
        if row.get("retention") is not None and row["retention"] < settings.retention_floor:
            reasons.append("retention")
        if reasons:
            return {"collapse_at": int(row["n_edits"]), "collapse_reasons": reasons,
                    "collapse_perplexity": row.get("perplexity"), "collapse_retention": row.get("retention")}
    return {"collapse_at": None, "collapse_reasons": [], "collapse_perplexity": None, "collapse_retention": None}


@dataclass
class Baseline:
    """The unedited model's per-case metrics of the run's cases and its held-out perplexity."""

    cases: list[dict]
    perplexity: float | None


def baseline(editor: Editor, requests: Sequence[EditRequest], heldout_BxT: torch.Tensor | None, batch_size: int) -> Baseline:
    """Measured on the model as it is (call before any edit or resumed weights)."""
    return Baseline(many_case_metrics(editor, requests, batch_size=batch_size),
                    perplexity(editor, heldout_BxT) if heldout_BxT is not None else None)


def _save_state(path: Path, editor: Editor, accumulation: Accumulation, n_edits: int, n_skipped: int, fingerprint: str) -> None:
    state = getattr(editor, "sequential_state", None)
    write_torch({"fingerprint": fingerprint, "n_edits": n_edits, "n_skipped": n_skipped, "weights": accumulation.weights(),
                 "editor_state": state() if state is not None else None}, path)


def _load_state(path: Path, editor: Editor, accumulation: Accumulation, fingerprint: str) -> tuple[int, int]:
    """Put back the saved weights (and editor state); (edits made, of them skipped)."""
    state = torch.load(path, weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path} was written with another configuration ({state['fingerprint']} != {fingerprint}); "
                         f"delete it and its progress file to start over")
    accumulation.load(state["weights"])
    if state["editor_state"] is not None:
        editor.load_sequential_state(state["editor_state"])
    return int(state["n_edits"]), int(state["n_skipped"])


def run_sequential(editor: Editor, requests: Sequence[EditRequest], settings: SequentialSettings, progress: CaseLog,
                   state_path: str | Path, heldout_BxT: torch.Tensor | None, label: str = "") -> tuple[list[dict], Baseline | None]:
    """Apply ``requests`` one after another without restoring; a row at each planned checkpoint.

    Rows already in ``progress`` are kept; a killed run resumes from the weights saved at its last
    checkpoint (``state_path``). Returns the rows in checkpoint order and the unedited baseline
    (None when every row was already logged: nothing was measured).
    """
    state_path = Path(state_path)
    plan = planned_checkpoints(settings.checkpoints, len(requests))
    done = progress.finished()
    if all(n in done for n in plan):
        return [done[n] for n in plan], None
    # Before any edit or resumed weights: the unedited values every row compares with.
    log.info("%s: scoring the %d cases and the held-out perplexity on the unedited model", label, len(requests))
    base = baseline(editor, requests, heldout_BxT, settings.batch_size)
    accumulation = Accumulation(editor)
    start, n_skipped = _load_state(state_path, editor, accumulation, progress.fingerprint) if state_path.exists() else (0, 0)
    # Rows from the state file on must be computed; below it they must be in the log.
    missing = [n for n in plan if n < start and n not in done]
    if missing:
        raise ValueError(f"{label}: {state_path} holds {start} edits but checkpoints {missing} are not in {progress.path}; "
                         "delete both to start over")
    if start > len(requests):
        raise ValueError(f"{label}: {state_path} holds {start} edits, more than this run's {len(requests)}; "
                         "delete it (and its progress file) to start over")
    if start:
        log.info("%s: resuming after %d of %d edits", label, start, len(requests))

    def checkpoint(n: int, seconds: float, n_timed: int) -> None:
        row = measure(editor, requests[:n], base.cases[:n], accumulation, heldout_BxT, base.perplexity, settings.batch_size)
        row.update(n_skipped=n_skipped, unedited_perplexity=base.perplexity, edit_seconds=seconds, n_edits_timed=n_timed)
        progress.append(row)
        done[n] = {**row, "config_fingerprint": progress.fingerprint}
        log.info("%s: %d edits, retention %.3f, NS %s, perplexity %s", label, n, row["retention"],
                 row["neighborhood_success"], row["perplexity"])

    if start in plan and start not in done:  # killed after saving the weights, before the line
        checkpoint(start, 0.0, 0)
    seconds, n_timed = 0.0, 0
    for position in range(start, len(requests)):
        started = time.perf_counter()
        facts = editor.apply(requests[position])
        seconds += time.perf_counter() - started
        n_timed += 1
        n_skipped += int(bool(facts.get("skipped", False)))
        n = position + 1
        if n in plan:
            _save_state(state_path, editor, accumulation, n, n_skipped, progress.fingerprint)
            checkpoint(n, seconds, n_timed)
            seconds, n_timed = 0.0, 0
    return [done[n] for n in plan], base


def run_batch(editor: Editor, requests: Sequence[EditRequest], settings: SequentialSettings,
              heldout_BxT: torch.Tensor | None, values=None) -> tuple[dict, Baseline]:
    """All ``requests`` as one update (``editor.apply_batch``: MEMIT, AlphaEdit), measured as a
    sequential run's checkpoint at n = len(requests). ``values``: the z* of each request, when the
    caller computed (and saved) them already."""
    if not hasattr(editor, "apply_batch"):
        raise ValueError(f"{type(editor).__name__} has no batch update (MEMIT and AlphaEdit have)")
    base = baseline(editor, requests, heldout_BxT, settings.batch_size)
    accumulation = Accumulation(editor)
    started = time.perf_counter()
    facts = editor.apply_batch(requests, values)
    seconds = time.perf_counter() - started
    row = measure(editor, requests, base.cases, accumulation, heldout_BxT, base.perplexity, settings.batch_size)
    row.update(n_skipped=0, unedited_perplexity=base.perplexity, edit_seconds=seconds, n_edits_timed=len(requests),
               batch_facts=facts)
    return row, base
