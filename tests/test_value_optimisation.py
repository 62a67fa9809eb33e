"""ROME/MEMIT's value optimisation, reduced to what its loss reads (issue 23), against the
whole-model path it replaced (tests/reference_value_optimisation.py, the code before), and
against itself on whole rows (``from_subject=False``, the path before the per-row suffixes).

Against the whole-model path: both compute the same loss and take the same Adam steps; they differ only in summation order (the
layers above the edit site run from a cached residual through ``run_layers`` under a causal mask
instead of the padded model forward; the unembedding runs on the read positions only). Bounds:
- first step (delta = 0, before any Adam step): the loss is a chain of float32 reductions over
  the vocabulary through the layers, bounded by tests/tolerances.py's vocab_chain.
- after several steps: Adam divides each gradient coordinate by its own running RMS, so round-off
  in near-zero coordinates becomes lr-sized steps (tests/test_golden_rome_memit.py's docstring:
  the original code moves by up to 2.4e-3 from one thread count to another). Measured here, 20
  steps, every family and site, float32 and float64 models (the loss is float32 in both paths):
  losses within 1.6e-4 relative, delta within 7.5e-4 relative. Bounds: 1e-3 and 5e-3, about 6x
  the largest spread measured and within the thread-count spread of the original code.
"""

from __future__ import annotations

import pytest
import torch

from backlens.editing.base import NoEdit
from backlens.editing.keys_values import optimise_target
from backlens.editing.requests import EditRequest
from reference_value_optimisation import reference_optimise_target
from tolerances import assert_close_float32, float32_tolerance, vocab_chain

HPARAMS = {"v_num_grad_steps": 6, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0, "kl_factor": 0.0625,
           "stop_below_loss": 5e-2, "fact_token": "subject_last"}
# Templates of different lengths, so the batch is padded and rows end at different positions.
TEMPLATES = ["{}", "A short one. {}", "Here is a somewhat longer context sentence. {}"]
REQUEST = EditRequest(0, "The Eiffel Tower is located in", "The Eiffel Tower", "the city of Rome", "")
# (site, edited layer, layer the NLL is read from): ROME; MEMIT with the model's logits; MEMIT's v_loss_layer.
SITES = [("mlp", 1, None), ("block", 0, None), ("block", 0, 1)]


MAX_LOSS_RELATIVE = 1e-3
MAX_DELTA_RELATIVE = 5e-3


@pytest.mark.parametrize("at,layer,nll_layer", SITES, ids=["rome", "memit", "memit-loss-layer"])
def test_value_optimisation_equals_the_whole_model_path(tiny_model, at, layer, nll_layer):
    editor = NoEdit(tiny_model, HPARAMS)
    new = optimise_target(editor, REQUEST, TEMPLATES, layer, at, HPARAMS, nll_layer=nll_layer)
    old = reference_optimise_target(editor, REQUEST, TEMPLATES, layer, at, HPARAMS, nll_layer=nll_layer)
    assert_same_optimisation(tiny_model, new, old, layer, loss_relative=MAX_LOSS_RELATIVE,
                             delta_relative=MAX_DELTA_RELATIVE)


def assert_same_optimisation(model, new, other, layer, *, loss_relative, delta_relative):
    """Same number of steps, losses and delta within the given relative bounds, and the values
    below the edit site (the model's padded forward against run_layers, same terms) within float32."""
    assert new.steps == other.steps > 1
    torch.testing.assert_close(torch.tensor(new.losses), torch.tensor(other.losses), rtol=loss_relative, atol=0)
    d_ff = model.adapter.ff2_site(layer).in_features
    assert_close_float32(new.initial, other.initial, reduction=d_ff, chain=layer + 1)
    assert float((new.delta - other.delta).norm() / other.delta.norm()) <= delta_relative


def test_first_step_loss_equals_the_whole_model_path(tiny_model):
    editor = NoEdit(tiny_model, HPARAMS)
    one_step = {**HPARAMS, "v_num_grad_steps": 1}
    new = optimise_target(editor, REQUEST, TEMPLATES, 1, "mlp", one_step)
    old = reference_optimise_target(editor, REQUEST, TEMPLATES, 1, "mlp", one_step)
    rtol, atol = float32_tolerance(torch.tensor(old.losses), **vocab_chain(tiny_model))
    torch.testing.assert_close(torch.tensor(new.losses), torch.tensor(old.losses), rtol=rtol, atol=atol)


