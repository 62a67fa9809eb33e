"""MEND-style editor (after Mitchell et al. 2022, trained here): a learned editor that transforms the rank-1 gradient factors.

For FF2 of a layer, the loss gradient is sum_i delta_i x_i^T (Lemma 4.1). MEND feeds each
token's concatenated (x_i, delta_i) through a small low-rank MLP with a residual connection,
and applies W += -lr * sum_i delta~_i x~_i^T with a learned per-layer step size lr.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import torch
from torch import nn

from backlens.editing.base import Editor
from backlens.editing.requests import EditRequest
from backlens.editing.training import mean_answer_nll, teacher_forced_batch, trainable_only
from backlens.models.adapters import LinearSite
from backlens.models.hooks import add_to_outputs, record_module_io, replace_outputs


class FactorEditor(nn.Module):
    """Maps (P, d_in) inputs and (P, d_out) VJPs to edited factors; the identity at initialisation."""

    def __init__(self, d_in: int, d_out: int, rank: int, log_lr_init: float):
        super().__init__()
        self.d_in = d_in
        self.register_buffer("mean", torch.zeros(d_in + d_out))
        self.register_buffer("std", torch.ones(d_in + d_out))
        self.down = nn.Linear(d_in + d_out, rank)
        self.up = nn.Linear(rank, d_in + d_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.log_lr = nn.Parameter(torch.tensor(float(log_lr_init)))

    def forward(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat([inputs_PxIn, vjps_PxOut], dim=-1)
        normalised = (joined - self.mean) / self.std
        edited = joined + self.up(torch.relu(self.down(normalised))) * self.std
        return edited[:, : self.d_in], edited[:, self.d_in :]

    def weight_update(self, site: LinearSite, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> torch.Tensor:
        new_inputs, new_vjps = self(inputs_PxIn, vjps_PxOut)
        return -self.log_lr.exp() * site.gradient_from_factors(new_inputs, new_vjps)


def gradient_factors(editor: Editor, sites: list[LinearSite], request: EditRequest) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the (P, d_in) FF2 inputs and (P, d_out) VJPs of target_new's NLL on the edit prompt."""
    ids, mask, labels = teacher_forced_batch(editor.tokenizer, [(request.prompt, request.target_new)], editor.device)
    modules = {str(site.layer): site.module for site in sites}
    # Gradients flow from the embeddings on, so the VJPs exist with every weight frozen.
    embeddings = {editor.model.get_input_embeddings(): lambda out: out.detach().requires_grad_()}
    with trainable_only(editor.model, []), replace_outputs(embeddings), record_module_io(modules) as record:
        loss = mean_answer_nll(editor.model(input_ids=ids, attention_mask=mask).logits, labels)
        outputs = [record.outputs[str(site.layer)] for site in sites]
        vjps = torch.autograd.grad(loss, outputs)
    return {
        site.layer: (record.inputs[str(site.layer)][0].detach(), vjp[0].detach()) for site, vjp in zip(sites, vjps)
    }


def added_weight_deltas(sites: list[LinearSite], deltas: Mapping[int, torch.Tensor]) -> AbstractContextManager[None]:
    """Run the model as if each site's weight were W + delta, keeping delta differentiable."""
    return add_to_outputs({site.module: partial(site.map_inputs, weight_like=deltas[site.layer]) for site in sites})


def build_editors(editor: Editor, layers: list[int], rank: int, log_lr_init: float) -> nn.ModuleDict:
    networks = {}
    for layer in layers:
        site = editor.adapter.ff2_site(layer)
        networks[str(layer)] = FactorEditor(site.in_features, site.out_features, rank, log_lr_init)
    return nn.ModuleDict(networks).to(editor.device)


class MendEditor(Editor):
    """hparams: ``layers``, ``rank``, ``checkpoint`` (from the edit_mend_train rule)."""

    def __init__(self, loaded, hparams):
        super().__init__(loaded, hparams)
        self.layers = [int(layer) for layer in hparams["layers"]]
        path = Path(hparams["checkpoint"])
        if not path.exists():
            raise FileNotFoundError(f"no MEND editor at {path}: run `snakemake {path}` (rule edit_mend_train) first")
        state = torch.load(path)
        if state["layers"] != self.layers:
            raise ValueError(f"{path} edits layers {state['layers']}, method.layers is {self.layers}; retrain (rule edit_mend_train)")
        self.networks = build_editors(self, self.layers, int(state["rank"]), 0.0)
        self.networks.load_state_dict(state["networks"])
        self.networks.eval()
        self.sites = [self.adapter.ff2_site(layer) for layer in self.layers]

    def edited_parameters(self) -> list[nn.Parameter]:
        return [site.weight for site in self.sites]

    def apply(self, request: EditRequest) -> dict[str, object]:
        factors = gradient_factors(self, self.sites, request)
        norms = []
        with torch.no_grad():
            for site in self.sites:
                update = self.networks[str(site.layer)].weight_update(site, *factors[site.layer])
                site.weight.add_(update.to(site.weight.dtype))
                norms.append(float(update.norm()))
        return {"update_norms": norms}
