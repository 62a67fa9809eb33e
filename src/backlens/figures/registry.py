"""Every figure of the analysis: the tables it reads, how it is drawn, and its caption.

``FIGURES`` are the paper's (each its own output group in the default target); ``BEYOND_FIGURES``
belong to the on-request groups of issue 16 (workflow/rules/beyond.smk) and stay out of the default
target, the headline copies and the gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd

from backlens.figures import backward_lens as bl
from backlens.figures import beyond
from backlens.figures import neurons
from backlens.figures.lens_tables import logit_lens_figure
from backlens.figures.sequential import sequential_figure


@dataclass(frozen=True)
class FigureSpec:
    tables: tuple[str, ...]
    draw: Callable[[Mapping[str, pd.DataFrame]], plt.Figure]
    caption: str


FIGURES: dict[str, FigureSpec] = {
    "fig3": FigureSpec(
        ("gradient_ranks",),
        lambda t: bl.fig3_rank_equals_length(t["gradient_ranks"]),
        "Share of prompts whose FF1/FF2 gradient rank equals the prompt length P, per layer index / number of "
        "layers. Ranks from the P x P core of the gradient's factors (tolerance P x eps32 of the largest singular value).",
    ),
    "fig4": FigureSpec(
        ("logit_lens_cells", "logit_lens_tokens"),
        lambda t: logit_lens_figure(t["logit_lens_cells"], t["logit_lens_tokens"], [0]),
        "Fig 4a: logit lens of the FF1 inputs x_i (left) and FF2 VJPs delta_i (right) per layer (rows) and prompt token "
        "(columns) for the first configured edit: each cell's most \\ least probable token (special tokens left out); "
        "colour = the vector's L2 norm (log scale); outlined bold = target_new at the top of LL(x_i) or the bottom of "
        "LL(delta_i), the end a descent step promotes. Grey 'zero': exact-zero VJPs (last layer, before the last token).",
    ),
    "fig4b": FigureSpec(
        ("logit_lens_cells", "logit_lens_tokens"),
        lambda t: logit_lens_figure(t["logit_lens_cells"], t["logit_lens_tokens"], [1]),
        "Fig 4b: the same logit-lens tables for the second configured edit.",
    ),
    # The README shows these (LL(delta_i) alone, readable at its width) and links the full fig4 / fig4b.
    "fig4_delta": FigureSpec(
        ("logit_lens_cells", "logit_lens_tokens"),
        lambda t: logit_lens_figure(t["logit_lens_cells"], t["logit_lens_tokens"], [0], ("ff2_vjp",)),
        "Fig 4a, right panel alone: logit lens of the FF2 VJPs delta_i per layer (rows) and prompt token (columns) for "
        "the first configured edit; each cell's most \\ least probable token; colour = ||delta_i|| (log scale); outlined "
        "bold = target_new among the least probable tokens (the end a descent step promotes).",
    ),
    "fig4b_delta": FigureSpec(
        ("logit_lens_cells", "logit_lens_tokens"),
        lambda t: logit_lens_figure(t["logit_lens_cells"], t["logit_lens_tokens"], [1], ("ff2_vjp",)),
        "Fig 4b, right panel alone: the LL(delta_i) table of the second configured edit.",
    ),
    "fig4_more": FigureSpec(
        ("logit_lens_cells", "logit_lens_tokens"),
        lambda t: logit_lens_figure(t["logit_lens_cells"], t["logit_lens_tokens"],
                                    sorted(t["logit_lens_cells"].example.unique())[2:]),
        "More logit-lens tables in the manner of the paper's Figs 11-15: the configured edits after the first two "
        "(analysis.logit_lens.examples), one row per edit.",
    ),
    "fig5": FigureSpec(
        ("vjp_norms", "prompts"),
        lambda t: bl.fig5_segment_norms(t["vjp_norms"], t["prompts"]),
        "Mean L2 norm of the FF2 VJP delta_i per layer and ROME segment (tokens averaged within a prompt, then over prompts).",
    ),
    "fig6": FigureSpec(
        ("target_ranks", "prompts"),
        lambda t: bl.fig6_target_ranks(t["target_ranks"], t["prompts"]),
        "Rank of target_new's first token in LL(delta_i) per segment and layer: mean over prompts, band = interquartile "
        "range, dashed = the last token's median (what the scorecard counts); exact-zero VJPs left out. V-1 = least "
        "probable, the end a descent step promotes.",
    ),
    "fig7": FigureSpec(
        ("neuron_updates", "prompts"),
        lambda t: neurons.fig7_alignment(t["neuron_updates"], t["prompts"]),
        "For the neuron whose key (FF1) or value (FF2) vector changes most in one SGD step (lr 1), the largest |cosine| "
        "between its change and any spanning vector (x_i for keys, delta_i for values), and its |cosine| with the last "
        "token's vector; mean over prompts.",
    ),
    "fig8": FigureSpec(
        ("neuron_updates", "prompts"),
        lambda t: neurons.fig8_aligned_segment(t["neuron_updates"], t["prompts"]),
        "Segment of the spanning vector best aligned (largest |cosine|) with each of the top-k most-changed neurons' "
        "one-step changes, as a share per layer.",
    ),
    "fig9": FigureSpec(
        ("neuron_updates",),
        lambda t: neurons.fig9_update_target_rank(t["neuron_updates"]),
        "Rank of target_new in the logit lens of the top-k FF2 value vectors' one-step changes, signed by the neuron's "
        "activation at the last token (a negative SwiGLU/GELU activation turns a change toward the target into a step "
        "away from it): median with IQR and the share in the top 1% per layer (left); unsigned and sign-aware ranks "
        "over all layers (right). The unsigned rank is two-peaked, so its median jumps between 0 and V-1.",
    ),
    "fig16": FigureSpec(
        ("vjp_norms", "prompts"),
        lambda t: bl.fig16_submodule_norms(t["vjp_norms"], t["prompts"]),
        "Mean VJP norm per layer and segment for each sub-module output: attention, FF1 matrices and FF2 (= MLP output).",
    ),
    "fig22": FigureSpec(
        ("vjp_similarity", "prompts"),
        lambda t: bl.fig22_token_similarity(t["vjp_similarity"], t["prompts"]),
        "Mean cosine similarity between FF2 VJPs of two tokens of the same prompt in the same layer, for pairs with the "
        "last token and other pairs; exact-zero VJPs left out.",
    ),
    "fig23": FigureSpec(
        ("vjp_similarity",),
        lambda t: bl.fig23_layer_similarity(t["vjp_similarity"]),
        "Mean cosine similarity between the last token's FF2 VJPs of two layers (layer x layer), over prompts.",
    ),
}


BEYOND_FIGURES: dict[str, FigureSpec] = {
    "attn_fig3": FigureSpec(
        ("attention_ranks",),
        lambda t: beyond.attention_rank_figure(t["attention_ranks"]),
        "Our analysis beyond the paper (Fig 3 style): share of prompts whose W_Q, W_K, W_V or W_O gradient rank equals "
        "the prompt length P, per layer index / number of layers; ranks from each projection's P x d factors (a fused "
        "Q/K/V matrix split by output units), tolerance P x eps32 of the largest singular value.",
    ),
    "attn_fig5": FigureSpec(
        ("attention_vjp_norms", "prompts"),
        lambda t: beyond.attention_norm_figure(t["attention_vjp_norms"], t["prompts"]),
        "Our analysis beyond the paper (Fig 5 style): mean L2 norm of the VJP of each attention projection's output "
        "(queries, keys, values, attention output) per layer and ROME segment.",
    ),
    "attn_fig6": FigureSpec(
        ("attention_target_ranks", "prompts"),
        lambda t: beyond.attention_target_rank_figure(t["attention_target_ranks"], t["prompts"]),
        "Our analysis beyond the paper (Fig 6 style): rank of target_new's first token in the logit lens of W_O's "
        "VJP (the attention output's) per segment and layer; mean over prompts, band = IQR, dashed = the last token's "
        "median (what the scorecard counts); exact-zero VJPs left out.",
    ),
    "ft_trace_steps": FigureSpec(
        ("ft_trace",),
        lambda t: beyond.ft_trace_figure(t["ft_trace"]),
        "Our analysis beyond the paper: an FF2 edit optimised for K steps (plain gradient descent or Adam on one FF2 "
        "weight, the paper's loss), per edited layer and step, mean over CounterFact cases: loss and P(target) after "
        "the step, the target's rank in the output, the accumulated update's rank over P, the cosine of each step's "
        "update with the first, and the target's rank in LL(-delta) at the last token.",
    ),
}

# Issue 26's on-request group `sequential` (workflow/rules/sequential.smk): out of the default target.
SEQUENTIAL_FIGURES: dict[str, FigureSpec] = {
    "sequential": FigureSpec(
        ("sequential_table",),
        lambda t: sequential_figure(t["sequential_table"]),
        "Beyond the paper (issue 26): CounterFact edits applied one after another without restoring the weights. "
        "Against the number of edits n (log scale): retention (share of the n edits whose rewrite prompt still gives "
        "P(target_new) > P(target_true)), NS on their neighbour prompts (dashed: the unedited model on the same "
        "neighbours) and held-out perplexity over the unedited model's (log axis); one line per method, crosses for "
        "one batch update of the first n facts.",
    ),
}

# Every figure the render_figure stage can draw.
ALL_FIGURES: dict[str, FigureSpec] = {**FIGURES, **BEYOND_FIGURES, **SEQUENTIAL_FIGURES}
