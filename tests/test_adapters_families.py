"""Families beyond GPT-2 and Llama: Qwen2 and GPT-NeoX (Pythia), and the refusal of anything else.

The analyses themselves (Lemma 4.1, logit lens, layer-range forward, editing) run on these
families through the ``tiny_model`` fixture; here are the family-specific facts they rely on.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, BloomConfig, OPTConfig

from backlens.errors import UserError
from backlens.models.adapters import (
    GatedMLPAdapter,
    GPTNeoXAdapter,
    UnsupportedArchitectureError,
    adapter_for,
    supported_families,
)
from backlens.models.hooks import record_module_io
from backlens.models.loading import load_model
from conftest import compose_config
from tolerances import assert_close_float32

PROMPT = "The mother tongue of Danielle Darrieux is"


def random_model(config) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


def test_qwen2_uses_the_gated_mlp_adapter_with_biased_qkv(tiny_qwen2):
    adapter = tiny_qwen2.adapter
    assert isinstance(adapter, GatedMLPAdapter) and adapter.n_layers == 3
    block = tiny_qwen2.model.model.layers[2]
    gate, up = adapter.ff1_sites(2)
    ff2 = adapter.ff2_site(2)
    assert (gate.module, up.module, ff2.module) == (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj)
    assert all(site.layout == "out_in" for site in (gate, up, ff2))
    assert (gate.in_features, gate.out_features, ff2.in_features, ff2.out_features) == (32, 48, 48, 32)
    attention = adapter.attention(2)
    assert all(getattr(attention, name).bias is not None for name in ("q_proj", "k_proj", "v_proj"))
    assert adapter.final_norm is tiny_qwen2.model.model.norm
    assert adapter.describe()["family"] == "qwen2" and adapter.describe()["final_norm"] == "Qwen2RMSNorm"


def test_neox_adapter_finds_pythias_modules(tiny_neox):
    adapter, model = tiny_neox.adapter, tiny_neox.model
    assert isinstance(adapter, GPTNeoXAdapter) and adapter.n_layers == 3
    block = model.gpt_neox.layers[1]
    (ff1,) = adapter.ff1_sites(1)
    ff2 = adapter.ff2_site(1)
    assert (ff1.matrix, ff1.module, ff1.layout) == ("ff1", block.mlp.dense_h_to_4h, "out_in")
    assert (ff2.matrix, ff2.module, ff2.layout) == ("ff2", block.mlp.dense_4h_to_h, "out_in")
    assert (ff1.in_features, ff1.out_features, ff2.in_features, ff2.out_features) == (32, 64, 64, 32)
    assert adapter.attention(1) is block.attention and adapter.mlp(1) is block.mlp
    assert adapter.final_norm is model.gpt_neox.final_layer_norm
    # Pythia's unembedding (``embed_out`` in its checkpoints, ``lm_head`` in transformers 5) is
    # its own matrix, not the input embedding.
    assert adapter.input_embedding is model.gpt_neox.embed_in.weight
    assert adapter.unembedding is model.get_output_embeddings().weight
    assert adapter.unembedding.data_ptr() != adapter.input_embedding.data_ptr()
    assert adapter.describe()["family"] == "gpt_neox" and adapter.describe()["final_norm_bias"] is True


def test_neox_parallel_block_adds_attention_and_mlp_read_from_the_same_stream(tiny_neox):
    adapter, model = tiny_neox.adapter, tiny_neox.model
    assert model.config.use_parallel_residual
    layer = 1
    block = adapter.blocks[layer]
    ids = tiny_neox.tokenizer(PROMPT, return_tensors="pt").input_ids
    modules = {"block": block, "attention": adapter.attention(layer), "mlp": adapter.mlp(layer)}
    with torch.no_grad(), record_module_io(modules) as io:
        model(ids)
    stream = io.inputs["block"]
    # The MLP reads the block input, not the stream after attention: that is what makes patching
    # the attention output leave this block's MLP output unchanged.
    with torch.no_grad():
        normed = block.post_attention_layernorm(stream)
    assert_close_float32(io.inputs["mlp"], normed, reduction=stream.shape[-1])
    added = stream + io.outputs["attention"] + io.outputs["mlp"]
    assert_close_float32(io.outputs["block"], added, reduction=3)


def test_neox_sequential_residual_also_runs_layer_by_layer(tiny_neox):
    cfg = compose_config("model=tiny-neox", "model.config.use_parallel_residual=false").model
    sequential = load_model(cfg)
    adapter = sequential.adapter
    ids = sequential.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = sequential.model(ids).logits
    hidden = adapter.run_layers(adapter.residual_input(adapter.token_embeddings(ids)), 0, adapter.n_layers)
    assert_close_float32(adapter.logit_lens(hidden), expected, reduction=adapter.unembedding.shape[1], chain=2)


@pytest.mark.parametrize(
    "config",
    [
        OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                  word_embed_proj_dim=16, max_position_embeddings=32),
        BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2),
    ],
    ids=["opt", "bloom"],
)
def test_unknown_architecture_is_refused_in_one_line_naming_it(config):
    model = random_model(config)
    with pytest.raises(UnsupportedArchitectureError) as refused:
        adapter_for(model)
    message = str(refused.value)
    assert isinstance(refused.value, UserError) and "\n" not in message
    assert f"model_type={config.model_type!r}" in message
    assert all(family in message for family in supported_families())
    assert {"gpt2", "llama", "qwen2", "gpt_neox"} <= set(supported_families())
