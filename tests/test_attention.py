"""Attention projections (issue 16): Lemma 4.1 per projection on every family, the Q/K/V split of fused
matrices checked against what attention does with them, ranks from factors, and the MLP capture untouched."""

import copy

import pytest
import torch

from backlens.analysis.capture import capture_gradient_factors
from backlens.analysis.ranks import gradient_rank
from backlens.models.adapters import PROJECTIONS
from backlens.models.hooks import record_module_io
from backlens.analysis.lemma import autograd_attention_gradients
from test_capture import PROMPTS, TARGETS, encode
from tolerances import assert_close_float32, vocab_chain



def capture(loaded, ids, targets, **kwargs):
    return capture_gradient_factors(loaded.model, loaded.adapter, ids, targets, pad_id=loaded.tokenizer.pad_token_id,
                                    **kwargs)


def test_lemma_4_1_for_every_projection(tiny_model):
    ids, targets = encode(tiny_model)
    for prompt in range(len(PROMPTS)):
        alone = capture(tiny_model, [ids[prompt]], [targets[prompt]], attention=True)
        reference = autograd_attention_gradients(tiny_model, ids[prompt], targets[prompt])
        assert {name for _, name in alone.projections} == set(PROJECTIONS)
        for (layer, name), projection in alone.projections.items():
            expected = projection.select_weight(reference[(layer, projection.site.matrix)])
            rebuilt = alone.projection_gradient(0, layer, name)
            assert rebuilt.shape == expected.shape
            # The same P-term sum as autograd's, possibly in another order.
            assert_close_float32(rebuilt, expected, reduction=len(ids[prompt]))


def test_batched_attention_factors_equal_one_prompt_at_a_time(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets, attention=True)
    for prompt in range(len(PROMPTS)):
        alone = capture(tiny_model, [ids[prompt]], [targets[prompt]], attention=True)
        for layer, name in batch.projections:
            pairs = zip(batch.projection_factors(prompt, layer, name), alone.projection_factors(0, layer, name))
            for got, want in pairs:
                assert_close_float32(got, want, **vocab_chain(tiny_model))


def test_attention_capture_leaves_the_mlp_factors_bit_identical(tiny_model):
    ids, targets = encode(tiny_model)
    plain = capture(tiny_model, ids, targets)
    both = capture(tiny_model, ids, targets, attention=True)
    assert not plain.projections and both.projections
    assert torch.equal(plain.losses, both.losses)
    for key in plain.sites:
        assert torch.equal(plain.inputs[key], both.inputs[key]) and torch.equal(plain.vjps[key], both.vjps[key])
    for key in plain.submodule_vjps:
        assert torch.equal(plain.submodule_vjps[key], both.submodule_vjps[key])


def test_projection_shapes_follow_the_architecture(tiny_model):
    config = tiny_model.model.config
    d_model = tiny_model.adapter.unembedding.shape[1]
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    key_units = d_model // n_heads * n_kv_heads
    for layer in range(tiny_model.adapter.n_layers):
        projections = {p.name: p for p in tiny_model.adapter.attention_projections(layer)}
        assert [p.out_features for p in projections.values()] == [d_model, key_units, key_units, d_model]
        assert all(p.site.in_features == d_model for p in projections.values())
        fused = [p for p in projections.values() if p.out_ranges is not None]
        if fused:  # the parts of a fused matrix cover its output units once
            units = torch.cat([p.out_index() for p in fused]).sort().values
            assert torch.equal(units, torch.arange(fused[0].site.out_features))


def _zeroed(loaded, layer, names):
    """A copy of the model whose layer-``layer`` units of the named projections (weight and bias) are zero."""
    model = copy.deepcopy(loaded.model)
    adapter = type(loaded.adapter)(model)
    with torch.no_grad():
        for projection in adapter.attention_projections(layer):
            if projection.name not in names:
                continue
            module = projection.site.module
            index = projection.out_index()
            if index is None:
                module.weight.zero_()
            else:
                module.weight.index_fill_(1 if projection.site.layout == "in_out" else 0, index, 0.0)
            bias = getattr(module, "bias", None)
            if bias is not None and index is None:
                bias.zero_()
            elif bias is not None:
                bias.index_fill_(0, index, 0.0)
    return model, adapter


def _attention_output(model, adapter, ids, layer):
    with torch.no_grad(), record_module_io({"attn": adapter.attention(layer)}, inputs=False) as io:
        model(input_ids=torch.tensor([ids]))
    return io.outputs["attn"][0]


def test_projection_split_matches_what_attention_does(tiny_model):
    """Zero queries and zero keys both make every score 0 (uniform attention over the prefix), so the
    outputs agree; zero values leave only W_O's bias. A wrong split of a fused matrix breaks both."""
    ids, _ = encode(tiny_model)
    layer = 1
    outputs = {}
    for names in (("q",), ("k",), ("v",)):
        model, adapter = _zeroed(tiny_model, layer, names)
        outputs[names[0]] = _attention_output(model, adapter, ids[1], layer)
    original = _attention_output(tiny_model.model, tiny_model.adapter, ids[1], layer)
    torch.testing.assert_close(outputs["q"], outputs["k"])
    assert not torch.allclose(outputs["q"], original)
    o_module = tiny_model.adapter.attention_projections(layer)[-1].site.module
    o_bias = getattr(o_module, "bias", None)
    expected = torch.zeros_like(original) if o_bias is None else o_bias.detach().expand_as(original)
    torch.testing.assert_close(outputs["v"], expected)


def test_rank_from_factors_equals_full_rank_per_projection(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets, attention=True)
    for prompt in range(len(PROMPTS)):
        for layer, name in batch.projections:
            inputs, vjps = batch.projection_factors(prompt, layer, name)
            result = gradient_rank(inputs, vjps)
            full = vjps.double().T @ inputs.double()
            assert result.rank == int(torch.linalg.matrix_rank(full, rtol=result.rtol)), (prompt, layer, name)
            assert result.rank <= min(len(ids[prompt]), vjps.shape[1])


def test_first_query_never_reaches_the_loss(tiny_model):
    """Position 0 scores only its own key, and a softmax over one score is constant: W_Q's rank <= P - 1."""
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets, attention=True)
    for prompt in range(len(PROMPTS)):
        for layer in range(batch.n_layers):
            _, vjps = batch.projection_factors(prompt, layer, "q")
            assert vjps[0].norm() <= 1e-5 * vjps.norm(dim=1).max()
            assert gradient_rank(*batch.projection_factors(prompt, layer, "q")).rank <= len(ids[prompt]) - 1


def test_attention_tables_need_an_attention_capture(tiny_gpt2):
    from backlens.analysis.attention_tables import attention_rank_rows

    ids, targets = encode(tiny_gpt2)
    with pytest.raises(ValueError, match="attention=True"):
        attention_rank_rows(capture(tiny_gpt2, ids, targets), [0, 1, 2])


def test_api_builds_the_attention_tables(tiny_llama):
    from backlens.api import BackwardLens
    from backlens.api.lens import ATTENTION_TABLES

    result = BackwardLens(tiny_llama).run(PROMPTS, TARGETS, tables=ATTENTION_TABLES, batch_size=2, progress=False)
    ranks = result.attention_ranks
    assert len(ranks) == len(PROMPTS) * tiny_llama.adapter.n_layers * len(PROJECTIONS)
    assert set(ranks.projection) == set(PROJECTIONS) and (ranks["rank"] <= ranks.n_tokens).all()
    assert set(result.attention_vjp_norms.projection) == set(PROJECTIONS)
    target = result.attention_target_ranks
    assert target["rank"].max() < target.vocab_size.iloc[0]
