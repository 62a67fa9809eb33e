"""MEMIT (Meng et al. 2023) for one edit: the residual change spread over several FF2 matrices."""

from __future__ import annotations

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import context_templates, ff2_keys, optimise_value_delta, outputs_at_subject
from backlens.editing.requests import EditRequest


class MassEditingMemory(Editor):
    """hparams: ``layers`` (ascending; the last is where the target residual z* is found), the
    value-optimisation settings, ``mom2_update_weight``, ``n_context_templates``, ``context_tokens``,
    ``seed``, ``stats_path``."""

    def __init__(self, loaded, hparams):
        super().__init__(loaded, hparams)
        self.layers = [int(layer) for layer in hparams["layers"]]
        if self.layers != sorted(self.layers):
            raise ValueError(f"method.layers={self.layers}: MEMIT's layers must be ascending")
        weight = float(hparams["mom2_update_weight"])
        self.scaled_mom2 = {
            layer: (weight * load_second_moment(hparams["stats_path"], layer)).to(self.device, torch.float64)
            for layer in self.layers
        }
        self.templates = context_templates(
            self, int(hparams["n_context_templates"]), int(hparams["context_tokens"]), int(hparams["seed"])
        )

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(layer).weight for layer in self.layers]

    def apply(self, request: EditRequest) -> dict[str, object]:
        z_layer = self.layers[-1]
        initial = outputs_at_subject(self, z_layer, request.prompt, request.subject)
        value = optimise_value_delta(
            self, request, self.templates, z_layer, float(initial["block_out"].norm()), self.hparams
        )
        target_residual = initial["block_out"] + value.delta
        texts = [t.format(request.prompt) for t in self.templates]
        update_norms = []
        for position, layer in enumerate(self.layers):
            key_In = ff2_keys(self, layer, texts, request.subject).mean(0).double()
            current = outputs_at_subject(self, z_layer, request.prompt, request.subject)
            residual_Out = (target_residual - current["block_out"]).double() / (len(self.layers) - position)
            system = self.scaled_mom2[layer] + torch.outer(key_In, key_In)
            adjusted_key_In = torch.linalg.solve(system, key_In)
            site = self.adapter.ff2_site(layer)
            update = site.gradient_from_factors(adjusted_key_In[None], residual_Out[None])
            with torch.no_grad():
                site.weight.add_(update.to(site.weight.dtype))
            update_norms.append(float(update.norm()))
        return {"v_steps": value.steps, "v_first_nll": value.first_nll, "v_last_nll": value.last_nll,
                "update_norms": update_norms}
