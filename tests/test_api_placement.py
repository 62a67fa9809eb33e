"""The device and dtype have one home (issue 27): every API entry point takes them for a model given by
name, a loaded model carries its own, and the code below reads them from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from backlens.api import BackwardLens, edit, editor, load, trace
from backlens.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "backlens"


def test_every_entry_point_loads_a_named_model_where_it_is_asked():
    """tiny-llama by name in float64: the editor, the edit and the trace all run on that model."""
    handle = editor("tiny-llama", "shift", dtype="float64", device="cpu")
    assert handle.loaded.dtype == torch.float64 and handle.loaded.device.type == "cpu"
    assert handle.editor.device == handle.loaded.device
    with edit("tiny-llama", "{} is located in", "The Eiffel Tower", " Rome", dtype="float64",
              skip_if_predicted=False) as result:
        assert result.editor.loaded.dtype == torch.float64
        assert all(p.dtype == torch.float64 for p in result.editor.edited_parameters())
    traced = trace("tiny-llama", "The Space Needle is in the city of", "The Space Needle", dtype="float64",
                   noise_samples=1, progress=False)
    assert len(traced.effects)
    assert BackwardLens("tiny-llama", dtype="float64").loaded.dtype == torch.float64


def test_a_loaded_model_keeps_its_own_placement(tiny_llama):
    assert load(tiny_llama) is tiny_llama
    assert load(tiny_llama, device="cpu", dtype="float32") is tiny_llama
    with pytest.raises(UserError, match=r"tiny-llama is loaded on cpu in torch.float32, not cpu in torch.float64"):
        editor(tiny_llama, "shift", dtype="float64")
    with pytest.raises(UserError, match="is loaded on cpu"):
        trace(tiny_llama, "The Space Needle is in the city of", "The Space Needle", dtype="float16", progress=False)


def test_the_code_below_the_api_does_not_rederive_the_device():
    """The five ways the review found (loaded.device, Editor.device, the unembedding's, the input
    embedding's, next(model.parameters())) are down to the loaded model's and the model's own."""
    pattern = re.compile(r"next\([^)]*parameters\(\)\)\.device|(unembedding|input_embedding)\.device")
    offenders = [f"{path.relative_to(SRC)}:{number}" for path in sorted(SRC.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
