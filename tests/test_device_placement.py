"""Device mix-ups caught without a GPU (issue 22): the tensor parts of the analyses run with the model on
the ``meta`` device under ``one_device_per_op`` (tests/device_check.py), as they would on CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, require_shared
from device_check import on_meta, one_device_per_op

from backlens.analysis.anisotropy import VARIANTS, self_rank_tensors
from backlens.models.loading import load_model


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def meta_adapter(request):
    if request.param == "tiny-gpt2":
        require_shared("assets", "gpt2_tokenizer")
    return on_meta(load_model(compose_config(f"model={request.param}").model))


def test_the_mode_catches_a_cpu_index_on_device_logits():
    logits = torch.zeros(2, 5, device="meta")
    with pytest.raises(AssertionError, match="mixes devices"), one_device_per_op():
        logits.gather(1, torch.zeros(2, 1, dtype=torch.long))


@pytest.mark.parametrize("variant", VARIANTS)
def test_embedding_anisotropy_stays_on_the_model_device(meta_adapter, variant):
    """The CUDA crash of rule embedding_anisotropy: the token ids were built on the CPU and gathered
    from device logits ("index is on cpu, different from other tensors on cuda:0")."""
    with one_device_per_op():
        values = self_rank_tensors(meta_adapter, torch.tensor([0, 3, 7]), variant)
    assert {tensor.device.type for tensor in values.values()} == {"meta"}
    assert all(tensor.shape == (3,) for tensor in values.values())


def test_table_builders_stay_on_the_model_device(tiny_llama):
    """The tensor parts of the tables (one vocabulary pass, neuron updates, VJP cosines) on a meta twin of a
    captured batch: every op on one device, every result on it."""
    import dataclasses

    from backlens.analysis import gradient_tables, spanning_sets
    from backlens.analysis.capture import capture_gradient_factors

    batch = capture_gradient_factors(tiny_llama.model, tiny_llama.adapter, [[1, 5, 9], [2, 7, 4, 8, 3]], [11, 12],
                                     pad_id=tiny_llama.tokenizer.pad_token_id)
    adapter = on_meta(load_model(compose_config("model=tiny-llama").model))
    meta = {field: {key: value.to("meta") for key, value in getattr(batch, field).items()}
            for field in ("inputs", "vjps", "submodule_vjps")}
    batch = dataclasses.replace(batch, target_ids=batch.target_ids.to("meta"), **meta)
    with one_device_per_op():
        vocabulary, _ = gradient_tables.ff2_vjp_pass(batch, adapter, k=2, excluded_ids=torch.tensor([0], device="meta"),
                                                     ff1_input=adapter.ff1_sites(0)[0].matrix)
        neurons = spanning_sets.neuron_update_tensors(batch, adapter, top_k=2)
        cosines = spanning_sets.vjp_similarity_tensors(batch)
    results = [vocabulary.ranks, vocabulary.top_ids, vocabulary.bottom_logits, *neurons.values(), *cosines]
    assert {tensor.device.type for tensor in results} == {"meta"}
    assert neurons["signed_rank"].shape == (2, adapter.n_layers, 3, 2)
