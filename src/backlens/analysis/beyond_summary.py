"""Markdown reports of the issue-16 analyses (attention projections, FT trace), from their tables only,
and the scorecard's findings beyond the paper (those, and issue 26's efficacy by free generation).

Every number is computed here from the tables; these are our findings, not the paper's claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from backlens.analysis.aggregate import SEGMENT_LABELS, layer_runs, segment_means
from backlens.analysis.markdown import markdown_table
from backlens.data.segments import SEGMENTS

PROJECTION_LABELS = {"q": "W_Q", "k": "W_K", "v": "W_V", "o": "W_O"}


def steps_to_top1(ranks_after: list[int]) -> float:
    """First step after which the target is the model's top-1 prediction (NaN: never)."""
    return next((float(step) for step, rank in enumerate(ranks_after, start=1) if rank == 0), math.nan)


def _percent(share: float) -> str:
    return "n/a" if pd.isna(share) else f"{100 * share:.1f}%"


def rank_agreement(lemma: pd.DataFrame) -> int:
    """Lemma rows whose rank from the factors equals matrix_rank of the full float64 gradient."""
    return int((lemma.rank_factors == lemma.rank_full_float64).sum())


def attention_lemma_section(lemma: pd.DataFrame) -> str:
    if lemma.empty:
        return "## Lemma 4.1 per projection\nNot checked (analysis.attention.n_lemma = 0)."
    agree = rank_agreement(lemma)
    return "\n".join([
        "## Lemma 4.1 per projection",
        f"dL/dW of each projection rebuilt from its factors (the VJP restricted to the projection's units of its "
        f"site) against autograd's weight gradient, {lemma.case_id.nunique()} prompts x {lemma.layer.nunique()} layers "
        f"x {lemma.projection.nunique()} projections: max relative error **{lemma.relative_error.max():.2e}** from the "
        f"prompt captured alone, **{lemma.relative_error_batched.max():.2e}** from the padded batch the tables use. "
        f"Rank from the factors equals matrix_rank of the full float64 gradient in **{agree}/{len(lemma)}**.",
    ])


