"""Trace a fine-tuning edit of one FF2 matrix over K optimisation steps (issue 16).

The FT baseline's setting (``backlens.editing.ft``: one FF2 weight, Adam) made observable: each
step is one forward and backward pass of the paper's loss (-log p(target_new's first token) at
the prompt's last position, the loss the Backward Lens captures), then one step of plain gradient
descent (``sgd``) or Adam on the weight only. Unlike FT-L there is no L-inf clamp and no early stop,
so every trace has K steps and a GD trace's accumulated update is exactly -lr sum_k G_k.

Per step we record the loss and target probability before and after it, the rank of the step's
and of the accumulated update, the cosine of the step's update with the first (and previous) one,
and the target's rank in LL(-delta_last) (the direction a descent step writes into the FF2
output at the last position) and in LL(accumulated update x x_last) (what the edit so far adds).

GD updates are analysed from their factors (``FactoredUpdate``): G_k = Delta_k^T X_k. Adam
rescales every weight entry separately, which destroys that structure, so its updates are read
from the weights themselves and ranked by an SVD (matrix_rank's float32 rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backlens.analysis.capture import last_position_loss
from backlens.analysis.factored_updates import FactoredUpdate, factored_cosine
from backlens.analysis.logit_lens import rank_from_top, target_ranks
from backlens.analysis.ranks import float32_rtol
from backlens.editing.training import trainable_only
from backlens.models.adapters import LinearSite
from backlens.models.hooks import record_module_io
from backlens.models.loading import LoadedModel

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TraceSettings:
    steps: int = 25
    optimizer: str = "sgd"
    lr: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"ft_trace optimizer={self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"ft_trace needs steps >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")


@dataclass
class StepState:
    """One forward (and backward) pass at the current weights."""

    loss: float
    target_prob: float
    target_rank: int  # in the model's own output at the last position, 0 = top-1
    inputs_PxIn: torch.Tensor | None = None  # FF2's inputs x_i
    vjps_PxOut: torch.Tensor | None = None  # delta_i = dL/d(FF2 output)_i
    weight_grad: torch.Tensor | None = None  # autograd's dL/dW, the module's layout


def forward_step(loaded: LoadedModel, site: LinearSite, ids_1xP: torch.Tensor, target_id: int,
                 *, backward: bool) -> StepState:
    """Loss, target probability and rank; with ``backward`` also FF2's factors and weight gradient.
    Only the edited weight requires grad, so the backward pass stops at that layer."""
    target = torch.tensor([target_id], device=ids_1xP.device)
    length = [ids_1xP.shape[1]]
    if not backward:
        with torch.no_grad():
            logits = loaded.model(input_ids=ids_1xP).logits
            loss = last_position_loss(logits, length, target)
        return _state(logits, loss, target_id)
    with torch.enable_grad(), trainable_only(loaded.model, [site.weight]), record_module_io({"ff2": site.module}) as io:
        logits = loaded.model(input_ids=ids_1xP).logits
        loss = last_position_loss(logits, length, target)
        vjps, weight_grad = torch.autograd.grad(loss.sum(), [io.outputs["ff2"], site.weight])
        inputs = io.inputs["ff2"]
    state = _state(logits.detach(), loss.detach(), target_id)
    state.inputs_PxIn, state.vjps_PxOut, state.weight_grad = inputs[0].detach(), vjps[0].detach(), weight_grad
    return state


def _state(logits_1xPxV: torch.Tensor, loss_1: torch.Tensor, target_id: int) -> StepState:
    last_V = logits_1xPxV[0, -1].float()
    return StepState(
        loss=float(loss_1[0]),
        target_prob=float(torch.softmax(last_V, dim=-1)[target_id]),
        target_rank=int(rank_from_top(last_V[None], torch.tensor([target_id], device=last_V.device))[0]),
    )


def _optimizer(settings: TraceSettings, weight: torch.nn.Parameter) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam([weight], lr=settings.lr)
    return torch.optim.SGD([weight], lr=settings.lr)


def _explicit_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    norms = float(a.norm() * b.norm())
    return float((a * b).sum()) / norms if norms else float("nan")


class FactorTracker:
    """Gradient descent: step k's update is -lr Delta_k^T X_k, read from the captured factors
    (exact sums in float64; the common factor -lr cancels in ranks and cosines)."""

    rank_method = "factors"

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.accumulated = FactoredUpdate()
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def record(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """(row columns, the accumulated update applied to the last position's input)."""
        this = (inputs_PxIn, vjps_PxOut)
        step_update = FactoredUpdate()
        step_update.add(inputs_PxIn, vjps_PxOut, -self.lr)
        self.accumulated.add(inputs_PxIn, vjps_PxOut, -self.lr)
        columns = {
            "step_rank": step_update.rank().rank, "accumulated_rank": self.accumulated.rank().rank,
            "step_update_norm": step_update.norm(), "accumulated_norm": self.accumulated.norm(),
            "cosine_first": factored_cosine(this, self.first) if self.first else 1.0,
            "cosine_previous": factored_cosine(this, self.previous) if self.previous else float("nan"),
        }
        self.first, self.previous = self.first or this, this
        return columns, self.accumulated.apply(inputs_PxIn[-1][None])[0]


class WeightTracker:
    """Adam: updates read from the weights (float64 differences of the float32 weights), ranked by an
    SVD at matrix_rank's float32 rule, since per-entry rescaling leaves no factor structure."""

    rank_method = "svd_float32_rule"

    def __init__(self, site: LinearSite, original: torch.Tensor) -> None:
        self.site = site
        self.original_out_in = site.as_out_in(original).double()
        self.previous_out_in = self.original_out_in
        self.rtol = float32_rtol(site.out_features, site.in_features)
        self.first_update: torch.Tensor | None = None
        self.previous_update: torch.Tensor | None = None

    def record(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> tuple[dict, torch.Tensor]:
        weight_out_in = self.site.as_out_in(self.site.weight.detach()).double()
        update = weight_out_in - self.previous_out_in
        total = weight_out_in - self.original_out_in
        columns = {
            "step_rank": int(torch.linalg.matrix_rank(update, rtol=self.rtol)),
            "accumulated_rank": int(torch.linalg.matrix_rank(total, rtol=self.rtol)),
            "step_update_norm": float(update.norm()), "accumulated_norm": float(total.norm()),
            "cosine_first": _explicit_cosine(update, self.first_update) if self.first_update is not None else 1.0,
            "cosine_previous": _explicit_cosine(update, self.previous_update)
            if self.previous_update is not None else float("nan"),
        }
        self.first_update = update if self.first_update is None else self.first_update
        self.previous_update, self.previous_out_in = update, weight_out_in
        return columns, total @ inputs_PxIn[-1].double()


def trace_edit(loaded: LoadedModel, input_ids: list[int], target_id: int, layer: int, settings: TraceSettings,
               *, on_step: Callable[[int, LinearSite], None] | None = None) -> list[dict]:
    """K steps on FF2 of ``layer`` for one prompt; one row per step. The weight is restored
    afterwards (also on error). ``on_step(step, site)`` runs after each update (tests read the
    weight there)."""
    adapter = loaded.adapter
    site = adapter.ff2_site(layer)
    weight = site.weight
    original = weight.detach().clone()
    ids_1xP = torch.tensor([input_ids], device=loaded.device)
    n_tokens = len(input_ids)
    optimizer = _optimizer(settings, weight)
    tracker = FactorTracker(settings.lr) if settings.optimizer == "sgd" else WeightTracker(site, original)
    first_vjp_last = None
    rows = []
    try:
        state = forward_step(loaded, site, ids_1xP, target_id, backward=True)
        for step in range(1, settings.steps + 1):
            weight.grad = state.weight_grad
            optimizer.step()
            weight.grad = None
            if on_step is not None:
                on_step(step, site)
            columns, accumulated_output_d = tracker.record(state.inputs_PxIn, state.vjps_PxOut)
            vjp_last_d = state.vjps_PxOut[-1]
            first_vjp_last = vjp_last_d if first_vjp_last is None else first_vjp_last
            # -delta_last: what a descent step writes into FF2's output at the last position.
            lens_vectors = torch.stack([-vjp_last_d, accumulated_output_d.to(vjp_last_d.dtype)])
            lens_ranks = target_ranks(adapter, lens_vectors, torch.full((2,), target_id)).tolist()
            row = {"step": step, "loss": state.loss, "target_prob": state.target_prob,
                   "target_rank": state.target_rank, "rank_method": tracker.rank_method, **columns}
            # The last step needs no gradient at the final weights, only their loss.
            state = forward_step(loaded, site, ids_1xP, target_id, backward=step < settings.steps)
            row.update(
                loss_after=state.loss, target_prob_after=state.target_prob, target_rank_after=state.target_rank,
                # A sum of k updates of rank <= P has rank <= k x P (gradient descent only; Adam rescales entries).
                rank_bound=min(step * n_tokens, site.out_features, site.in_features)
                if settings.optimizer == "sgd" else None,
                vjp_cosine_first=float(torch.nn.functional.cosine_similarity(vjp_last_d, first_vjp_last, dim=0)),
                target_rank_neg_vjp=lens_ranks[0], target_rank_accumulated_output=lens_ranks[1],
            )
            rows.append(row)
    finally:
        weight.grad = None
        with torch.no_grad():
            weight.copy_(original)
    common = {"layer": layer, "n_tokens": n_tokens, "optimizer": settings.optimizer, "lr": settings.lr,
              "d_out": site.out_features, "d_in": site.in_features, "vocab_size": int(adapter.unembedding.shape[0])}
    return [{**common, **row} for row in rows]


def layers_from_fractions(fractions: list[float], n_layers: int) -> list[int]:
    """Layer indices at fractions of depth (as the editing methods' ``layer_fraction``), deduplicated."""
    return sorted({min(n_layers - 1, max(0, round(float(f) * n_layers))) for f in fractions})
