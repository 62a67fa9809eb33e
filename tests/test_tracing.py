"""Causal tracing on the tiny models: reuse of corrupted states equals full recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tolerances import assert_close_float32
from backlens.data.known_facts import KnownFact
from backlens.tracing.facts import prepare_fact, screen_facts
from backlens.tracing.reference import reference_residual_restoration_prob, reference_restored_prob
from backlens.tracing.restore import KINDS, restore_window, restored_rows
from backlens.tracing.runs import (
    KeyValuePrefix,
    corrupted_embeddings,
    fact_generator,
    noise_std,
    recorded_run,
)
from backlens.tracing.trace import TraceSettings, trace_fact

FACT = KnownFact(
    known_id=7,
    subject="Eiffel Tower",
    attribute="Paris",
    template="The {} is located in the city of",
    prompt="The Eiffel Tower is located in the city of",
    relation_id="P131",
    prediction=None,
)
WINDOW = 2
SAMPLES = 3


def _settings(adapter, *, scale=3.0, max_rows=10_000, severed_at="all") -> TraceSettings:
    return TraceSettings(
        kinds=("residual", "mlp", "attention"),
        severed_kinds=("residual_mlp_severed", "residual_attention_severed"),
        noise_std=noise_std(adapter, scale),
        noise_samples=SAMPLES,
        window=WINDOW,
        max_rows=max_rows,
        severed_at=severed_at,
    )


def _answer(model) -> int:
    """The tiny model's own greedy answer, so P(answer) is as large as a random model allows."""
    ids = torch.tensor([prepare_fact(model.tokenizer, FACT).segmented.input_ids])
    with torch.no_grad():
        return int(model.model(ids).logits[0, -1].argmax())


def _trace(model, settings):
    prompt = prepare_fact(model.tokenizer, FACT)
    segmented = prompt.segmented
    answer = _answer(model)
    trace = trace_fact(
        model.adapter,
        segmented.input_ids,
        segmented.subject_start,
        segmented.subject_end,
        answer,
        settings,
        fact_generator(0, FACT.known_id),
    )
    return prompt, answer, trace


def test_run_layers_matches_the_model_forward_and_a_cached_prefix(tiny_model):
    adapter = tiny_model.adapter
    ids = torch.tensor([prepare_fact(tiny_model.tokenizer, FACT).segmented.input_ids])
    with torch.no_grad():
        expected = tiny_model.model(ids).logits[0, -1]
    run = recorded_run(adapter, adapter.token_embeddings(ids), answer_id=0)
    # The final norm and unembedding applied outside the model, in another kernel.
    assert_close_float32(adapter.logit_lens(run.residual[-1][0, -1]), expected, reduction=adapter.unembedding.shape[1], chain=2)
    split = 4
    prefix = KeyValuePrefix(
        {i: k[:, :, :split] for i, k in run.keys.items()}, {i: v[:, :, :split] for i, v in run.values.items()}
    )
    suffix = adapter.run_layers(
        run.residual[1][:, split:], 1, adapter.n_layers, first_position=split, key_values=prefix
    )
    # Attention over a cached prefix sums the same terms in another order, once per layer.
    assert_close_float32(suffix, run.residual[-1][:, split:], reduction=adapter.unembedding.shape[1], chain=adapter.n_layers)


def test_run_layers_rejects_a_suffix_without_keys_and_values(tiny_llama):
    hidden = torch.zeros(1, 2, tiny_llama.adapter.input_embedding.shape[1])
    with pytest.raises(ValueError, match="key_values"):
        tiny_llama.adapter.run_layers(hidden, 0, 1, first_position=3)
    with pytest.raises(ValueError, match="start <= end"):
        tiny_llama.adapter.run_layers(hidden, 2, 1)


def test_noise_std_is_measured_on_the_embeddings_the_blocks_receive(tiny_model):
    """ROME's 3 x std of the embeddings the noise is added to: Gemma 3 scales them by sqrt(d) inside
    its embedding, so the std of the weight entries alone would make the noise sqrt(d) times too weak."""
    adapter = tiny_model.adapter
    with torch.no_grad():
        received = adapter.token_embeddings(torch.arange(adapter.input_embedding.shape[0])[None])
    assert noise_std(adapter, 3.0) == pytest.approx(3.0 * float(received.float().std()), rel=1e-4)


def test_window_is_romes_centred_window():
    assert restore_window(0, 10, 30) == range(0, 5)
    assert restore_window(15, 10, 30) == range(10, 20)
    assert restore_window(29, 10, 30) == range(24, 30)
    assert restore_window(5, 1, 30) == range(5, 6)


def test_rows_join_at_the_first_layer_they_change():
    rows = restored_rows(("residual", "mlp"), n_layers=6, n_samples=2, window=4)
    assert len(rows) == 2 * 6 * 2
    assert [r.entry_layer for r in rows] == sorted(r.entry_layer for r in rows)
    assert {r.entry_layer for r in rows if r.kind == "residual" and r.layer == 5} == {6}
    assert {r.entry_layer for r in rows if r.kind == "mlp" and r.layer == 3} == {1}
    with pytest.raises(ValueError, match="tracing.kinds"):
        restored_rows(("mlp_output",), 6, 1, 4)


def test_zero_noise_makes_corrupted_equal_clean_and_every_effect_zero(tiny_model):
    _, _, trace = _trace(tiny_model, _settings(tiny_model.adapter, scale=0.0))
    assert trace.p_corrupted == pytest.approx(trace.p_clean, rel=1e-5)
    assert trace.total_effect == pytest.approx(0.0, abs=1e-6 * trace.p_clean)
    np.testing.assert_allclose(trace.indirect_effects, 0.0, atol=1e-6 * trace.p_clean)


