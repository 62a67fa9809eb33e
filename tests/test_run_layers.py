"""The layer-range forward (``ArchitectureAdapter.run_layers``) against the model's own forward.

Causal tracing and the value optimisation run blocks as a layer range; these tests pin it to the
model's forward on every tiny family, padded or not, and on the sliding-window layers of Gemma 3
(tiny-gemma3: window 4, shorter than the prompts, local and global layers with their own rotary
bases), Qwen2 and Mistral. The bound is float32 round-off of one d-term reduction per layer
(tests/tolerances.py); measured on the tiny models: 0 (the same kernels in the same order).
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from tolerances import assert_close_float32, float32_tolerance

from backlens.data.batching import pad_id
from backlens.models import adapters, masks
from backlens.models.hooks import record_module_io
from backlens.models.loading import load_model
from backlens.tracing.runs import KeyValuePrefix, recorded_run

PROMPTS = ("The Eiffel Tower is located in the city of", "Paris is")
PADDING = ("none", "right", "left")


def _batch(loaded, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask: one prompt (none), or both padded on one side by hand."""
    rows = [loaded.tokenizer(prompt)["input_ids"] for prompt in PROMPTS[: 1 if padding == "none" else 2]]
    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad_id(loaded.tokenizer))
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding != "left" else slice(longest - len(row), longest)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


