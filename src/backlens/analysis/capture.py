"""One forward and one backward pass that capture the spanning sets of every MLP gradient
(and, on request, of every attention projection's).

For each MLP linear map y_i = W x_i (FF1: GPT-2 ``c_fc``, gated ``gate_proj``/``up_proj``;
FF2: ``c_proj``/``down_proj``) we keep its inputs x_i and its VJPs delta_i = dL/dy_i. By
Lemma 4.1 these P x d factors determine dL/dW = sum_i delta_i x_i^T exactly, so nothing
of weight size is ever materialised: ``torch.autograd.grad`` is asked only for the VJPs
with respect to module outputs, and parameter ``.grad`` stays untouched. With ``attention=True``
the attention projections' maps (W_Q, W_K, W_V, W_O; a fused Q/K/V matrix as one site) are
captured in the same pass, kept apart from the MLP sites so every MLP table is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from backlens.data.batching import pad_batch
from backlens.models.adapters import ArchitectureAdapter, LinearSite, Projection
from backlens.models.hooks import record_module_io

SiteKey = tuple[int, str]  # (layer, matrix name)


@dataclass
class CapturedBatch:
    """Gradient factors of a padded batch of prompts (right padding; ``lengths`` real tokens).

    ``inputs[(layer, matrix)]`` is (B, T, d_in), ``vjps[(layer, matrix)]`` is (B, T, d_out);
    ``submodule_vjps[(layer, "attention" | "mlp")]`` is (B, T, d_model). Padding rows are
    exactly zero in every VJP and must be ignored (``factors`` does that).
    """

    lengths: list[int]
    target_ids: torch.Tensor  # (B,)
    losses: torch.Tensor  # (B,) per-prompt cross-entropy
    sites: dict[SiteKey, LinearSite]
    inputs: dict[SiteKey, torch.Tensor]
    vjps: dict[SiteKey, torch.Tensor]
    submodule_vjps: dict[SiteKey, torch.Tensor]
    n_layers: int
    # Attention (``attention=True`` only): sites keyed (layer, "attn_q" | ... | "attn_qkv"), their
    # (B, T, d_in) inputs and (B, T, d_out) VJPs, and the projections keyed (layer, "q" | "k" | "v" | "o").
    attention_sites: dict[SiteKey, LinearSite] = field(default_factory=dict)
    attention_inputs: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    attention_vjps: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    projections: dict[SiteKey, Projection] = field(default_factory=dict)
    # ``weight_gradients=True`` only: autograd's dL/dW of every MLP site from the same backward pass
    # (module weight layout), summed over the batch's prompts: one prompt's gradient for a batch of one.
    weight_gradients: dict[SiteKey, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def factors(self, prompt: int, key: SiteKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs P x d_in, vjps P x d_out) of one prompt, padding removed."""
        length = self.lengths[prompt]
        return self.inputs[key][prompt, :length], self.vjps[key][prompt, :length]

    def gradient(self, prompt: int, key: SiteKey) -> torch.Tensor:
        """dL/dW of one prompt rebuilt from its factors, in the module's weight layout."""
        inputs, vjps = self.factors(prompt, key)
        return self.sites[key].gradient_from_factors(inputs, vjps)

    def projection_factors(self, prompt: int, layer: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs P x d_in, vjps P x d_proj) of one attention projection of one prompt, padding removed:
        the VJP restricted to the projection's units of its (possibly fused) site."""
        projection = self.projections[(layer, name)]
        key = (layer, projection.site.matrix)
        length = self.lengths[prompt]
        vjps = projection.select_outputs(self.attention_vjps[key][prompt, :length])
        return self.attention_inputs[key][prompt, :length], vjps

    def projection_gradient(self, prompt: int, layer: int, name: str) -> torch.Tensor:
        """dL/dW of one projection from its factors, in its site's weight layout (its rows or
        columns of a fused weight's gradient)."""
        inputs, vjps = self.projection_factors(prompt, layer, name)
        return self.projections[(layer, name)].site.gradient_from_factors(inputs, vjps)