def rank_shares(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per projection (W_Q...), all layers but the last: shares of gradients with rank = min(P, d_out),
    = P - 1 and below both, the share at float32 matrix_rank's tolerance, the matrix shape and the
    last layer's median rank and P."""
    last_layer = ranks.layer.max()
    inner = ranks[ranks.layer < last_layer]
    rows = []
    for name, group in ranks.groupby("projection", sort=False):
        body = inner[inner.projection == name]
        last = group[group.layer == last_layer]
        cap = np.minimum(body.n_tokens, body.d_out)
        rows.append({
            "projection": PROJECTION_LABELS.get(name, name), "d_out": group.d_out.iloc[0], "d_in": group.d_in.iloc[0],
            "full": (body["rank"] == cap).mean(), "p_minus_1": (body["rank"] == body.n_tokens - 1).mean(),
            "below": (body["rank"] < np.minimum(body.n_tokens - 1, cap)).mean(),
            "full_float32_tol": (body.rank_float32_tol == cap).mean(),
            "last_rank": last["rank"].median(), "last_p": last.n_tokens.median(),
        })
    return pd.DataFrame(rows).set_index("projection")


def attention_rank_section(ranks: pd.DataFrame) -> str:
    shares = rank_shares(ranks)
    rows = [{
        "projection": name,
        "d_out x d_in": f"{int(row.d_out)} x {int(row.d_in)}",
        "rank = min(P, d_out)": _percent(row.full),
        "rank = P - 1": _percent(row.p_minus_1),
        "rank < P - 1": _percent(row.below),
        "rank = min(P, d_out) at float32 matrix_rank tol": _percent(row.full_float32_tol),
        "last layer: rank (median)": f"{row.last_rank:g} of P = {row.last_p:g}",
    } for name, row in shares.iterrows()]
    return "\n".join([
        "## Gradient rank per projection (Fig 3 style)",
        "Share of (prompt, layer) gradients, all layers but the last, by rank from the factors (tolerance P x eps32 "
        "of the largest singular value, as for the MLP; a grouped-query K or V with fewer output units than P tokens "
        "is capped at d_out). Two exact constraints predict rank P - 1: the first token's query scores only its own "
        "key and a softmax over one score is constant, so its VJP is zero (W_Q); without rotary embeddings a "
        "softmax ignores a constant added to a query's scores, so each head's key VJPs sum to zero over positions "
        "(W_K). In the last layer only the last position's query and attention output reach the loss, while every "
        "position's key and value do through the last token's attention.",
        "",
        markdown_table(pd.DataFrame(rows)),
    ])


def segment_norms(norms: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Mean VJP norm per projection (rows) and ROME segment (columns, in SEGMENTS order): tokens
    averaged within a prompt, then prompts, then layers."""
    means = segment_means(norms, prompts, "vjp_norm", ["projection", "layer"])
    per_segment = means.groupby(["projection", "segment"])["mean"].mean().unstack("segment")
    return per_segment.reindex(columns=list(SEGMENTS))


def largest_segment_by_layer(norms: pd.DataFrame, prompts: pd.DataFrame) -> pd.Series:
    """(projection, layer) -> the ROME segment with the largest mean VJP norm in that layer. The mean over
    layers (segment_norms) is dominated by the layers with the largest norms (layer 0 for attention), so
    where a projection's VJP is largest is told per layer."""
    means = segment_means(norms, prompts, "vjp_norm", ["projection", "layer"])
    return means.loc[means.groupby(["projection", "layer"])["mean"].idxmax()].set_index(["projection", "layer"])["segment"]


def largest_segment_text(largest: pd.Series) -> str:
    """'W_O: last token in 29 of 30 layers (1-29), last subject token in 1 (0); ...', most layers first."""
    parts = []
    for projection, by_layer in largest.groupby(level="projection"):
        layers = by_layer.droplevel("projection")
        counts = layers.value_counts()
        pieces = [f"{SEGMENT_LABELS[segment]} in {count}" + (f" of {len(layers)} layers" if i == 0 else "")
                  + f" ({layer_runs(layers[layers == segment].index)})" for i, (segment, count) in enumerate(counts.items())]
        parts.append(f"{PROJECTION_LABELS[projection]}: " + ", ".join(pieces))
    return "; ".join(parts)


def attention_norm_section(norms: pd.DataFrame, prompts: pd.DataFrame) -> str:
    per_segment = segment_norms(norms, prompts)
    table = per_segment.rename(columns=SEGMENT_LABELS).reset_index()
    table["largest"] = [SEGMENT_LABELS[s] for s in per_segment.idxmax(axis=1)]
    table["projection"] = table.projection.map(PROJECTION_LABELS)
    return "\n".join([
        "## VJP norm by segment (Fig 5 style)",
        "Mean L2 norm of each projection's VJP (q_i, k_i, v_i, attention output) per ROME segment, tokens "
        "averaged within a prompt, then prompts, then layers.",
        "",
        markdown_table(table),
        "",
        "Largest segment layer by layer (the mean over layers above is dominated by the layers with the largest "
        "norms): " + largest_segment_text(largest_segment_by_layer(norms, prompts)) + ".",
    ])


def last_token_target_ranks(target_ranks: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Per layer: mean and median rank of target_new in LL(W_O's VJP) at the last token (exact-zero VJPs
    left out), and the median over V - 1 (1: the least-probable end)."""
    vocab_size = int(target_ranks.vocab_size.iloc[0])
    last = target_ranks.merge(prompts[prompts.is_last][["case_id", "position"]], on=["case_id", "position"])
    last = last[last["rank"] >= 0]
    per_layer = last.groupby("layer")["rank"].agg(["mean", "median"]).reset_index()
    per_layer["median / (V-1)"] = per_layer["median"] / (vocab_size - 1)
    return per_layer


def bottom_layers(per_layer: pd.DataFrame) -> list[int]:
    """Layers of ``last_token_target_ranks`` whose median rank is within 1% of the least-probable end."""
    return [int(layer) for layer in per_layer.layer[per_layer["median / (V-1)"] >= 0.99]]


def attention_target_rank_section(target_ranks: pd.DataFrame, prompts: pd.DataFrame) -> str:
    vocab_size = int(target_ranks.vocab_size.iloc[0])
    per_layer = last_token_target_ranks(target_ranks, prompts)
    bottom = bottom_layers(per_layer)
    top = per_layer[per_layer["median / (V-1)"] <= 0.01]
    return "\n".join([
        "## Target rank in LL(VJP of W_O) at the last token (Fig 6 style)",
        f"The median rank of target_new's first token is within 1% of the least-probable end (V-1 = {vocab_size - 1}), "
        f"the end a descent step promotes, in **{len(bottom)} of {len(per_layer)} layers** "
        f"(layers {layer_runs(bottom)}); within 1% of the top in {len(top)}.",
        "",
        markdown_table(per_layer, ".4g"),
    ])


def attention_markdown(tables: Mapping[str, pd.DataFrame], model: str) -> str:
    prompts = tables["prompts"]
    ranks = tables["attention_ranks"]
    prompts = prompts[prompts.case_id.isin(ranks.case_id.unique())]
    return "\n\n".join([
        f"# Beyond the paper: the Backward Lens on attention ({model})",
        f"Our own findings (issue 16), not claims of the paper. {ranks.case_id.nunique()} CounterFact prompts; "
        "loss: cross-entropy of target_new's first token at the last position; W_Q, W_K, W_V, W_O captured in the "
        "same forward+backward pass as the MLP matrices.",
        attention_lemma_section(tables["attention_lemma"]),
        attention_rank_section(ranks),
        attention_norm_section(tables["attention_vjp_norms"], prompts),
        attention_target_rank_section(tables["attention_target_ranks"], prompts),
    ]) + "\n"


def trace_summary(trace: pd.DataFrame) -> pd.DataFrame:
    """One row per (case, layer): the trace's outcome after its last step."""
    rows = []
    for (case_id, layer), group in trace.sort_values("step").groupby(["case_id", "layer"]):
        final = group.iloc[-1]
        rows.append({
            "case_id": case_id, "layer": layer, "n_tokens": final.n_tokens,
            "first_loss": group.loss.iloc[0], "final_loss": final.loss_after,
            "final_target_prob": final.target_prob_after, "top1_at_end": final.target_rank_after == 0,
            "steps_to_top1": steps_to_top1(group.target_rank_after.tolist()),
            "final_accumulated_rank": final.accumulated_rank, "max_step_rank": group.step_rank.max(),
            "final_cosine_first": final.cosine_first, "min_cosine_first": group.cosine_first.min(),
            "mean_cosine_previous": group.cosine_previous.mean(), "final_vjp_cosine_first": final.vjp_cosine_first,
            "neg_vjp_rank_first": group.target_rank_neg_vjp.iloc[0], "neg_vjp_rank_last": final.target_rank_neg_vjp,
            "steps_neg_vjp_top1": int((group.target_rank_neg_vjp == 0).sum()),
        })
    return pd.DataFrame(rows)


def _steps_to_top1_text(steps: pd.Series) -> str:
    reached = steps.dropna()
    if reached.empty:
        return "no edit made it top-1 within the steps"
    return f"median steps to top-1 where reached: {reached.median():g}, range {reached.min():g}-{reached.max():g}"


def ft_trace_markdown(trace: pd.DataFrame, model: str) -> str:
    first = trace.iloc[0]
    n_steps = int(trace.step.max())
    summary = trace_summary(trace)
    per_layer = summary.groupby("layer").agg(
        P=("n_tokens", "mean"), loss_first=("first_loss", "mean"), loss_final=("final_loss", "mean"),
        target_prob_final=("final_target_prob", "mean"), top1_at_end=("top1_at_end", "mean"),
        steps_to_top1_median=("steps_to_top1", "median"), accumulated_rank_max=("final_accumulated_rank", "max"),
        cosine_first_final=("final_cosine_first", "mean"), cosine_first_min=("min_cosine_first", "min"),
        cosine_previous=("mean_cosine_previous", "mean"), vjp_cosine_first_final=("final_vjp_cosine_first", "mean"),
        neg_vjp_rank_step1=("neg_vjp_rank_first", "median"),
        neg_vjp_rank_last=("neg_vjp_rank_last", "median"),
    ).reset_index()
    within_p = (summary.final_accumulated_rank <= summary.n_tokens).mean()
    example_case, example_layer = summary.case_id.iloc[0], summary.layer.max()
    example = trace[(trace.case_id == example_case) & (trace.layer == example_layer)][
        ["step", "loss", "target_prob_after", "target_rank_after", "step_rank", "accumulated_rank", "rank_bound",
         "cosine_first", "cosine_previous", "target_rank_neg_vjp", "target_rank_accumulated_output"]]
    rank_note = ("ranks from the stacked factors of the per-step updates (exact for gradient descent)"
                 if first.optimizer == "sgd" else "ranks by SVD of the weight differences (Adam: no factor structure)")
    return "\n\n".join([
        f"# Beyond the paper: an FF2 fine-tuning edit step by step ({model})",
        f"Our own findings (issue 16), not claims of the paper. {summary.case_id.nunique()} CounterFact cases x "
        f"layers {', '.join(map(str, sorted(summary.layer.unique())))}; {n_steps} steps of {first.optimizer} "
        f"(lr {first.lr:g}) on the FF2 weight only, no clamp; loss: cross-entropy of target_new's first token at "
        f"the last position; vocabulary V = {int(first.vocab_size)}; {rank_note}.",
        "## Per layer (over cases)\n"
        f"The target is the model's top-1 after the last step in **{_percent(summary.top1_at_end.mean())}** of the "
        f"{len(summary)} edits ({_steps_to_top1_text(summary.steps_to_top1)}). "
        f"The accumulated update's rank stays within the prompt length P in **{_percent(within_p)}** of the edits "
        "(the edited matrix's own input does not depend on it, so every step shares the row space of the inputs). "
        f"Cosine of the last step's update with the first step's: mean {summary.final_cosine_first.mean():.3f}, "
        f"smallest over all steps {summary.min_cosine_first.min():.3f}; with the previous step's: mean "
        f"{summary.mean_cosine_previous.mean():.3f}; of the last token's VJP delta_last with step 1's (the "
        f"direction written into the output): mean {summary.final_vjp_cosine_first.mean():.3f}. "
        "Target rank in LL(-delta) at the last token (0 = top): "
        f"median {summary.neg_vjp_rank_first.median():g} at step 1, {summary.neg_vjp_rank_last.median():g} at step "
        f"{n_steps}.\n\n" + markdown_table(per_layer),
        f"## Example: case {example_case}, layer {example_layer}\n\n" + markdown_table(example, ".4g"),
    ]) + "\n"


# --- One-line findings for the scorecard's "beyond the paper" table ---------------------------
def attention_findings(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, str, str]]:
    """(question, our numbers, gallery figure) rows from the attention tables."""
    ranks, prompts = tables["attention_ranks"], tables["prompts"]
    prompts = prompts[prompts.case_id.isin(ranks.case_id.unique())]
    shares = rank_shares(ranks)
    full = ", ".join(f"{name} {_percent(row.full)}" for name, row in shares.iterrows() if name != "W_Q")
    rows = [(
        "Are W_Q, W_K, W_V, W_O gradients of rank P, like FF1/FF2's? (Fig 3 style)",
        f"rank = min(P, d_out) below the last layer: {full}; W_Q: rank P - 1 in {_percent(shares.p_minus_1['W_Q'])} "
        "(the first token's query gets no gradient)", "attn_fig3")]
    lemma = tables["attention_lemma"]
    if not lemma.empty:
        agree = rank_agreement(lemma)
        rows.append(("Does Lemma 4.1 hold for each attention projection?",
                     f"max relative error {lemma.relative_error_batched.max():.1e} (padded batch) against autograd; "
                     f"rank from factors = float64 matrix_rank in {agree}/{len(lemma)}", "attn_fig3"))
    largest = largest_segment_by_layer(tables["attention_vjp_norms"], prompts)
    rows.append(("Where is each projection's VJP largest, layer by layer? (Fig 5 style)", largest_segment_text(largest),
                 "attn_fig5"))
    per_layer = last_token_target_ranks(tables["attention_target_ranks"], prompts)
    layers = bottom_layers(per_layer)
    rows.append(("Is target_new at the least-probable end of LL(W_O's VJP) at the last token, as for FF2? (Fig 6 style)",
                 f"median within 1% of V-1 in {len(layers)} of {len(per_layer)} layers "
                 f"({layer_runs(layers)})", "attn_fig6"))
    return rows


def ft_trace_findings(trace: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(question, our numbers, gallery figure) rows from the FT trace table."""
    summary = trace_summary(trace)
    first = trace.iloc[0]
    setting = (f"{summary.case_id.nunique()} cases x layers {layer_runs(summary.layer.unique())}; "
               f"{int(trace.step.max())} {first.optimizer} steps, lr {first.lr:g}")
    by_layer = summary.groupby("layer")
    cosine = ", ".join(f"{layer}: {value:.2f}" for layer, value in by_layer.final_cosine_first.mean().items())
    neg_vjp = ", ".join(f"{layer}: {a:g} -> {b:g}" for layer, (a, b) in
                        by_layer[["neg_vjp_rank_first", "neg_vjp_rank_last"]].median().iterrows())
    return [
        ("How many steps until an FF2 fine-tuning edit makes target_new top-1?",
         f"{_percent(summary.top1_at_end.mean())} top-1 at the end ({setting}); "
         f"{_steps_to_top1_text(summary.steps_to_top1)}", "ft_trace_steps"),
        ("Does the accumulated update's rank stay at P over the steps?",
         f"rank <= P in {_percent((summary.final_accumulated_rank <= summary.n_tokens).mean())} of the edits "
         f"(largest {int(summary.final_accumulated_rank.max())}, P = {int(summary.n_tokens.min())}-"
         f"{int(summary.n_tokens.max())})", "ft_trace_steps"),
        ("Does the per-step update keep step 1's direction?",
         f"cosine with the previous step: mean {summary.mean_cosine_previous.mean():.3f}; the last step's with step "
         f"1's by layer: {cosine}", "ft_trace_steps"),
        ("Is target_new top of LL(-delta) at the last token during the edit?",
         f"median target rank, step 1 -> last step, by layer: {neg_vjp}", "ft_trace_steps"),
    ]


def free_generation_finding(table1: pd.DataFrame) -> tuple[str, str, str]:
    """The scorecard's "beyond the paper" row (question, ours, figure): each Table 1 row's efficacy by
    free generation beside its teacher-forced efficacy and ES."""
    question = ("Does the edited model say target_new when it continues the rewrite prompt greedily? (efficacy "
                "by free generation, issue 26; \"The Mirage of Model Editing\": teacher forcing overstates efficacy)")
    if "gen_efficacy_mean" not in table1 or table1["gen_efficacy_mean"].isna().all():
        return question, "not measured in this Table 1 (made before the metric): rerun edit_evaluate", "-"
    rows = [f"{r.label} {r.gen_efficacy_mean:.0f} / {r.efficacy_mean:.0f} / {r.efficacy_success_mean:.0f}"
            for r in table1.itertuples() if not pd.isna(r.gen_efficacy_mean)]
    return question, ("generated / teacher-forced efficacy / ES (%, tables/table1.md): " + "; ".join(rows)), "-"
