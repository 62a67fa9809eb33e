"""Architecture adapters: the only code that knows a model family's module names.

Everything else in the project asks an adapter for "the FF2 matrix of layer 7" or "the
final norm", never for ``mlp.c_proj`` or ``down_proj``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

WeightLayout = Literal["in_out", "out_in"]


@dataclass(frozen=True)
class LinearSite:
    """One linear map y_i = W x_i applied at every prompt position.

    ``matrix`` names its role: ``ff1`` (GPT-2), ``ff1_gate`` / ``ff1_up`` (gated MLPs)
    or ``ff2``. ``layout`` says how ``module.weight`` stores W: GPT-2's Conv1D keeps
    (in, out), ``nn.Linear`` keeps (out, in).
    """

    layer: int
    matrix: str
    module: nn.Module
    layout: WeightLayout

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def in_features(self) -> int:
        return self.weight.shape[0 if self.layout == "in_out" else 1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1 if self.layout == "in_out" else 0]

    def gradient_from_factors(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> torch.Tensor:
        """Lemma 4.1: dL/dW = sum_i delta_i x_i^T, returned in the module's weight layout."""
        if self.layout == "in_out":
            return inputs_PxIn.T @ vjps_PxOut
        return vjps_PxOut.T @ inputs_PxIn


class ArchitectureAdapter(ABC):
    """Uniform access to the parts of a decoder-only transformer the analyses need."""

    families: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks; block i's output is the residual stream after layer i."""

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @abstractmethod
    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        """FF1 matrices (GPT-2: one; gated MLPs: gate and up)."""

    @abstractmethod
    def ff2_site(self, layer: int) -> LinearSite:
        """The FF2 (value) matrix, whose input is the d_ff activation."""

    def linear_sites(self, layer: int) -> tuple[LinearSite, ...]:
        return (*self.ff1_sites(layer), self.ff2_site(layer))

    @abstractmethod
    def attention(self, layer: int) -> nn.Module:
        """Module whose (first) output is the attention contribution to the residual."""

    @abstractmethod
    def mlp(self, layer: int) -> nn.Module:
        """Module whose (first) output is the MLP contribution to the residual."""

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module:
        """The norm applied to the last residual stream before unembedding."""

    @property
    def input_embedding(self) -> torch.Tensor:
        """(V, d) input embedding matrix."""
        return self.model.get_input_embeddings().weight

    @property
    def unembedding(self) -> torch.Tensor:
        """(V, d) unembedding matrix."""
        return self.model.get_output_embeddings().weight

    @property
    def unembedding_bias(self) -> torch.Tensor | None:
        return getattr(self.model.get_output_embeddings(), "bias", None)

    def logit_lens(self, hidden_Nxd: torch.Tensor) -> torch.Tensor:
        """Project vectors through the model's own final norm and unembedding: (..., d) -> (..., V)."""
        normed = self.final_norm(hidden_Nxd.to(self.unembedding.dtype))
        logits = normed @ self.unembedding.T
        if self.unembedding_bias is not None:
            logits = logits + self.unembedding_bias
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def describe(self) -> dict[str, object]:
        """Facts worth logging next to results: family, layers, norm type and eps."""
        norm = self.final_norm
        return {
            "family": self.families[0],
            "n_layers": self.n_layers,
            "final_norm": type(norm).__name__,
            "final_norm_eps": float(getattr(norm, "eps", getattr(norm, "variance_epsilon", float("nan")))),
            "final_norm_bias": getattr(norm, "bias", None) is not None,
            "d_model": int(self.unembedding.shape[1]),
            "vocab_size": int(self.unembedding.shape[0]),
        }


class GPT2Adapter(ArchitectureAdapter):
    """GPT-2: Conv1D ``mlp.c_fc`` / ``mlp.c_proj`` store W as (in, out)."""

    families = ("gpt2",)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.h

    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        return (LinearSite(layer, "ff1", self.blocks[layer].mlp.c_fc, "in_out"),)

    def ff2_site(self, layer: int) -> LinearSite:
        return LinearSite(layer, "ff2", self.blocks[layer].mlp.c_proj, "in_out")

    def attention(self, layer: int) -> nn.Module:
        return self.blocks[layer].attn

    def mlp(self, layer: int) -> nn.Module:
        return self.blocks[layer].mlp

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f


class GatedMLPAdapter(ArchitectureAdapter):
    """Llama / Gemma / Mistral / Qwen2: ``nn.Linear`` gate_proj, up_proj, down_proj (out, in)."""

    families = ("llama", "gemma", "gemma2", "gemma3_text", "mistral", "qwen2")

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers

    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        mlp = self.blocks[layer].mlp
        return (
            LinearSite(layer, "ff1_gate", mlp.gate_proj, "out_in"),
            LinearSite(layer, "ff1_up", mlp.up_proj, "out_in"),
        )

    def ff2_site(self, layer: int) -> LinearSite:
        return LinearSite(layer, "ff2", self.blocks[layer].mlp.down_proj, "out_in")

    def attention(self, layer: int) -> nn.Module:
        return self.blocks[layer].self_attn

    def mlp(self, layer: int) -> nn.Module:
        return self.blocks[layer].mlp

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm


_ADAPTERS: tuple[type[ArchitectureAdapter], ...] = (GPT2Adapter, GatedMLPAdapter)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """Pick the adapter from ``model.config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    for adapter_class in _ADAPTERS:
        if model_type in adapter_class.families:
            return adapter_class(model)
    supported = sorted(f for cls in _ADAPTERS for f in cls.families)
    raise ValueError(
        f"no architecture adapter for model_type={model_type!r}; supported: {', '.join(supported)}. "
        "Add a subclass of ArchitectureAdapter in backlens/models/adapters.py."
    )
