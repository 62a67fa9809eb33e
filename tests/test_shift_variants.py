"""Forward pass shift variants (issue 17): centred value, whitened key, and the anisotropy diagnostic."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from backlens.analysis.anisotropy import embedding_self_ranks, sample_token_ids
from backlens.analysis.anisotropy_summary import anisotropy_summary
from backlens.data.segments import first_target_token
from backlens.editing.shift import ForwardPassShift, whitened_key
from backlens.errors import ConfigError
from backlens.models.hooks import record_module_io
from test_editing_methods import REQUEST
from tolerances import assert_close_after_update


def activation_at_last_token(loaded, layer: int) -> torch.Tensor:
    site = loaded.adapter.ff2_site(layer)
    ids = torch.tensor([loaded.tokenizer(REQUEST.prompt)["input_ids"]])
    with torch.no_grad(), record_module_io({"ff2": site.module}, outputs=False) as record:
        loaded.model(input_ids=ids)
    return record.inputs["ff2"][0, -1]


def random_second_moment(d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(4 * d, d, generator=generator, dtype=torch.float64)
    return keys.T @ keys / len(keys)


@pytest.mark.parametrize("direction,key", [("centered", "activation"), ("embedding", "whitened"), ("centered", "whitened")])
def test_variant_adds_eta_outer_key_value(tiny_model, direction, key):
    layer, eta = 1, 0.7
    site = tiny_model.adapter.ff2_site(layer)
    mom2 = random_second_moment(site.in_features)
    editor = ForwardPassShift(tiny_model, {"layer": layer, "eta": eta, "skip_if_predicted": False, "direction": direction,
                                           "key": key}, second_moment=mom2)
    activation = activation_at_last_token(tiny_model, layer)
    embedding = tiny_model.adapter.input_embedding.detach()
    value = embedding[first_target_token(tiny_model.tokenizer, REQUEST.prompt, REQUEST.target_new)]
    if direction == "centered":
        value = value - embedding.mean(0)
    key_vector = activation
    if key == "whitened":
        solved = torch.linalg.solve(mom2, activation.double()).float()
        key_vector = solved * (activation @ activation) / (solved @ activation)
    expected = eta * (torch.outer(key_vector, value) if site.layout == "in_out" else torch.outer(value, key_vector))
    before = site.weight.detach().clone()
    editor.apply(REQUEST)
    try:
        assert_close_after_update(site.weight.detach(), before, expected)
    finally:
        with torch.no_grad():
            site.weight.copy_(before)


def test_whitened_key_writes_as_much_on_the_edit_prompt_as_the_paper_key():
    generator = torch.Generator().manual_seed(1)
    activation = torch.randn(16, generator=generator)
    inverse = torch.linalg.inv(random_second_moment(16, seed=2)).float()
    key = whitened_key(activation, inverse)
    # (k . a) = |a|^2: the update adds eta |a|^2 e_t at the edit prompt, as the paper's key does.
    assert torch.isclose(key @ activation, activation @ activation, rtol=1e-5)
    assert not torch.allclose(key / key.norm(), activation / activation.norm(), atol=1e-3)


@pytest.mark.parametrize("hparams,match", [({"direction": "unembedding"}, "direction='unembedding'"), ({"key": "gradient"}, "key='gradient'")])
def test_unknown_variant_is_a_config_error(tiny_model, hparams, match):
    with pytest.raises(ConfigError, match=match):
        ForwardPassShift(tiny_model, {"layer": 0, "eta": 1.0, **hparams})


def test_self_ranks_match_a_direct_logit_lens(tiny_model):
    ids = sample_token_ids(int(tiny_model.adapter.input_embedding.shape[0]), 50, seed=0)
    ranks = embedding_self_ranks(tiny_model.adapter, ids, batch_size=16)
    assert len(ranks) == 2 * len(ids) and set(ranks["variant"]) == {"raw", "centered"}
    embedding = tiny_model.adapter.input_embedding.detach()
    for variant, probe in (("raw", embedding[ids]), ("centered", embedding[ids] - embedding.mean(0))):
        with torch.no_grad():
            logits = tiny_model.adapter.logit_lens(probe)
        own = logits[torch.arange(len(ids)), ids]
        got = ranks[ranks["variant"] == variant].set_index("token_id").loc[ids]
        assert got["rank"].tolist() == (logits > own[:, None]).sum(1).tolist()
        assert got["top_token_id"].tolist() == logits.argmax(1).tolist()


def test_summary_counts_first_ranks_and_recurring_tops():
    ranks = pd.DataFrame({
        "variant": ["raw"] * 4 + ["centered"] * 4, "token_id": [1, 2, 3, 4] * 2, "rank": [0, 5, 7, 9, 0, 0, 0, 2],
        "top_token": ["a", "x", "x", "x", "a", "b", "c", "x"], "cosine_with_mean": [0.5] * 8})
    summary = anisotropy_summary(ranks).set_index("variant")
    assert summary.loc["raw", "share_rank_first"] == 0.25 and summary.loc["centered", "share_rank_first"] == 0.75
    assert summary.loc["raw", "median_rank"] == 6.0
    assert summary.loc["raw", "recurring_top_tokens"].startswith("'x' 75%")


def test_sample_is_seeded_and_covers_the_vocabulary_when_asked():
    assert sample_token_ids(100, 10, seed=3) == sample_token_ids(100, 10, seed=3)
    assert len(set(sample_token_ids(100, 10, seed=3))) == 10
    assert sample_token_ids(100, None, seed=3) == list(range(100))