# Each step from the edit position on (the default) against the same optimisation on whole rows
# (``from_subject=False``): the same terms, but the rows' suffixes attend to cached prefix
# keys/values left-padded behind a mask, and the linear maps run on fewer rows (another blocking
# of their float32 sums). The first step is that round-off alone (vocab_chain); Adam amplifies it
# in later steps. Measured (6 steps, the five families, three sites; float32 models; float64
# models agree exactly): first loss equal, losses within 2.9e-7 relative, delta within 1.2e-5
# relative (tiny NeoX, ROME's site). Bounds about 30x and 8x those.
FROM_SUBJECT_LOSS_RELATIVE = 1e-5
FROM_SUBJECT_DELTA_RELATIVE = 1e-4


@pytest.mark.parametrize("at,layer,nll_layer", SITES, ids=["rome", "memit", "memit-loss-layer"])
def test_value_optimisation_from_the_edit_position_equals_whole_rows(tiny_model, at, layer, nll_layer):
    editor = NoEdit(tiny_model, HPARAMS)
    new = optimise_target(editor, REQUEST, TEMPLATES, layer, at, HPARAMS, nll_layer=nll_layer)
    rows = optimise_target(editor, REQUEST, TEMPLATES, layer, at, HPARAMS, nll_layer=nll_layer, from_subject=False)
    assert float(rows.delta.norm()) > 0
    rtol, atol = float32_tolerance(torch.tensor(rows.losses[:1]), **vocab_chain(tiny_model))
    torch.testing.assert_close(torch.tensor(new.losses[:1]), torch.tensor(rows.losses[:1]), rtol=rtol, atol=atol)
    assert_same_optimisation(tiny_model, new, rows, layer, loss_relative=FROM_SUBJECT_LOSS_RELATIVE,
                             delta_relative=FROM_SUBJECT_DELTA_RELATIVE)


def test_cached_prefixes_are_left_padded_and_keep_each_rows_positions(tiny_llama):
    """The templates put the edit position at different places, so the step batch mixes prefix
    lengths. A row's suffix must see its own prefix at its own rotary positions; the slots' shared
    range (what run_layers uses without position_ids) moves every row but the longest-prefix one."""
    from backlens.data.batching import pad_batch, pad_id
    from backlens.editing.keys_values import _ValueForward

    tokenizer = tiny_llama.tokenizer
    texts = [t.format(REQUEST.subject) + " is in Rome" for t in TEMPLATES]
    ids, mask = pad_batch([tokenizer(t)["input_ids"] for t in texts], pad_id(tokenizer), tiny_llama.device)
    starts = [int(m.sum()) - 3 for m in mask]
    assert len(set(starts)) == len(starts)
    editor = NoEdit(tiny_llama, HPARAMS)
    last = tiny_llama.adapter.n_layers - 1
    whole, _ = _ValueForward(editor, ids, mask, 1, None, None)(0)
    suffix, _ = _ValueForward(editor, ids, mask, 1, None, starts)(0)
    width = tiny_llama.adapter.unembedding.shape[1]
    for row, start in enumerate(starts):
        n = int(mask[row].sum()) - start
        assert_close_float32(suffix[row, :n].detach(), whole[row, start : start + n].detach(), reduction=width, chain=last + 1)
    shifted = _ValueForward(editor, ids, mask, 1, None, starts)
    first, n_suffix = shifted.suffix["first"], shifted.suffix["positions"].shape[1]
    shifted.suffix["positions"] = torch.arange(first, first + n_suffix, device=ids.device)[None].expand(len(starts), -1)
    moved, _ = shifted(0)
    row = starts.index(min(starts))
    n = int(mask[row].sum()) - starts[row]
    with pytest.raises(AssertionError):
        assert_close_float32(moved[row, :n].detach(), whole[row, starts[row] : starts[row] + n].detach(), reduction=width, chain=last + 1)
