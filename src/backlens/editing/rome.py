"""ROME (Meng et al. 2022): a rank-one update of one FF2 matrix with a key/value equality constraint."""

from __future__ import annotations

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import context_templates, ff2_keys, optimise_value_delta, outputs_at_subject
from backlens.editing.requests import EditRequest


class RankOneModelEditing(Editor):
    """hparams: ``layer``, value-optimisation settings (v_steps, v_lr, v_weight_decay, kl_factor,
    clamp_norm_factor, stop_below_nll), ``n_context_templates``, ``context_tokens``, ``seed``, and
    ``stats_path`` (FF2 second moments from the edit_covariance rule)."""

    def __init__(self, loaded, hparams):
        super().__init__(loaded, hparams)
        self.layer = int(hparams["layer"])
        mom2 = load_second_moment(hparams["stats_path"], self.layer)
        self.inverse_mom2 = torch.linalg.inv(mom2).to(self.device, torch.float32)
        self.templates = context_templates(
            self, int(hparams["n_context_templates"]), int(hparams["context_tokens"]), int(hparams["seed"])
        )

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(self.layer).weight]

    def rank_one_factors(self, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(u_In, r_Out) with update r u^T such that the edited FF2 maps the prompt's key to v*."""
        mean_key_In = ff2_keys(self, self.layer, [t.format(request.prompt) for t in self.templates], request.subject).mean(0)
        current = outputs_at_subject(self, self.layer, request.prompt, request.subject)
        value = optimise_value_delta(
            self, request, self.templates, self.layer, float(current["mlp_out"].norm()), self.hparams
        )
        target_value_Out = current["ff2_out"] + value.delta
        left_In = self.inverse_mom2 @ mean_key_In
        right_Out = (target_value_Out - current["ff2_out"]) / torch.dot(current["key"], left_In)
        info = {"v_steps": value.steps, "v_first_nll": value.first_nll, "v_last_nll": value.last_nll}
        return left_In, right_Out, {**info, "key": current["key"], "target_value": target_value_Out}

    def apply(self, request: EditRequest) -> dict[str, object]:
        left_In, right_Out, info = self.rank_one_factors(request)
        site = self.adapter.ff2_site(self.layer)
        with torch.no_grad():
            site.weight.add_(site.gradient_from_factors(left_In[None], right_Out[None]).to(site.weight.dtype))
        return {k: v for k, v in info.items() if not isinstance(v, torch.Tensor)}
