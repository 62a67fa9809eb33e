"""FT-L: constrained fine-tuning of one FF2 module, as kmeng01/rome's baselines/ft/ft_main.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.requests import EditRequest, continuation
from backlens.editing.training import LogitsAbove, trainable_only


class ConstrainedFineTuning(Editor):
    """hparams: ``layer``, ``num_steps``, ``lr`` and ``weight_decay`` (Adam), ``norm_constraint``
    (max |W - W0| per entry, also for the bias), ``stop_below_loss`` (ft_main: 1e-2).

    As ft_main.execute_ft for one request: the trained parameters are every parameter of the
    FF2 module (weight, and bias where the model has one); the loss is the mean over target_new's
    tokens of -log p(token) read from the distribution at the prompt's last token (every target
    token scored there, not teacher-forced); each of ``num_steps`` iterations takes an Adam step
    when the loss is at least stop_below_loss, clamps, and stops once the loss is below it."""

    def edited_parameters(self) -> list[nn.Parameter]:
        module = self.adapter.ff2_site(int(self.hparams["layer"])).module
        return [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]

    def last_position_loss(self, logits: Callable[[], torch.Tensor], target_ids: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits()[0, -1].float(), dim=-1)
        return -log_probs[target_ids].mean()

    def apply(self, request: EditRequest) -> dict[str, object]:
        parameters = self.edited_parameters()
        originals = [p.detach().clone() for p in parameters]
        bound = float(self.hparams["norm_constraint"])
        stop = float(self.hparams["stop_below_loss"])
        item = continuation(self.tokenizer, request.prompt, request.target_new)
        prompt_ids = torch.tensor([item.prompt_ids], device=self.device)
        target_ids = torch.tensor(item.target_ids, device=self.device)
        optimizer = torch.optim.Adam(parameters, lr=float(self.hparams["lr"]), weight_decay=float(self.hparams.get("weight_decay", 0.0)))
        losses = []
        # Every step runs the same prompt; only the FF2 module's parameters change between steps.
        logits = LogitsAbove(self, parameters)(prompt_ids)
        with trainable_only(self.model, parameters):
            for _ in range(int(self.hparams["num_steps"])):
                optimizer.zero_grad()
                loss = self.last_position_loss(logits, target_ids)
                losses.append(float(loss.detach()))
                if losses[-1] >= stop:
                    loss.backward()
                    optimizer.step()
                with torch.no_grad():
                    for parameter, original in zip(parameters, originals):
                        parameter.copy_(torch.clamp(parameter, min=original - bound, max=original + bound))
                if losses[-1] < stop:
                    break
        for parameter in parameters:
            parameter.grad = None
        return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
