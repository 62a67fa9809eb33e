"""ROME (Meng et al. 2022): a rank-one update of one FF2 matrix with a key/value equality constraint.

Follows kmeng01/rome's compute_u, compute_v and execute_rome (pinned by tests/test_golden_rome_memit.py).

r-ROME (Gupta et al., EMNLP 2024, arXiv 2403.07175; scalable-model-editing/rebuilding-rome, commit
4095d04, rome/compute_v.py with ``enable_random_prefix_keys``, its default): ROME's u uses k*, the
FF2 key averaged over the context templates, but its right vector uses the edit prompt's own key k
and FF2 output: v = (v* - W k) / (k . u). r-ROME uses the averaged key throughout:
v = (v* - mean_j FF2(k_j)) / (k* . u), the mean over the same templates as k* (FF2 is affine, so
that is W k* + b), v* unchanged (the MLP output at the subject in the first template plus the
optimised delta). The edited FF2 then maps k* exactly to v*. ``update_key``: ``edit_prompt`` (ROME,
the default) or ``template_mean`` (r-ROME).
"""

from __future__ import annotations

import torch
from torch import nn

from backlens.editing.base import Editor, FactoredUpdate, LayerUpdate
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import (
    ROME_TEMPLATE_LENGTHS,
    context_templates,
    ff2_inputs_outputs,
    ff2_keys,
    optimise_target,
    outputs_at_subject,
)
from backlens.editing.null_space import null_space_from_hparams, projection_enabled
from backlens.editing.requests import EditRequest
from backlens.errors import ConfigError

UPDATE_KEYS = ("edit_prompt", "template_mean")


class RankOneModelEditing(Editor):
    """hparams: ``layer``; ROME's ``fact_token``, ``v_num_grad_steps``, ``v_lr``, ``v_weight_decay``,
    ``kl_factor``, ``clamp_norm_factor``, ``mom2_adjustment``, ``context_template_length_params``;
    ``stop_below_loss`` (ROME: 5e-2), ``seed`` (template sampling) and ``stats_path`` (FF2 second
    moments from the edit_covariance rule); ``update_key`` (``edit_prompt``: ROME; ``template_mean``:
    r-ROME) and ``nullspace_projection`` / ``nullspace_threshold`` (editing/null_space.py).

    ``second_moment`` (d_ff, d_ff) and ``templates`` (ROME's flat list, "{}" first) replace the
    statistics file and the sampled templates when given (tests, the golden comparison).
    """

    def __init__(self, loaded, hparams, *, second_moment: torch.Tensor | None = None, templates: list[str] | None = None):
        super().__init__(loaded, hparams)
        self.layer = int(hparams["layer"])
        self.fact_token = str(hparams.get("fact_token", "subject_last"))
        self.update_key = str(hparams.get("update_key", "edit_prompt"))
        if self.update_key not in UPDATE_KEYS:
            raise ConfigError(f"rome update_key={self.update_key!r} is unknown; choose one of {', '.join(UPDATE_KEYS)}")
        self.inverse_mom2 = None
        self.null_space = None
        if bool(hparams.get("mom2_adjustment", True)) or projection_enabled(hparams):
            mom2 = second_moment if second_moment is not None else load_second_moment(hparams["stats_path"], self.layer)
            self.null_space = null_space_from_hparams(hparams, mom2, self.layer, self.device)
        if bool(hparams.get("mom2_adjustment", True)):
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
        key to v*. u is ROME's unit left vector C^-1 k* / |C^-1 k*|, k* the mean key over the
        templates (then P u / |P u| with the null-space projection); v = (v* - W k - b) / (k . u)
        with k the edit prompt's key (ROME) or k* (r-ROME, ``update_key=template_mean``)."""
        located = [request.in_context(t) for t in self.templates]
        if self.update_key == "template_mean":
            keys_NxIn, outputs_NxOut = ff2_inputs_outputs(self, self.layer, located, request.subject, self.fact_token)
        else:
            keys_NxIn = ff2_keys(self, self.layer, located, request.subject, self.fact_token)
        mean_key_In = keys_NxIn.mean(0)
        left_In = self.inverse_mom2 @ mean_key_In if self.inverse_mom2 is not None else mean_key_In
        left_In = left_In / left_In.norm()
        if self.null_space is not None:
            # Projected before v is solved, so the key still maps to v* exactly.
            left_In = self.null_space.project(left_In)
            left_In = left_In / left_In.norm()
        value = optimise_target(self, request, self.templates, self.layer, "mlp", self.hparams)
        if self.update_key == "template_mean":
            key_In, current_Out = mean_key_In, outputs_NxOut.mean(0)
        else:
            current = outputs_at_subject(self, self.layer, request, self.fact_token)
            key_In, current_Out = current["key"], current["ff2_out"]
        right_Out = (value.target - current_Out) / torch.dot(key_In, left_In)
        info = {**value.facts(), "key": key_In, "target_value": value.target, "value": value}
        if self.null_space is not None:
            info["null_space_dim"] = self.null_space.dim
            info["key_null_space_energy"] = self.null_space.energy_fraction(key_In)
        return left_In, right_Out, info

    def apply_with_update(self, request: EditRequest) -> tuple[dict[str, object], FactoredUpdate]:
        left_In, right_Out, info = self.rank_one_factors(request)
        site = self.adapter.ff2_site(self.layer)
        with torch.no_grad():
            site.weight.add_(site.gradient_from_factors(left_In[None], right_Out[None]).to(site.weight.dtype))
        value = info["value"]
        facts = {**value.facts(), **{k: info[k] for k in ("null_space_dim", "key_null_space_energy") if k in info}}
        return facts, FactoredUpdate((LayerUpdate(self.layer, left_In, right_Out),), value.target, value.losses)

    def apply(self, request: EditRequest) -> dict[str, object]:
        return self.apply_with_update(request)[0]
