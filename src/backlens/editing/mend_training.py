"""Training MEND's editor networks on CounterFact cases outside the evaluation range."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from backlens.editing.base import Editor
from backlens.editing.mend import added_weight_deltas, build_editors, gradient_factors
from backlens.editing.requests import EditRequest
from backlens.editing.training import LogitsAbove, mean_answer_nll, teacher_forced_batch, trainable_only
from backlens.io import write_torch

log = logging.getLogger(__name__)


def _normalisation(editor: Editor, sites, requests: Sequence[EditRequest]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer mean and std of the concatenated (x_i, delta_i) over some training cases."""
    collected: dict[int, list[torch.Tensor]] = {site.layer: [] for site in sites}
    for request in requests:
        for layer, (inputs, vjps) in gradient_factors(editor, sites, request).items():
            collected[layer].append(torch.cat([inputs, vjps], dim=-1))
    stats = {}
    for layer, rows in collected.items():
        joined = torch.cat(rows)
        stats[layer] = (joined.mean(0), joined.std(0).clamp(min=1e-8))
    return stats


def resumable_state(partial: Path, inputs: Mapping) -> dict | None:
    """The partial checkpoint, if it exists and was written for the same ``inputs``."""
    state = torch.load(partial) if partial.exists() else None
    if state is not None and state.get("inputs") != inputs:
        log.warning("MEND: %s was written with other settings or data; starting over", partial)
        return None
    return state


@contextmanager
def deterministic_training(seed: int, threads: int | None) -> Iterator[None]:
    """Seeded initialisation, deterministic kernels and a fixed torch thread count for the block
    (the CPU's reductions split by thread, so another count sums in another order and Adam
    amplifies the round-off); everything is set back afterwards. On CUDA, cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG set before its first use to be deterministic; it is set here if unset."""
    previous_threads, previous_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


def train_mend(
    editor: Editor, requests: Sequence[EditRequest], hparams: Mapping, checkpoint: str | Path, *, seed: int,
    dataset: Mapping | None = None,
) -> dict[str, object]:
    """Train one editor network per layer; resumes from ``checkpoint``.partial; returns the final state.

    ``dataset`` (the data file's path and sha256), the hyper-parameters, cases and seed are stored in the
    checkpoint; a partial checkpoint written with others is not resumed. Deterministic
    (``deterministic_training``): the same inputs give the same weights on any machine with the
    same kernels, with ``train_threads`` torch threads (unset: the caller's count).
    """
    with deterministic_training(seed, hparams.get("train_threads")):
        return _train(editor, requests, hparams, checkpoint, seed=seed, dataset=dataset)


def _train(editor: Editor, requests: Sequence[EditRequest], hparams: Mapping, checkpoint: str | Path, *, seed: int,
           dataset: Mapping | None) -> dict[str, object]:
    inputs = {"dataset": dict(dataset or {}), "hparams": dict(hparams), "seed": seed,
              "case_ids": [r.case_id for r in requests]}
    layers = [int(layer) for layer in hparams["layers"]]
    sites = [editor.adapter.ff2_site(layer) for layer in layers]
    networks = build_editors(editor, layers, int(hparams["rank"]), float(hparams["log_lr_init"]))
    optimizer = torch.optim.Adam(networks.parameters(), lr=float(hparams["train_lr"]))
    partial = Path(str(checkpoint) + ".partial")
    history: list[dict] = []
    start = 0
    state = resumable_state(partial, inputs)
    if state is not None:
        networks.load_state_dict(state["networks"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["step"]
        log.info("MEND: resuming at step %d", start)
    else:
        for layer, (mean, std) in _normalisation(editor, sites, requests[: int(hparams["n_norm_cases"])]).items():
            networks[str(layer)].mean.copy_(mean)
            networks[str(layer)].std.copy_(std)
    order = random.Random(seed).choices(range(len(requests)), k=int(hparams["train_steps"]))
    # Each step runs the model three times on two batches; the edits change blocks min(layers) and above.
    below = LogitsAbove(editor, [site.weight for site in sites])
    for step in tqdm(range(start, len(order)), desc="train MEND", unit="step", initial=start, total=len(order)):
        request = requests[order[step]]
        factors = gradient_factors(editor, sites, request)
        deltas = {site.layer: networks[str(site.layer)].weight_update(site, *factors[site.layer]) for site in sites}
        edit_pairs = [(p, request.target_new) for p in (request.prompt, *request.paraphrase_prompts)]
        ids, mask, labels = teacher_forced_batch(editor.tokenizer, edit_pairs, editor.device)
        local_ids, local_mask, _ = teacher_forced_batch(
            editor.tokenizer, [(n.prompt, n.answer) for n in request.neighborhood_prompts] or [(request.subject, request.target_true)], editor.device
        )
        with trainable_only(editor.model, []):
            edit_run, local_run = below(ids, mask), below(local_ids, local_mask)
            with torch.no_grad():
                original = torch.log_softmax(local_run().float(), -1)
            with added_weight_deltas(sites, deltas):
                edit_loss = mean_answer_nll(edit_run(), labels)
                edited = torch.log_softmax(local_run().float(), -1)
            locality = (original.exp() * (original - edited)).sum(-1)[local_mask.bool()].mean()
            loss = float(hparams["edit_weight"]) * edit_loss + float(hparams["locality_weight"]) * locality
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(networks.parameters(), float(hparams["grad_clip"]))
            optimizer.step()
        history.append({"step": step, "edit_nll": float(edit_loss.detach()), "locality_kl": float(locality.detach()), "case_id": request.case_id})
        if (step + 1) % int(hparams["checkpoint_every"]) == 0 or step + 1 == len(order):
            write_torch({"networks": networks.state_dict(), "optimizer": optimizer.state_dict(),
                         "history": history, "step": step + 1, "inputs": inputs}, partial)
    final = {"layers": layers, "rank": int(hparams["rank"]), "networks": networks.state_dict(), "history": history,
             "train_case_ids": sorted({r.case_id for r in requests}), "dataset": inputs["dataset"]}
    write_torch(final, checkpoint)
    partial.unlink(missing_ok=True)
    return final
