"""MEND's training step starts each run at the lowest edited layer (issue 23): the same editor comes out."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from backlens.data.counterfact import PromptWithAnswer
from backlens.editing.base import NoEdit
from backlens.editing.mend_training import train_mend
from backlens.models.adapters import ArchitectureAdapter
from test_editing_methods import REQUEST

# Neighbourhood prompts of different lengths, so the batch is padded.
PADDED = replace(REQUEST, neighborhood_prompts=(
    *REQUEST.neighborhood_prompts,
    PromptWithAnswer("Paris is the capital of", "France"),
    PromptWithAnswer("The official language of the country where Jean Renoir was born is", "French"),
))


def _train(loaded, tmp_path, name: str) -> dict[str, torch.Tensor]:
    n = loaded.adapter.n_layers
    hparams = {"layers": [n - 2, n - 1], "rank": 8, "log_lr_init": -2.0, "train_lr": 1e-2, "train_steps": 3,
               "n_norm_cases": 1, "edit_weight": 1.0, "locality_weight": 1.0, "grad_clip": 10.0,
               "checkpoint_every": 100, "train_threads": 1}
    state = train_mend(NoEdit(loaded, {}), [PADDED], hparams, tmp_path / f"{name}.pt", seed=0)
    return {**state["networks"], "edit_nll": torch.tensor([h["edit_nll"] for h in state["history"]]),
            "locality_kl": torch.tensor([h["locality_kl"] for h in state["history"]])}


def test_training_from_the_lowest_edited_layer_gives_the_whole_forwards_editor(tiny_model, tmp_path, monkeypatch):
    if not tiny_model.adapter.supports_layer_ranges:
        pytest.skip("no layer-range forward: training runs the whole model")
    split = _train(tiny_model, tmp_path, "split")
    # The whole forward each time: what a family without layer ranges runs, and the code before issue 23.
    monkeypatch.setattr(ArchitectureAdapter, "supports_layer_ranges", property(lambda self: False))
    whole = _train(tiny_model, tmp_path, "whole")
    assert split.keys() == whole.keys()
    differing = [key for key in split if not torch.equal(split[key], whole[key])]
    assert not differing, f"differ bit for bit: {differing}"
    assert float(split["locality_kl"][-1]) > 0.0  # the edit reached the neighbourhood prompts
