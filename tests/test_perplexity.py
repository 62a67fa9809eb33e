"""Table 7's perplexity with the blocks below an edit not recomputed (``HeldoutPerplexity``) against
the whole forward (``perplexity``) on every tiny family.

Bound: float32, the same modules on the same inputs, at most grouped otherwise (the layer-range
forward against the model's, the adapter's final norm and unembedding against the model's head).
Each logit is then a chain of reductions of at most d_ff terms through every block and the
unembedding, and the loss one more (tests/tolerances.py: chain n_layers + 2, reduction d_ff),
compared on the mean NLL (log perplexity); the loss's own sum over the vocabulary adds sqrt(V) eps
absolute (< 3e-5 for V = 50k), inside the bound's absolute part (relative to log perplexity, ~log V).
Measured on the five tiny models, edits in the middle block and in block 0: 0 (bit-identical); the
edits move the log perplexity by 4e-3 to 3e-2, 10-60x the bound, so the checks below can fail.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from test_editing_methods import EVALUATION, REQUEST
from tolerances import assert_close_float32

from backlens.editing.base import Editor, NoEdit
from backlens.editing.evaluation import CaseLog, evaluate_editor
from backlens.editing.perplexity import HeldoutPerplexity, perplexity
from backlens.editing.weights import restored_after

# 4 blocks of 16 tokens in batches of 3: several batches, the last one short.
N_BLOCKS, BLOCK_TOKENS, BATCH = 4, 16, 3
# The change, in standard deviations of the weight it is added to: large enough that a random
# model's near-uniform next-token distribution moves far beyond the bound (asserted below).
CHANGE_SCALE = 30.0


def _blocks(loaded) -> torch.Tensor:
    vocab = loaded.adapter.input_embedding.shape[0]
    return torch.randint(0, vocab, (N_BLOCKS, BLOCK_TOKENS), generator=torch.Generator().manual_seed(0))


def _assert_same_perplexity(loaded, actual: float, expected: float) -> None:
    d_ff = loaded.adapter.ff2_site(0).in_features
    assert_close_float32(math.log(actual), math.log(expected), reduction=d_ff, chain=loaded.adapter.n_layers + 2)


class AddToWeight(Editor):
    """Adds a fixed seeded change to one parameter; ``scale`` 0: a skipped edit (nothing changes)."""

    def __init__(self, loaded, parameter: torch.nn.Parameter, scale: float = CHANGE_SCALE):
        super().__init__(loaded, {})
        self.parameter = parameter
        noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1))
        self.change = (scale * float(parameter.detach().float().std()) * noise).to(parameter)
        self.skips = scale == 0

    def edited_parameters(self) -> list[torch.nn.Parameter]:
        return [self.parameter]

    def apply(self, request) -> dict[str, object]:
        if self.skips:
            return {"skipped": True}
        with torch.no_grad():
            self.parameter.add_(self.change)
        return {}


@pytest.mark.parametrize("where", ["middle", "first"])
def test_from_the_edited_block_equals_the_whole_forward(tiny_model, where):
    adapter = tiny_model.adapter
    layer = adapter.n_layers // 2 if where == "middle" else 0
    editor = AddToWeight(tiny_model, adapter.ff2_site(layer).weight)
    blocks = _blocks(tiny_model)
    heldout = HeldoutPerplexity(editor, blocks, BATCH)
    unedited = perplexity(editor, blocks, BATCH)
    heldout.entering(layer + 1)  # the stream above the edit, cached before it: a wrong start below
    with restored_after(editor.edited_parameters()) as snapshot:
        editor.apply(REQUEST)
        changed = snapshot.changed_parameters()
        assert heldout.start_block(changed) == layer
        cached, full = heldout(changed), perplexity(editor, blocks, BATCH)
        wrong = heldout.from_block(layer + 1)
    _assert_same_perplexity(tiny_model, cached, full)
    # The check sees an edit: the edited perplexity is not the unedited one, and starting above the
    # edited block (which misses the edit) is caught.
    for missed in (unedited, wrong):
        with pytest.raises(AssertionError):
            _assert_same_perplexity(tiny_model, missed, full)
    # A second case of the editor reuses the cached stream and gets the same number.
    with restored_after(editor.edited_parameters()) as snapshot:
        editor.apply(REQUEST)
        assert heldout(snapshot.changed_parameters()) == cached


def test_nothing_changed_returns_the_unedited_value_computed_once(tiny_model):
    editor = NoEdit(tiny_model, {})
    blocks = _blocks(tiny_model)
    heldout = HeldoutPerplexity(editor, blocks, BATCH)
    unedited = heldout([])
    assert unedited == perplexity(editor, blocks, BATCH)  # the same code on the same weights: bit for bit
    # Cached, not recomputed: with the weights changed behind its back it still answers the first value.
    site = tiny_model.adapter.ff2_site(0)
    with restored_after([site.weight]):
        with torch.no_grad():
            site.weight.mul_(-3.0)
        assert heldout([]) == unedited
        assert perplexity(editor, blocks, BATCH) != unedited


def test_a_change_outside_every_block_runs_the_whole_forward(tiny_model):
    adapter = tiny_model.adapter
    editor = AddToWeight(tiny_model, adapter.model.get_input_embeddings().weight)
    blocks = _blocks(tiny_model)
    heldout = HeldoutPerplexity(editor, blocks, BATCH)
    unedited = heldout([])
    heldout.entering(1)  # a stale stream a wrong start would read
    with restored_after(editor.edited_parameters()) as snapshot:
        editor.apply(REQUEST)
        changed = snapshot.changed_parameters()
        assert heldout.start_block(changed) is None
        value = heldout(changed)
        assert value == perplexity(editor, blocks, BATCH)
    with pytest.raises(AssertionError):
        _assert_same_perplexity(tiny_model, unedited, value)


def test_lowest_block_of_parameters(tiny_model):
    adapter = tiny_model.adapter
    last = adapter.n_layers - 1
    attention = adapter.attention_projections(1)[0].site.weight
    assert adapter.lowest_block([adapter.ff2_site(last).weight, attention]) == 1
    assert adapter.lowest_block([adapter.ff2_site(last).weight]) == last
    assert adapter.lowest_block([]) == adapter.n_layers
    norm = next(adapter.final_norm.parameters())
    assert adapter.lowest_block([adapter.ff2_site(last).weight, norm]) is None
    assert adapter.lowest_block([adapter.unembedding]) is None


def test_evaluate_editor_rows_equal_the_whole_forward(tiny_model, tmp_path: Path):
    """The rule's path: one cache across an editor's cases; a skipped edit and the unedited row get
    the unedited value itself, an edit the whole forward's within the bound."""
    adapter = tiny_model.adapter
    blocks = _blocks(tiny_model)
    requests = [dataclasses.replace(REQUEST, case_id=i) for i in range(2)]
    site = adapter.ff2_site(adapter.n_layers // 2)
    editors = {"edit": AddToWeight(tiny_model, site.weight), "skipped": AddToWeight(tiny_model, site.weight, 0.0),
               "none": NoEdit(tiny_model, {})}
    unedited = perplexity(editors["none"], blocks)
    with restored_after([site.weight]):
        editors["edit"].apply(REQUEST)
        edited = perplexity(editors["edit"], blocks)
    for name, editor in editors.items():
        rows = evaluate_editor(editor, requests, CaseLog(tmp_path / f"{name}.jsonl", "f"), EVALUATION,
                               generation_case_ids=set(), perplexity_case_ids={0, 1}, perplexity_blocks=blocks,
                               label=name)
        for row in rows:
            if name == "edit":
                _assert_same_perplexity(tiny_model, row["perplexity"], edited)
            else:
                assert row["perplexity"] == unedited
