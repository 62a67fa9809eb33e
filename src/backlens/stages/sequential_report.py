"""Rule ``sequential_report``: results/<run>/sequential.md (docs/sequential.md) from the joined
sequential-editing table and its timings; every number comes from those tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.editing.run_config import refusal_note, settings_of
from backlens.editing.sequential import SequentialSettings, detect_collapse
from backlens.io import write_text


def pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.1f}"


def num(value, digits: int = 2) -> str:
    """Fixed-point, except from 1e6 on (a collapsed model's perplexity reaches 1e79): 3 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.2e}" if abs(float(value)) >= 1e6 else f"{float(value):.{digits}f}"


def table_md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def collapse_text(rows: pd.DataFrame, settings: SequentialSettings) -> str:
    found = detect_collapse(rows.to_dict("records"), rows.unedited_perplexity.iloc[0], settings)
    if found["collapse_at"] is None:
        return "none"
    return f"{found['collapse_at']} ({' and '.join(found['collapse_reasons'])})"


def summary_rows(single: pd.DataFrame, timings: pd.DataFrame, settings: SequentialSettings) -> list[list[str]]:
    out = []
    for method, rows in single.groupby("method", sort=False):
        last = rows.iloc[-1]
        timed = timings[(timings.method == method) & (timings.series == "single")]
        per_edit = num(timed.seconds_per_edit.iloc[0], 2) if len(timed) else "n/a"
        out.append([last.label, str(int(last.n_edits)), pct(last.retention), pct(last.neighborhood_success),
                    pct(last.neighborhood_success_unedited), num(last.perplexity), num(last.perplexity_ratio, 3),
                    num(last.update_norm_relative, 4), str(int(last.n_skipped)), collapse_text(rows, settings), per_edit])
    return out


def curve_rows(single: pd.DataFrame, column: str, checkpoints: list[int]) -> list[list[str]]:
    out = []
    for _, rows in single.groupby("method", sort=False):
        values = dict(zip(rows.n_edits, rows[column]))
        out.append([rows.label.iloc[0]] + [pct(values[n]) if n in values else "" for n in checkpoints])
    return out


def batch_rows(table: pd.DataFrame) -> list[list[str]]:
    """One batch update of the first N facts against the same method's sequential checkpoint at N."""
    out = []
    batch = table[table.series == "batch"]
    for _, row in batch.sort_values(["method", "n_edits"]).iterrows():
        seq = table[(table.series == "single") & (table.method == row.method) & (table.n_edits == row.n_edits)]
        s = seq.iloc[0] if len(seq) else None
        out.append([row.label, str(int(row.n_edits)), pct(row.retention), pct(s.retention) if s is not None else "not run",
                    pct(row.neighborhood_success), pct(s.neighborhood_success) if s is not None else "",
                    num(row.perplexity_ratio, 3), num(s.perplexity_ratio, 3) if s is not None else "",
                    num(row.update_norm_relative, 4), num(s.update_norm_relative, 4) if s is not None else ""])
    return out


def shift_goal_lines(single: pd.DataFrame, floor: float, n_goal: int) -> list[str]:
    """Per shift variant: retention at ``n_goal`` edits against ``floor``, where it first fell below, and
    the accumulated update there against the first edit's (how far the weights had moved)."""
    lines = []
    for method, rows in single[single.method.str.startswith("shift")].groupby("method", sort=False):
        at = rows[rows.n_edits == n_goal]
        below = rows[rows.retention < floor]
        if len(at):
            verdict = "meets" if float(at.retention.iloc[0]) >= floor else "misses"
            text = f"retention {pct(at.retention.iloc[0])}% after {n_goal} edits: {verdict} the goal"
        else:
            text = f"not run to {n_goal} edits (largest: {int(rows.n_edits.max())}, retention {pct(rows.retention.iloc[-1])}%)"
        if len(below):
            first = below.iloc[0]
            text += (f"; first below {pct(floor)}% at {int(first.n_edits)} edits (perplexity x{num(first.perplexity_ratio, 3)}, "
                     f"NS {pct(first.neighborhood_success)}% against {pct(first.neighborhood_success_unedited)}% unedited, "
                     f"accumulated update {num(first.update_norm_relative, 3)} x |W0| against "
                     f"{num(rows.update_norm_relative.iloc[0], 3)} x |W0| after {int(rows.n_edits.iloc[0])} edit(s))")
        lines.append(f"- {rows.label.iloc[0]}: {text}.")
    return lines


def table1_beyond_section(cfg: DictConfig) -> list[str]:
    """Table 1 with the rows beyond the paper (its .md as rule edit_table1_beyond wrote it), when given."""
    path = cfg.paths.get("table1_beyond")
    md = Path(path).with_suffix(".md") if path else None
    if md is None or not md.exists():
        return []
    beyond = ", ".join(str(m) for m in cfg.editing.sequential.table1_methods)
    return ["## Table 1 with the rows beyond the paper", "",
            f"Single edits, weights restored after each (Table 1's cases and metrics); the rows after the paper's "
            f"are this issue's methods ({beyond}). Also in `docs/tables/table1_beyond.md`.", "",
            md.read_text(encoding="utf-8").strip(), ""]


def report(table: pd.DataFrame, timings: pd.DataFrame, cfg: DictConfig) -> str:
    settings = settings_of(cfg)
    seq = cfg.editing.sequential
    goal = (float(seq.shift_goal.retention), int(seq.shift_goal.n_edits))
    single = table[table.series == "single"]
    checkpoints = sorted(int(n) for n in single.n_edits.unique())
    ppl = single.unedited_perplexity.dropna()
    not_run = refusal_note(cfg, [*seq.methods, *seq.batch_methods])
    parts = [
        "# Sequential and batch editing (issue 26; beyond the paper)",
        "",
        f"Generated by the rule `sequential_report` from `{cfg.paths.sequential_table}` and its timings; "
        "do not edit by hand. Model "
        f"{', '.join(pd.unique(table.model))}; CounterFact cases from {int(seq.first_case)} in file order (outside "
        "every other range the pipeline uses), each method's edits applied one after another without restoring "
        "the weights. At each checkpoint n every edit made so far is re-scored on the model as it is: retention = "
        "share of the n edits whose rewrite prompt gives P(target_new) > P(target_true) (Table 1's efficacy "
        "success), NS = their neighbour prompts keep P(true) > P(new), held-out perplexity on the cached "
        f"held-out blocks (unedited: {num(ppl.iloc[0]) if len(ppl) else 'n/a'}), and the relative update norm "
        "|W - W0|_F / |W0|_F over the edited weights. Collapse: the first checkpoint with perplexity above "
        f"{settings.perplexity_multiple:g}x the unedited model's or retention below {pct(settings.retention_floor)}%.",
        *(["", not_run] if not_run else []),
        "",
        "![sequential](gallery/sequential.png)",
        "",
        "## At the last checkpoint (single edits in sequence)",
        "",
        table_md(["method", "edits", "retention %", "NS %", "NS unedited %", "perplexity", "x unedited",
                  "rel. update norm", "skipped", "collapse at", "s per edit"], summary_rows(single, timings, settings)),
        "",
        "Skipped: shift edits not applied because the model already predicted the target (they still count in "
        "retention). Seconds per edit: the edits alone (one job, one torch thread; checkpoints' scoring apart).",
        "",
        "## Retention curve (%)",
        "",
        table_md(["method", *map(str, checkpoints)], curve_rows(single, "retention", checkpoints)),
        "",
        "## NS curve (%)",
        "",
        table_md(["method", *map(str, checkpoints)], curve_rows(single, "neighborhood_success", checkpoints)),
        "",
        "## One batch update against the same facts edited in sequence",
        "",
        table_md(["method", "facts", "retention % (batch)", "(sequence)", "NS % (batch)", "(sequence)",
                  "perplexity x (batch)", "(sequence)", "rel. update norm (batch)", "(sequence)"], batch_rows(table)),
        "",
        *table1_beyond_section(cfg),
        f"## The shift's goal: at least {pct(goal[0])}% retention after {goal[1]} edits",
        "",
        *shift_goal_lines(single, *goal),
        "",
        "## Job times",
        "",
        table_md(["method", "series", "edits", "set-up s", "edit s", "s per edit", "checkpoint scoring s"],
                 [[r.method, r.series if pd.isna(r.batch_size) else f"batch {int(r.batch_size)}", str(int(r.n_edits)),
                   num(r.setup_seconds, 1), num(r.edit_seconds, 1), num(r.seconds_per_edit, 2), num(r.eval_seconds, 1)]
                  for r in timings.itertuples()]),
        "",
        "Each job's wall time (model loading included) is in `logs/<run>/benchmarks/edit_sequential_*.tsv` and "
        "`edit_batch_*.tsv`. A series that was killed and resumed: its edit and scoring seconds add up every "
        "checkpoint logged, before and after the kill (edits made after the last checkpoint before it are redone "
        "and counted once); its set-up seconds are the resumed job's.",
        "",
    ]
    return "\n".join(parts)


def run(cfg: DictConfig) -> None:
    table = pd.read_parquet(cfg.paths.sequential_table)
    timings = pd.read_csv(cfg.paths.sequential_timings_table)
    write_text(report(table, timings, cfg), cfg.paths.sequential_report)
