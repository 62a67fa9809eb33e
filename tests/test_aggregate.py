"""Aggregations on hand-written tables with hand-computed answers."""

import pandas as pd
import pytest
import torch

from backlens.analysis.aggregate import rank_equals_length_share, segment_means
from backlens.analysis.logit_lens import rank_from_top
from backlens.data.segments import SEGMENTS, primary_labels, segment_flags


def prompts_table(case_id, n_tokens, subject):
    flags = segment_flags(n_tokens, *subject)
    rows = [{"case_id": case_id, "position": i, "segment": primary_labels(flags)[i],
             **{f"is_{s}": flags[s][i] for s in SEGMENTS}} for i in range(n_tokens)]
    return pd.DataFrame(rows)


def test_segment_means_average_within_then_across_prompts():
    # Prompt 1: "A B C D E", subject = tokens 0..2 (A B C). Prompt 2: "X Y Z", subject = token 1.
    prompts = pd.concat([prompts_table(1, 5, (0, 3)), prompts_table(2, 3, (1, 2))])
    values = pd.DataFrame({
        "case_id": [1] * 5 + [2] * 3,
        "position": [0, 1, 2, 3, 4, 0, 1, 2],
        "layer": 0,
        "norm": [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0],
    })
    means = segment_means(values, prompts, "norm", ["layer"]).set_index("segment")
    assert means.loc["first_subject", "mean"] == pytest.approx((1.0 + 20.0) / 2)  # one-token subject counts as first
    assert means.loc["last_subject", "mean"] == pytest.approx((3.0 + 20.0) / 2)  # ... and as last subject token
    assert means.loc["middle_subject", "mean"] == pytest.approx(2.0)
    assert means.loc["middle_subject", "n_prompts"] == 1
    assert means.loc["first_subsequent", "mean"] == pytest.approx((4.0 + 30.0) / 2)
    assert means.loc["last", "mean"] == pytest.approx((5.0 + 30.0) / 2)
    assert "further" not in means.index or means.loc["further", "n_prompts"] == 0


def test_rank_share_uses_normalized_depth():
    ranks = pd.DataFrame({"model": "m", "matrix": "ff2", "case_id": [1, 2, 1, 2], "layer": [0, 0, 1, 1],
                          "n_tokens": [4, 4, 4, 4], "rank": [4, 3, 1, 1]})
    share = rank_equals_length_share(ranks)
    assert share.full.tolist() == [0.5, 0.0] and share.depth.tolist() == [0.0, 0.5]


def test_rank_from_top_counts_strictly_better_tokens():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 2.0, 0.0]])
    assert rank_from_top(logits, torch.tensor([2, 0])).tolist() == [2, 0]
    assert rank_from_top(logits, torch.tensor([1, 1])).tolist() == [0, 3]


def test_rank_by_logits_survives_softmax_underflow():
    logits = torch.tensor([[0.0, -200.0, -300.0, -250.0]])
    probabilities = logits.softmax(-1)
    assert probabilities[0, 2] == probabilities[0, 3] == 0  # float32 underflow ties them
    assert rank_from_top(logits, torch.tensor([2])).item() == 3
    assert rank_from_top(logits, torch.tensor([3])).item() == 2


def test_fig3_compares_models_from_several_tables(tmp_path):
    from backlens.stages import render_figure
    from conftest import compose_config

    paths = []
    for model, n_layers in (("small", 4), ("large", 8)):
        rows = [{"model": model, "case_id": c, "layer": layer, "matrix": m, "n_tokens": 5,
                 "rank": 1 if layer == n_layers - 1 else 5} for c in range(3) for layer in range(n_layers)
                for m in ("ff1", "ff2")]
        paths.append(tmp_path / f"{model}.parquet")
        pd.DataFrame(rows).to_parquet(paths[-1])
    assert len(render_figure.read_tables([str(p) for p in paths]).model.unique()) == 2
    cfg = compose_config("figure=fig3", f"paths.figure={tmp_path}/fig3.pdf",
                         f"paths.gradient_ranks=[{paths[0]},{paths[1]}]")
    render_figure.run(cfg)
    assert (tmp_path / "fig3.pdf").read_bytes().startswith(b"%PDF")