@torch.no_grad()
def _block_outputs(loaded, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output in the model's own forward (its masks, positions and rotary tables)."""
    blocks = {str(i): block for i, block in enumerate(loaded.adapter.blocks)}
    with record_module_io(blocks, inputs=False) as record:
        loaded.model(input_ids=ids, attention_mask=mask)
    return [record.outputs[str(i)] for i in range(len(blocks))]


def _assert_equal_at_real_tokens(loaded, actual, expected, mask, chain):
    real = mask.bool()
    assert_close_float32(actual[real], expected[real], reduction=loaded.adapter.unembedding.shape[1], chain=chain)


@pytest.mark.parametrize("padding", PADDING)
def test_run_layers_over_every_layer_equals_the_model_forward(tiny_model, padding):
    """Right padding as the value optimisation pads (no padding mask: the causal mask keeps real
    tokens from later pads); left padding with ``padding_mask``, as the model's attention_mask."""
    adapter = tiny_model.adapter
    ids, mask = _batch(tiny_model, padding)
    expected = _block_outputs(tiny_model, ids, mask)
    with torch.no_grad():
        entering = adapter.residual_input(adapter.token_embeddings(ids))
        hidden = adapter.run_layers(entering, 0, adapter.n_layers, padding_mask=mask if padding == "left" else None)
    _assert_equal_at_real_tokens(tiny_model, hidden, expected[-1], mask, adapter.n_layers)


@pytest.mark.parametrize("padding", PADDING)
@pytest.mark.parametrize("start,end", [(1, 3), (2, 4), (3, 4)])
def test_gemma3_sub_ranges_fed_from_recorded_states_equal_the_model_forward(tiny_gemma3, padding, start, end):
    """Ranges starting in a local layer, crossing the global layer 2, or made of one local layer."""
    adapter = tiny_gemma3.adapter
    local, full = "sliding_attention", "full_attention"
    assert adapter.attention_types() == (local, local, full, local)
    ids, mask = _batch(tiny_gemma3, padding)
    outputs = _block_outputs(tiny_gemma3, ids, mask)
    with torch.no_grad():
        hidden = adapter.run_layers(outputs[start - 1], start, end, padding_mask=mask if padding == "left" else None)
    _assert_equal_at_real_tokens(tiny_gemma3, hidden, outputs[end - 1], mask, end - start)


def test_gemma3_suffix_beyond_the_window_from_a_cached_prefix(tiny_gemma3):
    """Tracing's restored runs: positions split.. from the keys/values of positions ..split-1, with
    split (6) past the window (4), so the local layers must drop the oldest cached positions."""
    adapter = tiny_gemma3.adapter
    ids, _ = _batch(tiny_gemma3, "none")
    run = recorded_run(adapter, adapter.token_embeddings(ids), answer_id=0)
    split = 6
    assert tiny_gemma3.model.config.sliding_window < split < ids.shape[1]
    prefix = KeyValuePrefix(
        {i: k[:, :, :split] for i, k in run.keys.items()}, {i: v[:, :, :split] for i, v in run.values.items()}
    )
    for start in range(adapter.n_layers):
        suffix = adapter.run_layers(
            run.residual[start][:, split:], start, adapter.n_layers, first_position=split, key_values=prefix
        )
        # Attention over a cached prefix sums the same terms in another order, once per layer.
        assert_close_float32(suffix, run.residual[-1][:, split:], reduction=adapter.unembedding.shape[1],
                             chain=adapter.n_layers - start)


def test_gemma3_windows_and_rotary_tables_decide_the_result(tiny_gemma3, monkeypatch):
    """What the equalities above rest on: a causal mask without the window in the local layers, or
    the global rotary table in every layer, moves the output far beyond the bound."""
    adapter = tiny_gemma3.adapter
    ids, mask = _batch(tiny_gemma3, "none")
    expected = _block_outputs(tiny_gemma3, ids, mask)[-1]
    entering = adapter.residual_input(adapter.token_embeddings(ids))
    _, atol = float32_tolerance(expected, reduction=adapter.unembedding.shape[1], chain=adapter.n_layers)
    window = tiny_gemma3.model.config.sliding_window
    with monkeypatch.context() as patch:
        patch.setattr(adapters, "attention_mask", lambda kind, *args: masks.attention_mask("full_attention", *args))
        unwindowed = adapter.run_layers(entering, 0, adapter.n_layers)
    torch.testing.assert_close(unwindowed[:, :window], expected[:, :window])  # the window covers these alone
    assert float((unwindowed - expected).abs().max()) > 1e3 * atol
    block_kwargs = adapter._block_kwargs
    with monkeypatch.context() as patch:
        patch.setattr(adapter, "_block_kwargs", lambda hidden, ids, kind: block_kwargs(hidden, ids, "full_attention"))
        one_table = adapter.run_layers(entering, 0, adapter.n_layers)
    assert float((one_table - expected).abs().max()) > 1e3 * atol


def test_tiny_gemma3_has_the_gemma3_parts_the_adapter_handles(tiny_gemma3):
    """The tiny model is Gemma-3-shaped where it matters: scaled embeddings, tied unembedding,
    post-feed-forward norms, two layer types with two rotary bases."""
    model, adapter = tiny_gemma3.model, tiny_gemma3.adapter
    d = adapter.unembedding.shape[1]
    assert adapter.input_embedding_scale == pytest.approx(d**0.5)
    ids = torch.tensor([[11, 12]])
    torch.testing.assert_close(adapter.token_embeddings(ids), adapter.input_embedding[ids] * d**0.5)
    assert adapter.unembedding.data_ptr() == adapter.input_embedding.data_ptr()
    assert all(hasattr(block, "post_feedforward_layernorm") for block in adapter.blocks)
    bases = {kind: params["rope_theta"] for kind, params in model.config.rope_parameters.items()}
    assert bases["sliding_attention"] != bases["full_attention"]


@pytest.mark.parametrize(
    "overrides",
    [
        # Qwen2's local layers are those from max_window_layers on: layers 1 and 2 of 3.
        ("model=tiny-qwen2", "model.config.use_sliding_window=true", "+model.config.sliding_window=4",
         "+model.config.max_window_layers=1"),
        # Mistral has no layer_types: its sliding_window applies to every layer.
        ("model=tiny-llama", "model.architecture=mistral", "+model.config.sliding_window=4"),
    ],
    ids=["qwen2", "mistral"],
)
def test_other_sliding_window_families_run_as_a_layer_range(overrides):
    loaded = load_model(compose_config(*overrides).model)
    adapter = loaded.adapter
    assert "sliding_attention" in adapter.attention_types()
    ids, mask = _batch(loaded, "left")
    expected = _block_outputs(loaded, ids, mask)[-1]
    with torch.no_grad():
        hidden = adapter.run_layers(adapter.token_embeddings(ids), 0, adapter.n_layers, padding_mask=mask)
    _assert_equal_at_real_tokens(loaded, hidden, expected, mask, adapter.n_layers)


def test_families_without_a_layer_range_forward_refuse_by_name():
    """Gemma 2 scales its embeddings in the model's forward, which residual_input does not; the value
    optimisation then runs the whole model (keys_values._ValueForward)."""
    loaded = load_model(compose_config("model=tiny-gemma3", "model.architecture=gemma2").model)
    with pytest.raises(NotImplementedError, match=r"model_type='gemma2'"):
        loaded.adapter.run_layers(torch.zeros(1, 2, 32), 0, 1)
