"""The tensor table builders (issue 22) against today's, kept in tests/reference_tables.py, on tiny models.

Bound: the same rows in the same order, identical integer and text columns, float columns within the
float32 bound of tests/tolerances.py (the new builders sum in another order: padded batches, one matmul
for all cosines). A target rank counts tokens above the target's logit, so a logit moved by round-off
can move it past tokens whose logits lie within that round-off of the target's: a rank may differ from
today's by at most the number of such near-ties (counted here on today's vectors), and nowhere else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import reference_tables as old
from backlens.analysis import gradient_tables, spanning_sets
from backlens.analysis.capture import capture_gradient_factors
from backlens.api.lens import BackwardLens, LensSettings, special_token_ids
from tolerances import EPS32, MARGIN

PROMPTS = ["Obama grew up in", "The mother tongue of Danielle Darrieux is", "Jack Dorsey founded", "Paris is"]
TARGETS = [" Paris", " English", " IBM", " big"]
CASE_IDS = [11, 7, 42, 3]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "tiny_qwen2", "tiny_neox"], scope="module")
def captured(request):
    loaded = request.getfixturevalue(request.param)
    lens = BackwardLens(loaded)
    items = lens.prepare(PROMPTS, TARGETS, case_ids=CASE_IDS)
    batch = capture_gradient_factors(loaded.model, loaded.adapter, [list(i.input_ids) for i in items],
                                     [i.target_id for i in items], pad_id=loaded.tokenizer.pad_token_id)
    return loaded, lens, items, batch


def logit_slack(adapter, vectors_Nxd: torch.Tensor, targets_N: torch.Tensor) -> np.ndarray:
    """Tokens (other than the target) whose logit lies within float32 round-off of the target's."""
    with torch.no_grad():
        logits = adapter.logit_lens(vectors_Nxd).float()
    d = vectors_Nxd.shape[-1]
    atol = MARGIN * 3 * np.sqrt(d * 16) * EPS32 * float(logits.abs().max())
    target = logits.gather(1, targets_N.view(-1, 1))
    return (((logits - target).abs() <= atol).sum(1) - 1).numpy()


def assert_ranks_within_ties(new: np.ndarray, reference: np.ndarray, slack: np.ndarray) -> None:
    new, reference = np.asarray(new), np.asarray(reference)
    differ = new != reference
    assert (np.abs(new - reference)[differ] <= slack[differ]).all(), (new[differ], reference[differ], slack[differ])
    assert differ.mean() < 0.05  # near-ties are rare; a systematic error moves most ranks


def assert_same_frames(new: pd.DataFrame, reference: pd.DataFrame, floats: dict[str, float]) -> None:
    assert list(new.columns) == list(reference.columns) and len(new) == len(reference)
    for column in new.columns:
        if column in floats:
            np.testing.assert_allclose(new[column].to_numpy(float), reference[column].to_numpy(float),
                                       rtol=floats[column], atol=floats[column], equal_nan=True, err_msg=column)
        else:
            assert new[column].tolist() == reference[column].tolist(), column


def float_bound(batch, reduction: int) -> float:
    return MARGIN * 3 * np.sqrt(reduction) * EPS32


def test_gradient_ranks_vjp_norms_and_similarity(captured):
    loaded, _, items, batch = captured
    d = loaded.adapter.unembedding.shape[1]
    n_padded = max(batch.lengths)
    reference = pd.DataFrame(old.gradient_rank_rows(batch, CASE_IDS))
    # sigma_min_ratio: float64 singular values of a core padded with zero rows (float64 round-off, relative
    # to the largest value: an absolute bound of P x eps64 on the ratio).
    assert_same_frames(gradient_tables.gradient_rank_rows(batch, CASE_IDS), reference,
                       {"sigma_min_ratio": 64 * n_padded * torch.finfo(torch.float64).eps, "rtol": 1e-15})
    assert_same_frames(gradient_tables.vjp_norm_rows(batch, CASE_IDS), pd.DataFrame(old.vjp_norm_rows(batch, CASE_IDS)),
                       {"norm": 1e-6})
    # float32 cosines against today's float64: the float32 rounding of a d-term dot product.
    assert_same_frames(spanning_sets.vjp_similarity_rows(batch, CASE_IDS),
                       pd.DataFrame(old.vjp_similarity_rows(batch, CASE_IDS)), {"cosine": float_bound(batch, d)})


