"""ROME (Meng et al. 2022): a rank-one update of one FF2 matrix with a key/value equality constraint.

Follows kmeng01/rome's compute_u, compute_v and execute_rome (pinned by tests/test_golden_rome_memit.py).
"""

from __future__ import annotations

import torch
from torch import nn

from backlens.editing.base import Editor, FactoredUpdate, LayerUpdate
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import ROME_TEMPLATE_LENGTHS, context_templates, ff2_keys, optimise_target, outputs_at_subject
from backlens.editing.requests import EditRequest


class RankOneModelEditing(Editor):
    """hparams: ``layer``; ROME's ``fact_token``, ``v_num_grad_steps``, ``v_lr``, ``v_weight_decay``,
    ``kl_factor``, ``clamp_norm_factor``, ``mom2_adjustment``, ``context_template_length_params``;
    ``stop_below_loss`` (ROME: 5e-2), ``seed`` (template sampling) and ``stats_path`` (FF2 second
    moments from the edit_covariance rule).

    ``second_moment`` (d_ff, d_ff) and ``templates`` (ROME's flat list, "{}" first) replace the
    statistics file and the sampled templates when given (tests, the golden comparison).
    """

    def __init__(self, loaded, hparams, *, second_moment: torch.Tensor | None = None, templates: list[str] | None = None):
        super().__init__(loaded, hparams)
        self.layer = int(hparams["layer"])
        self.fact_token = str(hparams.get("fact_token", "subject_last"))
        self.inverse_mom2 = None
        if bool(hparams.get("mom2_adjustment", True)):
            mom2 = second_moment if second_moment is not None else load_second_moment(hparams["stats_path"], self.layer)
            # Inverted in float64 (as ROME does), applied in the weights' dtype (float64 runs included).
            weight_dtype = self.adapter.ff2_site(self.layer).weight.dtype
            self.inverse_mom2 = torch.linalg.inv(mom2.double()).to(self.device, weight_dtype)
        if templates is None:
            lengths = hparams.get("context_template_length_params", ROME_TEMPLATE_LENGTHS)
            groups = context_templates(self, lengths, None, int(hparams.get("seed", 0)))
            templates = [t for group in groups for t in group]
        self.templates = list(templates)

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(self.layer).weight]

    def rank_one_factors(self, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(u_In, v_Out) with update u v^T (in (in, out) terms) such that the edited FF2 maps the
        prompt's key to v*. u is ROME's unit left vector C^-1 k* / |C^-1 k*|, k* the mean key over
        the templates; v = (v* - W k) / (k . u)."""
        located = [request.in_context(t) for t in self.templates]
        mean_key_In = ff2_keys(self, self.layer, located, request.subject, self.fact_token).mean(0)
        left_In = self.inverse_mom2 @ mean_key_In if self.inverse_mom2 is not None else mean_key_In
        left_In = left_In / left_In.norm()
        value = optimise_target(self, request, self.templates, self.layer, "mlp", self.hparams)
        current = outputs_at_subject(self, self.layer, request, self.fact_token)
        right_Out = (value.target - current["ff2_out"]) / torch.dot(current["key"], left_In)
        info = {**value.facts(), "key": current["key"], "target_value": value.target, "value": value}
        return left_In, right_Out, info

    def apply_with_update(self, request: EditRequest) -> tuple[dict[str, object], FactoredUpdate]:
        left_In, right_Out, info = self.rank_one_factors(request)
        site = self.adapter.ff2_site(self.layer)
        with torch.no_grad():
            site.weight.add_(site.gradient_from_factors(left_In[None], right_Out[None]).to(site.weight.dtype))
        value = info["value"]
        return value.facts(), FactoredUpdate((LayerUpdate(self.layer, left_In, right_Out),), value.target, value.losses)

    def apply(self, request: EditRequest) -> dict[str, object]:
        return self.apply_with_update(request)[0]
