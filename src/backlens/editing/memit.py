"""MEMIT (Meng et al. 2023): the residual change spread over several FF2 matrices, for one edit or a batch
of edits in one update (``apply_batch``, issue 26).

Follows kmeng01/memit's compute_z, compute_ks and execute_memit (pinned by tests/test_golden_rome_memit.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backlens.editing.base import Editor, FactoredUpdate, LayerUpdate
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import (
    MEMIT_TEMPLATE_LENGTHS,
    MEMIT_TEMPLATE_STARTS,
    TargetResult,
    context_templates,
    grouped_mean_key,
    optimise_target,
    outputs_at_subject,
)
from backlens.editing.method_configs import MLP_OUTPUT_REFUSAL, REFUSAL_REASONS
from backlens.editing.requests import EditRequest
from backlens.models.hooks import record_module_io, replace_outputs

# Relative mismatch above which a block does not pass its MLP output on unchanged (well above round-off).
MLP_OUTPUT_TOLERANCE = 1e-3


@torch.no_grad()
def mlp_output_mismatch(loaded, layer: int) -> float:
    """How far block ``layer``'s output moves from the vector added to its MLP output (relative, per
    position): 0 up to round-off where the block adds its MLP output to the residual unchanged."""
    ids = torch.tensor([loaded.tokenizer("The capital of France is")["input_ids"]], device=loaded.device)
    block, mlp = loaded.adapter.blocks[layer], loaded.adapter.mlp(layer)
    with record_module_io({"block": block}, inputs=False) as clean:
        loaded.model(input_ids=ids)
    added = torch.randn(clean.outputs["block"].shape[-1], generator=torch.Generator().manual_seed(0)).to(loaded.device)
    added = added * float(clean.outputs["block"].norm(dim=-1).mean()) / float(added.norm())
    with replace_outputs({mlp: lambda output: output + added.to(output.dtype)}), record_module_io({"block": block}, inputs=False) as moved:
        loaded.model(input_ids=ids)
    change = moved.outputs["block"] - clean.outputs["block"]
    return float((change - added).norm() / (added.norm() * change.shape[1]**0.5))


def check_mlp_output_joins_residual(editor: Editor, layer: int) -> None:
    """A one-line ValueError where block ``layer`` does not add its MLP output to the residual unchanged."""
    error = mlp_output_mismatch(editor.loaded, layer)
    if error > MLP_OUTPUT_TOLERANCE:
        raise ValueError(
            f"MEMIT on model {editor.loaded.name} ({editor.model.config.model_type}), block {layer} (relative "
            f"mismatch {error:.2g}): {MLP_OUTPUT_REFUSAL}; use ROME, whose value is optimised at the MLP output "
            "itself, or leave the method out of this model's run (editing.refused_methods)"
        )


class MassEditingMemory(Editor):
    """hparams: ``layers`` (ascending; the last is where z* is found at the block output), ROME's
    value-optimisation settings (plus ``v_loss_layer``), ``mom2_update_weight``,
    ``context_template_length_params``, ``context_template_starts``, ``seed``, ``stats_path``.

    ``second_moments`` ({layer: (d_ff, d_ff)}) and ``templates`` (MEMIT's groups, [["{}"], [...]])
    replace the statistics file and the sampled templates when given.
    """

    refusal_reason = REFUSAL_REASONS["memit"]

    @classmethod
    def refuses(cls, loaded, hparams) -> bool:
        return any(mlp_output_mismatch(loaded, int(layer)) > MLP_OUTPUT_TOLERANCE for layer in hparams["layers"])

    def __init__(self, loaded, hparams, *, second_moments: dict[int, torch.Tensor] | None = None,
                 templates: list[list[str]] | None = None):
        super().__init__(loaded, hparams)
        self.layers = [int(layer) for layer in hparams["layers"]]
        if self.layers != sorted(self.layers):
            raise ValueError(f"method.layers={self.layers}: MEMIT's layers must be ascending")
        for layer in self.layers:
            check_mlp_output_joins_residual(self, layer)
        self.fact_token = str(hparams.get("fact_token", "subject_last"))
        weight = float(hparams["mom2_update_weight"])
        moments = second_moments or {layer: load_second_moment(hparams["stats_path"], layer) for layer in self.layers}
        # MEMIT keeps the statistics in float32 (get_cov) and solves in float64.
        self.scaled_mom2 = {layer: weight * moments[layer].float().to(self.device, torch.float64) for layer in self.layers}
        if templates is None:
            lengths = hparams.get("context_template_length_params", MEMIT_TEMPLATE_LENGTHS)
            starts = hparams.get("context_template_starts", MEMIT_TEMPLATE_STARTS)
            templates = context_templates(self, lengths, starts, int(hparams.get("seed", 0)))
        self.template_groups = [list(group) for group in templates]

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(layer).weight for layer in self.layers]

    def optimise_value(self, request: EditRequest) -> TargetResult:
        """z*: the block output at the last MEMIT layer that makes the model say target_new (compute_z)."""
        z_layer = self.layers[-1]
        flat = [t for group in self.template_groups for t in group]
        loss_layer = self.hparams.get("v_loss_layer")
        nll_layer = max(int(loss_layer), z_layer) if loss_layer is not None else None
        return optimise_target(self, request, flat, z_layer, "block", self.hparams, nll_layer=nll_layer)

    def update_factors_batch(
        self, requests: Sequence[EditRequest], values: Sequence[TargetResult] | None = None,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[TargetResult]]:
        """execute_memit for several requests in one update: every z* is found on the model as it is
        (``values`` when the caller computed them already), then per layer the keys K (N, d_ff) and
        residuals R (N, d) of all requests are stacked and the layer gains R^T adjusted_K (out, in),
        adjusted_K = (w C + K^T K)^-1 K^T transposed; the keys and the z-layer outputs are read on
        the model with the earlier layers already updated, as the original does. Returns each
        layer's (adjusted keys (N, in), residuals (N, out)) and the values. One request is the
        single edit of ``update_factors`` (same operations, pinned by the golden tests)."""
        if values is None:
            values = [self.optimise_value(request) for request in requests]
        if len(values) != len(requests):
            raise ValueError(f"MEMIT batch: {len(values)} values for {len(requests)} requests")
        z_layer = self.layers[-1]
        targets_NxOut = torch.stack([value.target for value in values])
        factors = []
        for position, layer in enumerate(self.layers):
            keys_NxIn = torch.stack([grouped_mean_key(self, layer, self.template_groups, request, self.fact_token)
                                     for request in requests]).double()
            current_NxOut = torch.stack([outputs_at_subject(self, z_layer, request, self.fact_token)["block_out"]
                                         for request in requests])
            residuals_NxOut = (targets_NxOut - current_NxOut).double() / (len(self.layers) - position)
            adjusted_NxIn = self.adjusted_keys(layer, keys_NxIn)
            site = self.adapter.ff2_site(layer)
            with torch.no_grad():
                site.weight.add_(site.gradient_from_factors(adjusted_NxIn, residuals_NxOut).to(site.weight.dtype))
            factors.append((adjusted_NxIn, residuals_NxOut))
        return factors, list(values)

    def update_factors(self, request: EditRequest) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict]:
        """Apply the edit layer by layer and return each layer's (adjusted key (in), residual (out)):
        the update is residual adjusted_key^T, in (out, in) terms."""
        factors, (value,) = self.update_factors_batch([request])
        return [(keys[0], residuals[0]) for keys, residuals in factors], {**value.facts(), "target": value.target, "value": value}

    def adjusted_keys(self, layer: int, keys_NxIn: torch.Tensor) -> torch.Tensor:
        """MEMIT's (w C + K^T K)^-1 K^T (float64), transposed to (N, in); AlphaEdit (editing/alphaedit.py)
        solves its own system here."""
        return torch.linalg.solve(self.scaled_mom2[layer] + keys_NxIn.T @ keys_NxIn, keys_NxIn.T).T

    def adjusted_key(self, layer: int, key_In: torch.Tensor) -> torch.Tensor:
        """``adjusted_keys`` of one key."""
        return self.adjusted_keys(layer, key_In[None])[0]

    def apply_with_update(self, request: EditRequest) -> tuple[dict[str, object], FactoredUpdate]:
        factors, info = self.update_factors(request)
        value = info["value"]
        facts = {**value.facts(), "update_norms": [float(key.norm() * residual.norm()) for key, residual in factors]}
        layers = tuple(LayerUpdate(layer, key, residual) for layer, (key, residual) in zip(self.layers, factors))
        return facts, FactoredUpdate(layers, value.target, value.losses)

    def apply_batch(self, requests: Sequence[EditRequest], values: Sequence[TargetResult] | None = None) -> dict[str, object]:
        """Edit the weights in place for all ``requests`` as one MEMIT update (``update_factors_batch``);
        return facts: the number of requests, each layer's update norm and each value's optimisation."""
        factors, values = self.update_factors_batch(requests, values)
        return {"n_requests": len(requests),
                "update_norms": [float(torch.linalg.matrix_norm(residuals.T @ keys)) for keys, residuals in factors],
                "v_steps": [value.steps for value in values], "v_last_nll": [value.last_nll for value in values]}

    def apply(self, request: EditRequest) -> dict[str, object]:
        return self.apply_with_update(request)[0]
