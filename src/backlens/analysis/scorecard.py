"""The claims scorecard's rows: one per claim of the paper (and of ROME's causal tracing) that this
project measures, with the paper's number, ours, a verdict and the figure (rules ``scorecard`` and
``scorecard_models``).

Every number comes from one run's result tables; the paper's numbers and the verdict thresholds come
from conf/paper/backward_lens.yaml. A verdict is "holds", "partly" or "does not", by the rule printed
in its row's "rule" column, or "not measured" where the run lacks the claim's evidence (a Table 1 /
Table 7 row of a method its model's editors refuse).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.analysis.aggregate import layer_runs
from backlens.figures.neurons import signed_update_ranks

HOLDS, PARTLY, DOES_NOT = "holds", "partly", "does not"
# A claim whose evidence the run does not have (e.g. MEMIT's row on a model MEMIT refuses): no verdict.
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Row:
    claim: str
    paper: str
    ours: str
    verdict: str
    rule: str
    figure: str  # gallery image name (docs/gallery/<figure>.png) or a docs file

    def cells(self) -> list[str]:
        return [self.claim, self.paper, self.ours, f"**{self.verdict}**", self.rule, figure_link(self.figure)]


def figure_link(figure: str) -> str:
    """A markdown link from docs/ to a gallery image (docs/gallery/<figure>.png) or a docs file."""
    return f"[{figure}]({figure if figure.endswith('.md') else f'gallery/{figure}.png'})"


def _graded(value: float, holds_at: float, partly_at: float, *, lower_is_better: bool = False) -> str:
    if lower_is_better:
        value, holds_at, partly_at = -value, -holds_at, -partly_at
    return HOLDS if value >= holds_at else PARTLY if value >= partly_at else DOES_NOT


def gradient_rank_rows(ranks: pd.DataFrame, paper: DictConfig) -> list[Row]:
    last_layer = ranks.layer.max()
    inner, last = ranks[ranks.layer < last_layer], ranks[ranks.layer == last_layer]
    share = float((inner["rank"] == inner.n_tokens).mean())
    last_share = float((last["rank"] == paper.fig3_gradient_rank.last_layer_rank).mean())
    floor = float(paper.fig3_gradient_rank.min_share_rank_equals_p)
    return [
        Row("FF1/FF2 gradient rank = prompt length P below the last layer (Fig 3)", f"> {100 * floor:.1f}%",
            f"{100 * share:.2f}% of {len(inner)} gradients", _graded(share, floor, 0.5),
            f"holds at >= {100 * floor:.1f}%, partly at >= 50%", "fig3"),
        Row("gradient rank in the last layer is 1 (Fig 3)", "always", f"{100 * last_share:.1f}% of {len(last)}",
            _graded(last_share, 1.0, 0.5), "holds at 100%, partly at >= 50%", "fig3"),
    ]


def fig4_row(cells: pd.DataFrame, tokens: pd.DataFrame, paper: DictConfig) -> Row:
    """Layers in which target_new is among the k least probable tokens of LL(delta) at the last token."""
    many = float(paper.verdicts.many_layers)
    parts, shares = [], []
    last_positions = cells.groupby("example").position.transform("max")
    at_last = cells[(cells.vector == "ff2_vjp") & (cells.position == last_positions) & ~cells.is_zero]
    bottom = tokens[(tokens.vector == "ff2_vjp") & (tokens.end == "bottom")]
    for example, group in at_last.groupby("example"):
        head = group.iloc[0]
        ends = bottom[(bottom.example == example) & (bottom.position == head.position)]
        hits = sorted(set(ends[ends.token_id == head.target_new_id].layer))
        shares.append(len(hits) / group.layer.nunique())
        parts.append(f"\"{head.target_new}\": {len(hits)}/{group.layer.nunique()} (layers {layer_runs(hits)})")
    k = int(tokens.k.max()) + 1
    verdict = HOLDS if min(shares) >= many else PARTLY if max(shares) > 0 else DOES_NOT
    return Row(f"at the last token, LL(delta)'s least probable tokens include the target in many layers (Fig 4; "
               f"ours: among the {k} least probable)", "\"many layers\" (GPT-2 small)", "; ".join(parts), verdict,
               f"holds if every example has it in >= {100 * many:.0f}% of layers, partly if any has it", "fig4")


# Fig 5's claim names two groups; each is scored on its own, so one cannot hide the other.
FIG5_GROUPS = {"the subject tokens": ("first_subject", "middle_subject", "last_subject"), "the last token": ("last",)}


def fig5_rows(norms: pd.DataFrame, prompts: pd.DataFrame, paper: DictConfig) -> list[Row]:
    """Share of the summed FF2 VJP norm against share of the tokens, for the subject tokens and for the
    last token apart (each token counted once, by its primary segment)."""
    ff2 = norms[norms.module == "ff2"].merge(prompts[["case_id", "position", "segment"]], on=["case_id", "position"])
    mass = ff2.groupby("segment").norm.sum() / ff2.norm.sum()
    tokens = prompts.segment.value_counts(normalize=True)
    needed = float(paper.verdicts.norm_concentration)
    rows = []
    for group, segments in FIG5_GROUPS.items():
        share = float(mass.reindex(list(segments)).fillna(0).sum())
        token_share = float(tokens.reindex(list(segments)).fillna(0).sum())
        # Their share of the norm only means something against their share of the tokens.
        concentration = share / token_share
        verdict = HOLDS if concentration >= needed else PARTLY if concentration > 1 else DOES_NOT
        rows.append(Row(f"FF2 VJP norm concentrates on {group} (Fig 5: \"most of the norm sits on the subject tokens "
                        "and the last token\")", "\"most\" (GPT-2 XL)",
                        f"{100 * share:.1f}% of the summed norm on {100 * token_share:.1f}% of the tokens "
                        f"({concentration:.2f}x their share)", verdict,
                        f"holds at >= {needed:g}x their share of tokens, partly above 1x", "fig5"))
    return rows


def fig6_row(target_ranks: pd.DataFrame, prompts: pd.DataFrame, paper: DictConfig) -> Row:
    vocab_size = int(target_ranks.vocab_size.iloc[0])
    last = target_ranks.merge(prompts[prompts.is_last][["case_id", "position"]], on=["case_id", "position"])
    median = last[last["rank"] >= 0].groupby("layer")["rank"].median() / (vocab_size - 1)
    bottom = float(paper.verdicts.bottom_share)
    layers = median[median >= 1 - bottom].index
    share = len(layers) / len(median)
    verdict = HOLDS if share > paper.verdicts.most_layers else PARTLY if len(layers) else DOES_NOT
    return Row("the last token's VJP ranks the target at the least-probable end in most layers (Fig 6)",
               "most layers (GPT-2 XL)", f"{len(layers)} of {len(median)} layers ({layer_runs(layers)})", verdict,
               f"a layer counts if the median rank is within {100 * bottom:g}% of V-1; holds in > "
               f"{100 * paper.verdicts.most_layers:.0f}% of layers, partly in any", "fig6")


def fig9_row(updates: pd.DataFrame, paper: DictConfig) -> Row:
    signed = signed_update_ranks(updates)
    top = float(paper.verdicts.top_share)
    median = signed.groupby("layer").relative.median()
    layers = median[median <= top].index
    share = len(layers) / len(median)
    verdict = HOLDS if share > paper.verdicts.most_layers else PARTLY if len(layers) else DOES_NOT
    return Row(paper.fig9_value_shift.claim + " (sign-aware: the step's effect at the last token)",
               paper.fig9_value_shift.paper_number,
               f"median target rank in the top {100 * top:g}% in {len(layers)} of {len(median)} layers "
               f"({layer_runs(layers)}); {100 * float((signed.relative <= top).mean()):.0f}% of the top-k changes",
               verdict, f"holds in > {100 * paper.verdicts.most_layers:.0f}% of layers, partly in any", "fig9")


def _peak(averages: pd.DataFrame, kind: str) -> pd.Series:
    table = averages[averages.kind == kind]
    return table.loc[table["mean"].idxmax()]


def tracing_rows(averages: pd.DataFrame, summary: dict, paper: DictConfig) -> list[Row]:
    rome, verdicts = paper.rome_tracing, paper.verdicts
    n_layers = int(summary.get("n_layers") or averages.layer.max() + 1)
    low, high = (float(x) for x in verdicts.middle_depth)
    setting = f"{summary['n_traced']} facts, window {summary['window']} of {n_layers} layers"
    rows = []
    mlp = _peak(averages, "mlp")
    depth = mlp.layer / (n_layers - 1)
    right_place = [mlp.segment == "last_subject", low <= depth < high]
    rows.append(Row(rome.mlp_claim + " (ROME)", rome.mlp_paper_number,
                    f"{mlp.segment.replace('_', ' ')}, layer {mlp.layer} of {n_layers} (depth {depth:.2f}), "
                    f"effect {mlp['mean']:.3f} [{mlp.ci_low:.3f}, {mlp.ci_high:.3f}]; {setting}",
                    [DOES_NOT, PARTLY, HOLDS][sum(right_place)],
                    f"segment and depth in [{low}, {high}): holds if both, partly if one", "tracing_avg"))
    attention = _peak(averages, "attention")
    depth = attention.layer / (n_layers - 1)
    right_place = [attention.segment == "last", depth >= high]
    rows.append(Row(rome.attention_claim + " (ROME)", rome.attention_paper_number,
                    f"{attention.segment.replace('_', ' ')}, layer {attention.layer} of {n_layers} (depth {depth:.2f}), "
                    f"effect {attention['mean']:.3f}", [DOES_NOT, PARTLY, HOLDS][sum(right_place)],
                    f"segment and depth >= {high}: holds if both, partly if one", "tracing_avg"))
    at_subject = averages[(averages.segment == "last_subject") & (averages.layer / (n_layers - 1) < high)]
    curves = at_subject.pivot(index="layer", columns="kind", values="mean")
    if {"residual", "residual_mlp_severed", "residual_attention_severed"} <= set(curves.columns):
        layer = int(curves.residual.idxmax())
        base = curves.residual[layer]
        mlp_left = curves.residual_mlp_severed[layer] / base
        attention_left = curves.residual_attention_severed[layer] / base
        checks = [mlp_left < 0.5, attention_left > mlp_left]
        rows.append(Row(rome.severed_claim + " (ROME)", rome.severed_paper_number,
                        f"at layer {layer} (the residual peak): {base:.3f} -> {curves.residual_mlp_severed[layer]:.3f} "
                        f"MLP-severed ({100 * mlp_left:.0f}% left), {curves.residual_attention_severed[layer]:.3f} "
                        f"attention-severed ({100 * attention_left:.0f}% left)", [DOES_NOT, PARTLY, HOLDS][sum(checks)],
                        "MLP-severed keeps < 50% and attention-severed keeps more: holds if both, partly if one",
                        "tracing_severed"))
    return rows


def missing_rows(index, methods, table: str) -> str:
    """"" where ``index`` has every method, otherwise what a not-measured row says is missing."""
    missing = [m for m in methods if m not in index]
    return f"not measured: no {' or '.join(missing)} row in {table} (not run on this model)" if missing else ""


def editing_rows(table1: pd.DataFrame, table7: pd.DataFrame, timings: pd.DataFrame, paper: DictConfig) -> list[Row]:
    """Table 1 and 7 claims; per-edit seconds come from edit_timings (kept out of Table 1, which is
    byte-identical run to run). A claim whose methods the run lacks reads "not measured"."""
    by_method = table1.set_index("method")
    holds_at, partly_at = (float(x) for x in paper.verdicts.efficacy_gap_points)
    paper_rows = paper.table1.rows
    efficacy = (paper.shift_efficacy.claim, f"shift {paper_rows.shift[0]} vs ROME {paper_rows.rome[0]} (GPT-2 XL, "
                f"{paper.table1.n_cases} cases)")
    efficacy_rule = f"gap <= {holds_at:g} points holds, <= {partly_at:g} partly"
    missing = missing_rows(by_method.index, ("shift", "rome"), "Table 1")
    if missing:
        rows = [Row(*efficacy, missing, NOT_MEASURED, efficacy_rule, "tables/table1.md")]
    else:
        n_cases = int(by_method.loc["shift", "n_cases"])
        gap = float(by_method.loc["rome", "efficacy_mean"] - by_method.loc["shift", "efficacy_mean"])
        rows = [Row(*efficacy, f"shift {by_method.loc['shift', 'efficacy_mean']:.0f} vs ROME "
                    f"{by_method.loc['rome', 'efficacy_mean']:.0f} ({n_cases} cases): "
                    + (f"{abs(gap):.0f} points {'below' if gap > 0 else 'above'} ROME" if gap else "equal"),
                    _graded(abs(gap), holds_at, partly_at, lower_is_better=True), efficacy_rule, "tables/table1.md")]
    rows += shift_variant_rows(by_method, paper)
    times = timings.set_index("method").edit_seconds_mean.drop("none", errors="ignore")
    cost_rule = "holds if a forward pass shift (any variant) is the fastest method, partly if faster than ROME"
    missing = missing_rows(times.index, ("shift", "rome"), "the edit timings")
    if missing:
        rows.append(Row(paper.shift_cost.claim, paper.shift_cost.paper_number, missing, NOT_MEASURED, cost_rule,
                        "tables/table1.md"))
    else:
        cheapest = times.idxmin()
        rows.append(Row(paper.shift_cost.claim, paper.shift_cost.paper_number,
                        f"shift {times['shift']:.2f} s per edit; cheapest: {by_method.loc[cheapest, 'label']} "
                        f"({times[cheapest]:.2f} s); ROME {times['rome']:.1f} s",
                        # The one-pass variants (shift_*) cost what the paper's shift costs, up to timing noise.
                        HOLDS if str(cheapest).startswith("shift")
                        else PARTLY if times["shift"] < times["rome"] else DOES_NOT,
                        cost_rule, "tables/table1.md"))
    rows += table7_rows(table7, paper)
    return rows


def table7_rows(table7: pd.DataFrame, paper: DictConfig) -> list[Row]:
    """Table 7: the shift against the unedited model, and the paper's ordering (the shift's perplexity no
    higher than ROME's and MEMIT's), each with the number of edits it rests on; "not measured" where the
    run has no row of a method the claim compares (MEMIT on a model MEMIT refuses)."""
    by_method = table7.set_index("method")
    perplexity, n_edits = by_method.perplexity_mean, int(by_method.n_edits.min())
    paper_rows = paper.table7_wikitext_perplexity.rows
    paper_increase = paper_rows.shift / paper_rows.original - 1
    holds_at, partly_at = (float(x) for x in paper.verdicts.perplexity_increase)
    increase_cells = (paper.table7_shift_perplexity.claim, f"{100 * paper_increase:+.1f}% (WikiText)")
    increase_rule = f"increase <= {100 * holds_at:g}% holds, <= {100 * partly_at:g}% partly"
    missing = missing_rows(perplexity.index, ("shift", "none"), "Table 7")
    if missing:
        rows = [Row(*increase_cells, missing, NOT_MEASURED, increase_rule, "tables/table7.md")]
    else:
        increase = float(perplexity["shift"] / perplexity["none"] - 1)
        rows = [Row(*increase_cells, f"{perplexity['shift']:.2f} vs {perplexity['none']:.2f}: {100 * increase:+.1f}% "
                    f"(model samples, {n_edits} edits per method)",
                    _graded(increase, holds_at, partly_at, lower_is_better=True), increase_rule, "tables/table7.md")]
    compared = ("shift", "rome", "memit")
    ordering = ("after the forward pass shift, held-out perplexity is no higher than after ROME and MEMIT (Table 7)",
                ", ".join(f"{m} {paper_rows[m]:g}" for m in compared) + " (WikiText)")
    ordering_rule = f"shift within {100 * holds_at:g}% of or below each: holds if both, partly if one"
    missing = missing_rows(perplexity.index, compared, "Table 7")
    if missing:
        rows.append(Row(*ordering, missing, NOT_MEASURED, ordering_rule, "tables/table7.md"))
        return rows
    # "No higher" within the holds tolerance: the paper's own shift is 0.06% above its MEMIT.
    no_higher = [perplexity["shift"] <= perplexity[m] * (1 + holds_at) for m in ("rome", "memit")]
    ours = ", ".join(f"{m} {perplexity[m]:.2f}" for m in compared) + f" ({n_edits} edits per method)"
    rows.append(Row(*ordering, ours, [DOES_NOT, PARTLY, HOLDS][sum(no_higher)], ordering_rule, "tables/table7.md"))
    return rows


def shift_variant_rows(by_method: pd.DataFrame, paper: DictConfig) -> list[Row]:
    """One row per shift variant of Table 1 (methods shift_*): efficacy and NS against ROME's (no rows
    without ROME's and the paper's shift's, which the claim compares them with)."""
    efficacy_points, ns_points = (float(x) for x in paper.verdicts.variant_vs_rome_points)
    if missing_rows(by_method.index, ("shift", "rome"), "Table 1"):
        return []
    rome = by_method.loc["rome"]
    rows = []
    for method in [m for m in by_method.index if str(m).startswith("shift_")]:
        variant = by_method.loc[method]
        checks = [variant.efficacy_mean >= rome.efficacy_mean - efficacy_points,
                  variant.neighborhood_success_mean >= rome.neighborhood_success_mean - ns_points]
        rows.append(Row(f"{paper.shift_variants.claim}: {variant.label}", paper.shift_variants.paper_number,
                        f"efficacy {variant.efficacy_mean:.0f} vs ROME {rome.efficacy_mean:.0f}; NS "
                        f"{variant.neighborhood_success_mean:.0f} vs ROME {rome.neighborhood_success_mean:.0f} "
                        f"(paper's shift: {by_method.loc['shift', 'efficacy_mean']:.0f} / "
                        f"{by_method.loc['shift', 'neighborhood_success_mean']:.0f})",
                        [DOES_NOT, PARTLY, HOLDS][sum(checks)],
                        f"efficacy within {efficacy_points:g} and NS within {ns_points:g} points of ROME: holds if both, "
                        "partly if one", "tables/table1.md"))
    return rows


