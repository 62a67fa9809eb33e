"""Tracing tables (segment averages, bands) and figures drawn from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backlens.data.known_facts import KnownFact
from backlens.data.segments import SEGMENTS, segment_flags
from backlens.figures import tracing as figures
from backlens.figures.common import save_figure
from backlens.tracing.facts import prepare_fact
from backlens.tracing.runs import fact_generator, noise_std
from backlens.tracing.tables import average_effects, effect_rows, fact_row, segment_effects, token_rows
from backlens.tracing.trace import TraceSettings, trace_fact


FACT = KnownFact(7, "Eiffel Tower", "Paris", "The {} is located in the city of",
                 "The Eiffel Tower is located in the city of", "P131", None)


def _tokens(known_id: int, n_tokens: int, subject: tuple[int, int]) -> pd.DataFrame:
    flags = segment_flags(n_tokens, *subject)
    frame = pd.DataFrame({"known_id": known_id, "token_index": range(n_tokens)})
    for segment in SEGMENTS:
        frame[segment] = flags[segment]
    return frame


def test_segment_effects_average_within_a_fact_and_count_one_token_subjects_twice():
    # Fact 1: subject = tokens 0..2 (middle = token 1 only), then 3 (first subsequent), 4 (further),
    # 5 (last); fact 2: one-token subject at 1.
    tokens = pd.concat([_tokens(1, 6, (0, 3)), _tokens(2, 4, (1, 2))])
    effects = pd.DataFrame(
        {
            "known_id": [1] * 6 + [2] * 4,
            "token_index": [0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
            "layer": 0,
            "kind": "residual",
            "indirect_effect": [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.0, 0.6, 0.7, 0.8],
        }
    )
    per_fact = segment_effects(effects, tokens).set_index(["known_id", "segment"])["indirect_effect"]
    assert per_fact[(1, "first_subject")] == pytest.approx(0.1)
    assert per_fact[(1, "middle_subject")] == pytest.approx(0.2)
    assert per_fact[(1, "first_subsequent")] == pytest.approx(0.4)
    assert per_fact[(1, "further")] == pytest.approx(0.5)
    assert per_fact[(1, "last")] == pytest.approx(0.55)
    assert per_fact[(2, "first_subject")] == per_fact[(2, "last_subject")] == pytest.approx(0.6)
    assert (2, "middle_subject") not in per_fact.index
    averages = average_effects(segment_effects(effects, tokens)).set_index(["segment", "layer", "kind"])
    row = averages.loc[("last_subject", 0, "residual")]
    assert row["mean"] == pytest.approx(0.45) and row["n_facts"] == 2
    half_width = 1.959963984540054 * np.std([0.3, 0.6], ddof=1) / np.sqrt(2)
    assert row["ci_high"] - row["mean"] == pytest.approx(half_width)
    assert averages.loc[("middle_subject", 0, "residual"), "n_facts"] == 1


@pytest.mark.slow
def test_tables_and_figures_from_a_tiny_trace(tiny_llama, tmp_path):
    adapter = tiny_llama.adapter
    prompt = prepare_fact(tiny_llama.tokenizer, FACT)
    settings = TraceSettings(
        kinds=("residual", "mlp", "attention"),
        severed_kinds=("residual_mlp_severed", "residual_attention_severed"),
        noise_std=noise_std(adapter, 3.0),
        noise_samples=2,
        window=2,
        max_rows=64,
    )
    segmented = prompt.segmented
    trace = trace_fact(
        adapter, segmented.input_ids, segmented.subject_start, segmented.subject_end, prompt.answer_id, settings,
        fact_generator(0, FACT.known_id),
    )
    effects, tokens = effect_rows(prompt, trace), token_rows(prompt)
    facts = pd.DataFrame([fact_row(prompt, trace)])
    n_tokens, n_layers = len(segmented), adapter.n_layers
    assert len(effects) == 3 * n_tokens * n_layers + 2 * n_layers  # severed kinds: last subject token only
    severed = effects[effects.kind == "residual_mlp_severed"]
    assert set(severed.token_index) == {segmented.subject_end - 1}
    assert facts.total_effect.iloc[0] == pytest.approx(facts.p_clean.iloc[0] - facts.p_corrupted.iloc[0])
    averages = average_effects(segment_effects(effects, tokens))
    assert set(averages.segment) <= set(SEGMENTS)
    assert set(averages[averages.kind == "residual_mlp_severed"].segment) == {"last_subject"}
    summary = {
        "model": "tiny-llama", "n_traced": 1, "n_correct": 1, "n_screened": 1, "noise_samples": 2,
        "noise_std": settings.noise_std, "window": 2,
    }
    drawn = {
        "examples": figures.tracing_examples(facts, tokens, effects, 1),
        "avg": figures.tracing_avg(averages, summary),
        "lines": figures.tracing_avg_lines(averages, summary),
        "severed": figures.tracing_severed(averages, summary),
    }
    for name, fig in drawn.items():
        pdf, png = save_figure(fig, tmp_path / f"{name}.pdf")
        assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    peaks = figures.peak_cells(averages)
    assert set(peaks.kind) == set(trace.kinds)