def last_position_loss(logits_BxTxV: torch.Tensor, lengths: Sequence[int], target_ids: torch.Tensor) -> torch.Tensor:
    """Per-prompt cross-entropy of the target token at each prompt's last real position."""
    rows = torch.arange(len(lengths), device=logits_BxTxV.device)
    last = torch.as_tensor(lengths, device=logits_BxTxV.device) - 1
    return F.cross_entropy(logits_BxTxV[rows, last].float(), target_ids, reduction="none")


def capture_gradient_factors(
    model: torch.nn.Module,
    adapter: ArchitectureAdapter,
    input_ids: Sequence[Sequence[int]],
    target_ids: Sequence[int],
    *,
    pad_id: int,
    submodules: bool = True,
    attention: bool = False,
    weight_gradients: bool = False,
) -> CapturedBatch:
    """Forward and backward one batch; return the factors of every FF gradient (and, with
    ``attention``, of every attention projection's, from the same pass).

    With ``weight_gradients`` the same backward pass also goes into every MLP weight and returns
    autograd's dL/dW (the reference of the Lemma 4.1 check, rule ``lemma_check``); the VJPs are
    unchanged, and parameter ``.grad`` still stays untouched.

    The summed loss makes each prompt's VJPs exactly those of its own loss: prompts in a
    batch never interact (padding is masked and sits after the real tokens).
    """
    device = adapter.model.device
    ids, mask = pad_batch(input_ids, pad_id, device)
    lengths = [len(p) for p in input_ids]
    targets = torch.as_tensor(list(target_ids), dtype=torch.long, device=device)

    sites = {(site.layer, site.matrix): site for layer in range(adapter.n_layers) for site in adapter.linear_sites(layer)}
    site_modules = {f"{layer}/{matrix}": site.module for (layer, matrix), site in sites.items()}
    submodule_modules = {}
    if submodules:
        for layer in range(adapter.n_layers):
            submodule_modules[f"{layer}/attention"] = adapter.attention(layer)
            submodule_modules[f"{layer}/mlp"] = adapter.mlp(layer)
    projections = {}
    if attention:
        projections = {
            (p.layer, p.name): p for layer in range(adapter.n_layers) for p in adapter.attention_projections(layer)
        }
    attention_sites = {(p.layer, p.site.matrix): p.site for p in projections.values()}
    attention_modules = {f"{layer}/{matrix}": site.module for (layer, matrix), site in attention_sites.items()}

    with torch.enable_grad(), record_module_io(site_modules) as site_io, record_module_io(
        submodule_modules, inputs=False
    ) as sub_io, record_module_io(attention_modules) as attn_io:
        logits = model(input_ids=ids, attention_mask=mask).logits
        losses = last_position_loss(logits, lengths, targets)
        # Attention keys go last, so without them the list (and the MLP VJPs) is exactly as before.
        output_keys = list(site_modules) + list(submodule_modules)
        outputs = [site_io.outputs[k] if k in site_io.outputs else sub_io.outputs[k] for k in output_keys]
        outputs += [attn_io.outputs[k] for k in attention_modules]
        weights = [site.weight for site in sites.values()] if weight_gradients else []
        grads = torch.autograd.grad(losses.sum(), outputs + weights, allow_unused=True)
        weight_grads = dict(zip(sites, (grad.detach() for grad in grads[len(outputs):])))
        grads = grads[: len(outputs)]

    def as_key(name: str) -> SiteKey:
        layer, matrix = name.split("/")
        return int(layer), matrix

    all_keys = output_keys + [f"attention:{k}" for k in attention_modules]
    vjp_by_name = {
        name: (grad if grad is not None else torch.zeros_like(output)).detach()
        for name, output, grad in zip(all_keys, outputs, grads)
    }
    return CapturedBatch(
        lengths=lengths,
        target_ids=targets,
        losses=losses.detach(),
        sites=sites,
        inputs={as_key(name): site_io.inputs[name].detach() for name in site_modules},
        vjps={as_key(name): vjp_by_name[name] for name in site_modules},
        submodule_vjps={as_key(name): vjp_by_name[name] for name in submodule_modules},
        n_layers=adapter.n_layers,
        attention_sites=attention_sites,
        attention_inputs={as_key(name): attn_io.inputs[name].detach() for name in attention_modules},
        attention_vjps={as_key(name): vjp_by_name[f"attention:{name}"] for name in attention_modules},
        projections=projections,
        weight_gradients=weight_grads,
    )