def verdict_counts(rows: list[Row]) -> str:
    """"4 holds, 6 partly, 4 does not" (and ", 1 not measured" where any is): the scorecard's summary."""
    verdicts = (HOLDS, PARTLY, DOES_NOT, NOT_MEASURED)
    counts = {verdict: sum(row.verdict == verdict for row in rows) for verdict in verdicts}
    return ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n or verdict != NOT_MEASURED)


def scorecard_markdown(rows: list[Row], model: str, n_prompts: int) -> str:
    header = ["claim", "paper", f"ours ({model})", "verdict", "rule", "figure"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |" for row in rows]
    return "\n".join([
        f"Claims scorecard, {model} ({n_prompts} CounterFact prompts for the analysis): "
        + verdict_counts(rows) + ". Generated by the rule `scorecard` "
        "from the result tables and `conf/paper/backward_lens.yaml`.",
        "",
        *lines,
    ])


# The result tables claim_rows reads (paths.<name>); the rule scorecard passes these and the
# "beyond the paper" tables, the rule scorecard_models these per run.
CLAIM_TABLES = ("prompts", "gradient_ranks", "logit_lens_cells", "logit_lens_tokens", "vjp_norms", "target_ranks",
                "neuron_updates", "tracing_average_effects", "tracing_summary", "table1", "table7", "edit_timings")


def claim_rows(paths: DictConfig, paper: DictConfig) -> list[Row]:
    """Every claim's row (number, verdict) from one run's result tables at ``paths``: the verdict rules
    of docs/scorecard.md and of docs/scorecard_models.md (rule ``scorecard_models``)."""
    prompts = pd.read_parquet(paths.prompts)
    # The rule always passes the tracing tables; a hand-run without them (paths.tracing_summary=null)
    # says so in one row instead of leaving the claims out silently.
    if paths.get("tracing_summary"):
        summary = json.loads(Path(paths.tracing_summary).read_text())
        tracing = tracing_rows(pd.read_parquet(paths.tracing_average_effects), summary, paper)
    else:
        tracing = [Row("ROME's causal-tracing claims (MLP and attention peaks, severed paths)", "see ROME",
                       "not in this copy: the tracing tables were not given", NOT_MEASURED, "-", "tracing_avg")]
    return [
        *gradient_rank_rows(pd.read_parquet(paths.gradient_ranks), paper),
        fig4_row(pd.read_parquet(paths.logit_lens_cells), pd.read_parquet(paths.logit_lens_tokens), paper),
        *fig5_rows(pd.read_parquet(paths.vjp_norms), prompts, paper),
        fig6_row(pd.read_parquet(paths.target_ranks), prompts, paper),
        fig9_row(pd.read_parquet(paths.neuron_updates), paper),
        *tracing,
        *editing_rows(pd.read_csv(paths.table1), pd.read_csv(paths.table7), pd.read_csv(paths.edit_timings), paper),
    ]
