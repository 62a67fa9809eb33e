"""What every editing method provides to the evaluation loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import nn

from backlens.editing.requests import EditRequest
from backlens.models.loading import LoadedModel


class Editor(ABC):
    """Applies one edit in place; the evaluation loop snapshots and restores ``edited_parameters``."""

    def __init__(self, loaded: LoadedModel, hparams: Mapping):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.adapter = loaded.adapter
        self.device = loaded.device
        self.hparams = hparams

    @abstractmethod
    def edited_parameters(self) -> list[nn.Parameter]:
        """Every parameter ``apply`` may change."""

    @abstractmethod
    def apply(self, request: EditRequest) -> dict[str, object]:
        """Edit the weights in place for ``request``; return facts about the edit (JSON-able)."""

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """(1, P) token ids of ``prompt`` on the model's device."""
        return torch.tensor([self.tokenizer(prompt)["input_ids"]], device=self.device)


class NoEdit(Editor):
    """The original model (Table 1's first row)."""

    def edited_parameters(self) -> list[nn.Parameter]:
        return []

    def apply(self, request: EditRequest) -> dict[str, object]:
        return {}