def test_target_ranks(captured):
    loaded, _, _, batch = captured
    for normalized in (False, True):
        new = gradient_tables.ff2_target_rank_rows(batch, CASE_IDS, loaded.adapter, normalized=normalized)
        assert_same_frames(new, pd.DataFrame(old.ff2_target_rank_rows(batch, CASE_IDS, loaded.adapter,
                                                                      normalized=normalized)), {})


def test_neuron_updates(captured):
    loaded, _, _, batch = captured
    adapter = loaded.adapter
    reference = pd.DataFrame(old.neuron_update_rows(batch, CASE_IDS, adapter, top_k=3))
    new = spanning_sets.neuron_update_rows(batch, CASE_IDS, adapter, top_k=3)
    keys = ["case_id", "layer", "matrix", "neuron", "norm_order", "position"]
    assert new[keys].values.tolist() == reference[keys].values.tolist()
    d_ff = batch.inputs[(0, "ff2")].shape[-1]
    bound = float_bound(batch, d_ff * max(batch.lengths))
    assert_same_frames(new.drop(columns=["target_rank_of_update", "target_rank_of_signed_update"]),
                       reference.drop(columns=["target_rank_of_update", "target_rank_of_signed_update"]),
                       {"update_norm": bound, "update_share": bound, "last_coefficient": 1e-6,
                        "cosine": bound})
    # Ranks: one row per (prompt, layer, matrix, neuron); the change rebuilt from today's factors.
    first = reference.drop_duplicates(["case_id", "layer", "matrix", "norm_order"])
    changes, signed, targets = [], [], []
    for row in first.itertuples():
        prompt = CASE_IDS.index(row.case_id)
        coefficients, spanning = old.neuron_change_factors(batch, prompt, row.layer, row.matrix)
        change = -(coefficients[:, row.neuron] @ spanning)
        changes.append(change)
        signed.append(-change if row.last_coefficient < 0 else change)
        targets.append(int(batch.target_ids[prompt]))
    new_first = new.loc[first.index]
    targets = torch.tensor(targets)
    assert_ranks_within_ties(new_first.target_rank_of_update.to_numpy(), first.target_rank_of_update.to_numpy(),
                             logit_slack(adapter, torch.stack(changes), targets))
    assert_ranks_within_ties(new_first.target_rank_of_signed_update.to_numpy(),
                             first.target_rank_of_signed_update.to_numpy(),
                             logit_slack(adapter, torch.stack(signed), targets))


def test_lens_tables(captured):
    loaded, lens, items, batch = captured
    settings = LensSettings()
    excluded = special_token_ids(loaded.tokenizer)
    cells, tokens = [], []
    for prompt, item in enumerate(items):
        c, t = old.lens_rows(loaded.adapter, loaded.tokenizer, batch, prompt, item, settings, excluded)
        cells += c
        tokens += t
    new_cells, new_tokens = lens.lens_rows(batch, items, settings,
                                           torch.tensor(excluded, dtype=torch.long))
    assert_same_frames(new_cells, pd.DataFrame(cells), {"norm": 1e-6})
    assert_same_frames(new_tokens, pd.DataFrame(tokens), {"logit": 1e-5})


def test_the_runner_projects_each_vjp_once_and_keeps_the_tables(captured, monkeypatch):
    """target_ranks and the lens tables share one vocabulary pass per batch: as many projected rows as
    FF2 VJPs plus FF1 inputs, not three passes over the VJPs."""
    loaded, lens, items, _ = captured
    import backlens.analysis.logit_lens as logit_lens

    projected = []
    original = logit_lens.lens_logits

    def counting(adapter, vectors, **kwargs):
        projected.append(vectors.shape[0])
        return original(adapter, vectors, **kwargs)

    monkeypatch.setattr(logit_lens, "lens_logits", counting)
    result = lens.run_prepared(items, batch_size=2, tables=("target_ranks", "lens_cells", "lens_tokens"),
                               progress=False)
    n_cells = sum(len(i.input_ids) for i in items) * loaded.adapter.n_layers
    assert sum(projected) == 2 * n_cells
    assert len(result.tables["target_ranks"]) == n_cells and len(result.tables["lens_cells"]) == 2 * n_cells
