"""Architecture adapters on tiny random GPT-2 and Llama models."""

import pytest
import torch
from torch import nn

from backlens.models.adapters import GatedMLPAdapter, GPT2Adapter
from backlens.models.hooks import record_module_io, replace_outputs
from tolerances import assert_close_float32


def test_gpt2_adapter_discovers_conv1d_mlp(tiny_gpt2):
    adapter = tiny_gpt2.adapter
    assert isinstance(adapter, GPT2Adapter)
    assert adapter.n_layers == 3
    (ff1,) = adapter.ff1_sites(0)
    ff2 = adapter.ff2_site(0)
    assert (ff1.matrix, ff1.layout, ff1.in_features, ff1.out_features) == ("ff1", "in_out", 32, 64)
    assert (ff2.matrix, ff2.layout, ff2.in_features, ff2.out_features) == ("ff2", "in_out", 64, 32)
    assert ff1.module is tiny_gpt2.model.transformer.h[0].mlp.c_fc
    assert adapter.describe()["final_norm_bias"] is True


def test_llama_adapter_discovers_gated_mlp(tiny_llama):
    adapter = tiny_llama.adapter
    assert isinstance(adapter, GatedMLPAdapter)
    assert adapter.n_layers == 3
    gate, up = adapter.ff1_sites(2)
    ff2 = adapter.ff2_site(2)
    assert [s.matrix for s in (gate, up, ff2)] == ["ff1_gate", "ff1_up", "ff2"]
    assert all(s.layout == "out_in" and isinstance(s.module, nn.Linear) for s in (gate, up, ff2))
    assert (gate.in_features, gate.out_features, ff2.in_features, ff2.out_features) == (32, 48, 48, 32)
    assert adapter.describe()["final_norm"] == "LlamaRMSNorm"


def test_logit_lens_of_last_residual_equals_model_logits(tiny_model):
    adapter, tokenizer = tiny_model.adapter, tiny_model.tokenizer
    inputs = tokenizer(["Obama grew up in", "Jack Dorsey founded the company"], return_tensors="pt", padding=True)
    with torch.no_grad(), record_module_io({"last": adapter.blocks[-1]}, inputs=False) as io:
        logits = tiny_model.model(**inputs).logits
    lens_logits = adapter.logit_lens(io.outputs["last"])
    # Same final norm and unembedding, applied outside the model: reductions over d and over the
    # hidden state's norm, in another kernel.
    assert_close_float32(lens_logits, logits, reduction=adapter.unembedding.shape[1], chain=2)


def test_gradient_from_factors_matches_autograd_in_module_layout(tiny_model):
    site = tiny_model.adapter.ff2_site(1)
    inputs = torch.randn(5, site.in_features, dtype=torch.float64)
    vjps = torch.randn(5, site.out_features, dtype=torch.float64)
    weight = site.weight.detach().double().requires_grad_(True)
    outputs = inputs @ weight if site.layout == "in_out" else inputs @ weight.T
    (grad,) = torch.autograd.grad(outputs, weight, grad_outputs=vjps)
    torch.testing.assert_close(site.gradient_from_factors(inputs, vjps), grad)


def test_hooks_remove_themselves_even_after_an_error(tiny_model):
    block = tiny_model.adapter.blocks[0]
    before = len(block._forward_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with record_module_io({"b": block}), replace_outputs({block: lambda t: t * 0}):
            assert len(block._forward_hooks) == before + 2
            raise RuntimeError("boom")
    assert len(block._forward_hooks) == before


def test_replace_outputs_changes_the_forward_pass(tiny_model):
    ids = tiny_model.tokenizer("Obama grew up in", return_tensors="pt").input_ids
    with torch.no_grad():
        clean = tiny_model.model(ids).logits
        with replace_outputs({tiny_model.adapter.mlp(0): torch.zeros_like}):
            patched = tiny_model.model(ids).logits
        again = tiny_model.model(ids).logits
    assert not torch.allclose(clean, patched)
    torch.testing.assert_close(clean, again)
