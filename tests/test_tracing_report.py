"""docs/tracing.md's peaks on a hand-made average-effects table."""

import pandas as pd

from backlens.figures.tracing import peak_cells
from backlens.stages.tracing_report import per_segment_peaks


def averages():
    # residual_attention_severed: the last subject token over 50 facts peaks at 0.10 (layer 6); the first
    # subject token, traced for 2 facts only, reaches 0.23 (layer 0) on their noise.
    rows = [{"kind": "residual_attention_severed", "segment": "last_subject", "layer": layer,
             "mean": 0.10 if layer == 6 else 0.01, "ci_low": 0.05, "ci_high": 0.15, "n_facts": 50} for layer in range(8)]
    rows += [{"kind": "residual_attention_severed", "segment": "first_subject", "layer": layer,
              "mean": 0.23 if layer == 0 else 0.0, "ci_low": -0.23, "ci_high": 0.70, "n_facts": 2} for layer in range(8)]
    return pd.DataFrame(rows)


def test_a_peak_needs_half_of_the_kinds_facts():
    (peak,) = peak_cells(averages()).itertuples()
    assert (peak.segment, peak.layer, peak.n_facts) == ("last_subject", 6, 50)


def test_per_segment_table_gives_n_and_band_where_few_facts_average():
    table = per_segment_peaks(averages()).set_index("segment")["residual_attention_severed"]
    assert table["first subject token"] == "0.230 (layer 0; n = 2, 95% [-0.230, 0.700])"
    assert table["last subject token"] == "0.100 (layer 6)"


def _summary():
    return {"model": "m", "n_traced": 50, "n_correct": 279, "n_screened": 1209, "noise_samples": 3,
            "noise_std": 0.407, "window": 6, "n_layers": 30}


def _heatmap_averages():
    from backlens.data.segments import SEGMENTS
    # Hand-made: one cell per (kind, segment, layer), MLP effects from -0.02 to 0.08.
    rows = [{"kind": kind, "segment": segment, "layer": layer, "mean": (layer - 6) / 300 * (kind == "mlp") + 0.01,
             "ci_low": 0.0, "ci_high": 0.02, "n_facts": 50}
            for kind in ("residual", "mlp", "attention") for segment in SEGMENTS for layer in range(30)]
    return pd.DataFrame(rows)


def test_tracing_heatmaps_put_white_at_zero_and_keep_the_readme_width(tmp_path):
    from PIL import Image

    from backlens.figures.common import PNG_DPI, save_figure
    from backlens.figures.tracing import FIGURE_WIDTH, tracing_avg, tracing_avg_lines

    fig = tracing_avg(_heatmap_averages(), _summary())
    for image in [ax.images[0] for ax in fig.axes if ax.images]:
        assert image.norm.vmin == -image.norm.vmax  # symmetric about 0: the diverging map's white is 0
    for name, drawn in (("avg", fig), ("lines", tracing_avg_lines(_heatmap_averages(), _summary()))):
        _, png = save_figure(drawn, tmp_path / f"{name}.pdf")
        width, height = Image.open(png).size
        # The long setting line wraps instead of widening the canvas; the lines are not a 4:1 strip.
        assert width / PNG_DPI <= FIGURE_WIDTH + 0.3 and width / height < 2
