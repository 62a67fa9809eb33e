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
