"""Constrained fine-tuning of one FF2 matrix (ROME's FT baseline, L-infinity norm constraint)."""

from __future__ import annotations

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.requests import EditRequest
from backlens.editing.training import mean_answer_nll, teacher_forced_batch, trainable_only


class ConstrainedFineTuning(Editor):
    """hparams: ``layer``, ``steps``, ``lr`` (Adam), ``norm_constraint`` (max |W - W0| per entry),
    ``stop_below_loss``."""

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(int(self.hparams["layer"])).weight]

    def apply(self, request: EditRequest) -> dict[str, object]:
        weight = self.edited_parameters()[0]
        original = weight.detach().clone()
        bound = float(self.hparams["norm_constraint"])
        ids, mask, labels = teacher_forced_batch(self.tokenizer, [(request.prompt, request.target_new)], self.device)
        optimizer = torch.optim.Adam([weight], lr=float(self.hparams["lr"]))
        losses = []
        with trainable_only(self.model, [weight]):
            for _ in range(int(self.hparams["steps"])):
                optimizer.zero_grad()
                loss = mean_answer_nll(self.model(input_ids=ids, attention_mask=mask).logits, labels)
                losses.append(float(loss.detach()))
                if losses[-1] < float(self.hparams["stop_below_loss"]):
                    break
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    weight.copy_(torch.clamp(weight, min=original - bound, max=original + bound))
        weight.grad = None
        return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