def test_last_layer_residual_at_last_token_recovers_clean_probability(tiny_model):
    _, _, trace = _trace(tiny_model, _settings(tiny_model.adapter))
    assert abs(trace.total_effect) > 1e-3 * trace.p_clean  # the noise changes the answer's probability
    residual = trace.kinds.index("residual")
    assert trace.restored[residual, -1, -1] == pytest.approx(trace.p_clean, rel=1e-5)


def test_restoring_every_residual_state_recovers_clean_probability(tiny_model):
    adapter = tiny_model.adapter
    prompt = prepare_fact(tiny_model.tokenizer, FACT)
    segmented, answer = prompt.segmented, _answer(tiny_model)
    ids = torch.tensor([segmented.input_ids])
    clean_embeddings = adapter.token_embeddings(ids)
    clean = recorded_run(adapter, clean_embeddings, answer)
    noisy = corrupted_embeddings(
        clean_embeddings, segmented.subject_start, segmented.subject_end, SAMPLES, noise_std(adapter, 3.0),
        fact_generator(0, FACT.known_id),
    )
    every_cell = [(t, layer) for t in range(len(segmented)) for layer in range(adapter.n_layers)]
    restored = reference_residual_restoration_prob(adapter, noisy, clean, every_cell, answer)
    assert restored == pytest.approx(clean.mean_answer_prob, rel=1e-5)
    corrupted = recorded_run(adapter, noisy, answer)
    assert abs(corrupted.mean_answer_prob - clean.mean_answer_prob) > 1e-3 * clean.mean_answer_prob


@pytest.mark.slow
def test_reused_states_equal_full_recomputation_for_every_cell(tiny_model):
    adapter = tiny_model.adapter
    settings = _settings(adapter)
    prompt, answer, trace = _trace(tiny_model, settings)
    segmented = prompt.segmented
    ids = torch.tensor([segmented.input_ids])
    clean_embeddings = adapter.token_embeddings(ids)
    clean = recorded_run(adapter, clean_embeddings, answer)
    noisy = corrupted_embeddings(
        clean_embeddings, segmented.subject_start, segmented.subject_end, SAMPLES, settings.noise_std,
        fact_generator(0, FACT.known_id),
    )
    corrupted = recorded_run(adapter, noisy, answer)
    expected = np.array(
        [
            [
                [
                    reference_restored_prob(adapter, noisy, clean, corrupted, kind, token, layer, WINDOW, answer)
                    for layer in range(adapter.n_layers)
                ]
                for token in range(len(segmented))
            ]
            for kind in trace.kinds
        ]
    )
    np.testing.assert_allclose(trace.restored, expected, rtol=1e-5, atol=1e-7 * trace.p_clean)
    effects = trace.indirect_effects
    assert np.abs(effects).max() > 100 * np.abs(trace.restored - expected).max()  # the check is not vacuous
    assert trace.token_layers_computed < trace.token_layers_full


@pytest.mark.slow
def test_batched_and_one_row_at_a_time_restoration_agree(tiny_model):
    _, _, batched = _trace(tiny_model, _settings(tiny_model.adapter))
    _, _, one_by_one = _trace(tiny_model, _settings(tiny_model.adapter, max_rows=1))
    np.testing.assert_allclose(batched.restored, one_by_one.restored, rtol=1e-5, atol=1e-7 * batched.p_clean)


def test_severed_kinds_are_traced_only_at_the_last_subject_token_by_default(tiny_llama):
    prompt, _, trace = _trace(tiny_llama, _settings(tiny_llama.adapter, severed_at="last_subject"))
    severed = trace.kinds.index("residual_mlp_severed")
    traced_tokens = np.flatnonzero(~np.isnan(trace.restored[severed]).all(axis=1))
    assert traced_tokens.tolist() == [prompt.segmented.subject_end - 1]
    assert not np.isnan(trace.restored[trace.kinds.index("mlp")]).any()


def test_noise_is_seeded_per_fact():
    first = torch.randn(1, generator=fact_generator(0, 3))
    assert torch.equal(first, torch.randn(1, generator=fact_generator(0, 3)))
    assert not torch.equal(first, torch.randn(1, generator=fact_generator(0, 4)))
    assert not torch.equal(first, torch.randn(1, generator=fact_generator(1, 3)))


def test_corruption_touches_only_subject_tokens():
    clean = torch.zeros(1, 5, 4)
    noisy = corrupted_embeddings(clean, 1, 3, 2, 1.0, fact_generator(0, 0))
    assert noisy.shape == (2, 5, 4)
    assert (noisy[:, [0, 3, 4]] == 0).all() and (noisy[:, 1:3] != 0).all()
    with pytest.raises(ValueError, match="subject tokens"):
        corrupted_embeddings(clean, 3, 7, 1, 1.0, fact_generator(0, 0))


def test_screen_marks_a_fact_correct_when_its_answer_is_the_argmax(tiny_llama):
    prompt = prepare_fact(tiny_llama.tokenizer, FACT)
    table = screen_facts(tiny_llama, [prompt, prompt], batch_size=2)
    assert table.known_id.tolist() == [7, 7]
    assert table.answer_id.iloc[0] == prompt.answer_id
    assert table.correct.iloc[0] == (table.predicted_id.iloc[0] == prompt.answer_id)
    assert table.p_answer.iloc[0] == pytest.approx(table.p_answer.iloc[1], rel=1e-5)


def test_kinds_cover_rome_and_severed_variants():
    assert set(KINDS) == {"residual", "mlp", "attention", "residual_mlp_severed", "residual_attention_severed"}
