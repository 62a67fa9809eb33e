"""On CUDA (marker ``gpu``: ``make test-gpu``; left out of ``make test``): the table builders, an edit and a
trace. The builders' tensor parts run under ``torch.cuda.set_sync_debug_mode("error")``: one projection per
batch and vector kind stays on the device, and the only host copies are the ones after it. (The gradient
ranks are left out of that check: ``torch.linalg.qr`` / ``svdvals`` read LAPACK's status on the host.)

The default DAG on GPT-2 XL's shape (random weights, the real tokenizer; no hub needed), small counts:

    snakemake --cores 1 --config models=[gpt2-xl-random] outputs="analysis tracing" \\
        overrides="device=cuda n_prompts=20 analysis.lemma.n_prompts=2 tracing.n_facts=2 tracing.only_correct=false"

(documented here, not run by the tests: it takes minutes of GPU time.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, require_shared

import reference_tables as old
from backlens.analysis import gradient_tables, spanning_sets
from backlens.analysis.anisotropy import embedding_self_ranks
from backlens.analysis.capture import capture_gradient_factors
from backlens.api.editing import edit
from backlens.api.lens import BackwardLens, special_token_ids
from backlens.api.tracing import trace
from backlens.models.loading import load_model
from test_table_equivalence import CASE_IDS, PROMPTS, TARGETS, assert_same_frames

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make test-gpu)")]


@contextlib.contextmanager
def no_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"], scope="module")
def on_cuda(request):
    require_shared("assets", "gpt2_tokenizer")
    return load_model(compose_config(f"model={request.param}").model, device="cuda")


@pytest.fixture(scope="module")
def captured(on_cuda):
    lens = BackwardLens(on_cuda)
    items = lens.prepare(PROMPTS, TARGETS, case_ids=CASE_IDS)
    batch = capture_gradient_factors(on_cuda.model, on_cuda.adapter, [list(i.input_ids) for i in items],
                                     [i.target_id for i in items], pad_id=on_cuda.tokenizer.pad_token_id)
    return on_cuda, lens, items, batch


def test_table_builders_stay_on_the_device(captured):
    loaded, lens, _, batch = captured
    adapter = loaded.adapter
    excluded = torch.tensor(special_token_ids(loaded.tokenizer), dtype=torch.long, device="cuda")
    with no_sync():
        vocabulary, _ = gradient_tables.ff2_vjp_pass(batch, adapter, k=3, excluded_ids=excluded,
                                                     ff1_input=adapter.ff1_sites(0)[0].matrix)
        neurons = spanning_sets.neuron_update_tensors(batch, adapter, top_k=3)
        tokens, layers = spanning_sets.vjp_similarity_tensors(batch)
    tensors = [vocabulary.ranks, vocabulary.top_ids, *neurons.values(), tokens, layers]
    assert {tensor.device.type for tensor in tensors} == {"cuda"}


def test_tables_on_cuda_equal_todays_builders(captured):
    loaded, lens, items, batch = captured
    adapter = loaded.adapter
    assert_same_frames(gradient_tables.ff2_target_rank_rows(batch, CASE_IDS, adapter),
                       pd.DataFrame(old.ff2_target_rank_rows(batch, CASE_IDS, adapter)), {})
    new = spanning_sets.neuron_update_rows(batch, CASE_IDS, adapter, top_k=3)
    reference = pd.DataFrame(old.neuron_update_rows(batch, CASE_IDS, adapter, top_k=3))
    keys = ["case_id", "layer", "matrix", "neuron", "norm_order", "position"]
    assert new[keys].values.tolist() == reference[keys].values.tolist()
    np.testing.assert_allclose(new.cosine, reference.cosine, atol=1e-5, equal_nan=True)
    assert (new.target_rank_of_update != reference.target_rank_of_update).mean() < 0.05
    result = lens.run_prepared(items, batch_size=4, tables=("gradient_ranks", "vjp_norms", "target_ranks",
                                                            "neuron_updates", "vjp_similarity", "lens_cells",
                                                            "lens_tokens"), progress=False)
    assert all(len(table) for table in result.tables.values())


def test_embedding_anisotropy_on_cuda(on_cuda):
    ranks = embedding_self_ranks(on_cuda.adapter, [0, 5, 17, 300], batch_size=2)
    assert len(ranks) == 8 and ranks["rank"].ge(0).all()


def test_an_edit_on_cuda_restores_the_weights(on_cuda):
    before = {name: p.detach().clone() for name, p in on_cuda.model.named_parameters()}
    with edit(on_cuda, "{} is located in", "The Eiffel Tower", " Rome", method="shift",
              skip_if_predicted=False) as result:
        assert result.facts
    assert all(torch.equal(before[name], p) for name, p in on_cuda.model.named_parameters())


def test_a_trace_on_cuda(on_cuda):
    traced = trace(on_cuda, "The Space Needle is in the city of", "The Space Needle", " Seattle", progress=False,
                   noise_samples=2)
    assert len(traced.effects) and np.isfinite(traced.effects.select_dtypes("number").to_numpy(float)).all()
