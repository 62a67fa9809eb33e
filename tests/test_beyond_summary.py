"""The attention findings on hand-made tables: where each projection's VJP is largest, told per layer."""

import pandas as pd

from backlens.analysis.beyond_summary import largest_segment_by_layer, largest_segment_text
from backlens.data.segments import SEGMENTS, primary_labels, segment_flags


def prompts_table(n_tokens=4, subject=(0, 2)):
    flags = segment_flags(n_tokens, *subject)
    return pd.DataFrame([{"case_id": 0, "position": i, "segment": primary_labels(flags)[i],
                          **{f"is_{s}": flags[s][i] for s in SEGMENTS}} for i in range(n_tokens)])


def test_largest_segment_is_told_per_layer_not_from_the_mean_over_layers():
    # Tokens: 0 first subject, 1 last subject, 2 first subsequent, 3 last. Layer 0: the last subject
    # token's norm is 100 (it dominates any mean over layers); layers 1-3: the last token's is largest.
    rows = []
    for layer in range(4):
        norms = [1.0, 100.0, 1.0, 2.0] if layer == 0 else [1.0, 1.0, 1.0, 3.0]
        rows += [{"case_id": 0, "position": p, "layer": layer, "projection": "o", "vjp_norm": n}
                 for p, n in enumerate(norms)]
    largest = largest_segment_by_layer(pd.DataFrame(rows), prompts_table())
    assert largest[("o", 0)] == "last_subject"
    assert [largest[("o", layer)] for layer in (1, 2, 3)] == ["last"] * 3
    assert largest_segment_text(largest) == "W_O: last token in 3 of 4 layers (1-3), last subject token in 1 (0)"
