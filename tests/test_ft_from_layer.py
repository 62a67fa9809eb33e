"""FT-L's steps start at the fine-tuned layer (issue 23): the same weights come out as with the whole forward."""

from __future__ import annotations

import pytest
import torch

from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.weights import restored_after
from backlens.models.adapters import ArchitectureAdapter
from test_editing_methods import REQUEST


def _fine_tuned(loaded, layer: int) -> list[torch.Tensor]:
    editor = ConstrainedFineTuning(loaded, {"layer": layer, "num_steps": 4, "lr": 5e-3, "weight_decay": 0.0,
                                            "norm_constraint": 5e-2, "stop_below_loss": 1e-2})
    with restored_after(editor.edited_parameters()):
        editor.apply(REQUEST)
        return [p.detach().clone() for p in editor.edited_parameters()]


@pytest.mark.parametrize("where", ["top", "first"])
def test_fine_tuning_from_its_layer_gives_the_whole_forwards_weights(tiny_model, where, monkeypatch):
    if not tiny_model.adapter.supports_layer_ranges:
        pytest.skip("no layer-range forward: FT runs the whole model")
    layer = tiny_model.adapter.n_layers - 2 if where == "top" else 0
    before = [p.detach().clone() for p in ConstrainedFineTuning(tiny_model, {"layer": layer}).edited_parameters()]
    split = _fine_tuned(tiny_model, layer)
    monkeypatch.setattr(ArchitectureAdapter, "supports_layer_ranges", property(lambda self: False))
    whole = _fine_tuned(tiny_model, layer)
    assert all(torch.equal(a, b) for a, b in zip(split, whole))
    assert not all(torch.equal(a, b) for a, b in zip(split, before))  # the steps changed the weights
