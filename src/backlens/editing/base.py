"""What every editing method provides to the evaluation loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from backlens.editing.requests import EditRequest
from backlens.models.loading import LoadedModel
from backlens.models.sites import LinearSite


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's FF2 change as factors: ``site.gradient_from_factors(u_In[None], v_Out[None])``
    (u v^T in (in, out) terms) is what was added to the weight. ROME: u is C^-1 k* / |C^-1 k*|,
    v = (v* - W k) / (k . u); MEMIT: u is the adjusted key, v this layer's share of the residual."""

    layer: int
    u_In: torch.Tensor
    v_Out: torch.Tensor

    def weight_change(self, site: LinearSite) -> torch.Tensor:
        """The change in ``site``'s weight layout (the site must be this layer's FF2)."""
        return site.gradient_from_factors(self.u_In[None], self.v_Out[None])


@dataclass(frozen=True)
class FactoredUpdate:
    """What a key/value editor (ROME, MEMIT) computed: the per-layer factors, the optimised target
    ``v_star_Out`` (ROME: the MLP output v*; MEMIT: the block output z*) and the value optimisation's
    total loss at every forward pass (``losses[-1]``: where it stopped, below ``stop_below_loss``
    or at the last of ``v_num_grad_steps``)."""

    layers: tuple[LayerUpdate, ...]
    v_star_Out: torch.Tensor
    losses: tuple[float, ...]


class Editor(ABC):
    """Applies one edit in place; the evaluation loop snapshots and restores ``edited_parameters``."""

    # Why the method cannot edit some models, in one line (None: it edits any model). A model's run
    # leaves the method out (editing.refused_methods) and its Table 1 names it with this reason.
    refusal_reason: ClassVar[str | None] = None

    @classmethod
    def refuses(cls, loaded: LoadedModel, hparams: Mapping) -> bool:
        """Whether this editor refuses ``loaded`` with ``hparams`` (checked on the model, without
        building the editor: no statistics or templates needed)."""
        return False

    def __init__(self, loaded: LoadedModel, hparams: Mapping):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.adapter = loaded.adapter
        self.hparams = hparams

    @property
    def device(self) -> torch.device:
        """The loaded model's device (LoadedModel.device, its one home)."""
        return self.loaded.device

    @abstractmethod
    def edited_parameters(self) -> list[nn.Parameter]:
        """Every parameter ``apply`` may change."""

    @abstractmethod
    def apply(self, request: EditRequest) -> dict[str, object]:
        """Edit the weights in place for ``request``; return facts about the edit (JSON-able)."""

    def apply_with_update(self, request: EditRequest) -> tuple[dict[str, object], FactoredUpdate | None]:
        """``apply``, and the update's factors where the method computes them (ROME, MEMIT; else None)."""
        return self.apply(request), None

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """(1, P) token ids of ``prompt`` on the model's device."""
        return torch.tensor([self.tokenizer(prompt)["input_ids"]], device=self.device)


class NoEdit(Editor):
    """The original model (Table 1's first row)."""

    def edited_parameters(self) -> list[nn.Parameter]:
        return []

    def apply(self, request: EditRequest) -> dict[str, object]:
        return {}
