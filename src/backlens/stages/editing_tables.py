"""Rules ``edit_table1`` and ``edit_table7``: Table 1 (accuracies, entropy) and Table 7 (perplexity)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from backlens.artifacts import artifact
from backlens.editing.columns import FREE_GENERATION_METRICS
from backlens.editing.method_configs import methods_run, not_run_line
from backlens.editing.table_statistics import TABLE1_METRICS, bootstrap_interval
from backlens.io import write_table, write_text

log = logging.getLogger(__name__)

# Efficacy by free generation (issue 26; backlens.editing.free_generation): the greedy continuation
# begins with target_new (gen_*_true: with target_true; gen_*_contains: target_new anywhere in it, as
# whole words; CSV only). Last in the CSV, so the earlier columns keep their places.
GENERATION_METRICS = [(name, 100.0, name) for name in FREE_GENERATION_METRICS]
# Table 1's columns after the paper's and ROME's (header, column stem, digits).
GENERATION_COLUMNS = [("Gen. efficacy", "gen_efficacy", 1), ("Gen. paraphrase", "gen_paraphrase", 1),
                      ("Gen. true target", "gen_efficacy_true", 1)]
PAPER_COLUMNS = ["efficacy", "paraphrase", "neighborhood", "ngram_entropy"]


def method_results(cfg: DictConfig) -> list[tuple[dict, pd.DataFrame]]:
    """(summary, cases) of every Table 1 method the run's model does not refuse, in the configured order."""
    results = []
    for name in methods_run(cfg, cfg.editing.table1_methods):
        summary_path, cases_path = (Path(artifact(key, editing=cfg.paths.editing, method=str(name)))
                                    for key in ("editing_summary", "editing_cases"))
        if not summary_path.exists() or not cases_path.exists():
            raise FileNotFoundError(f"no results for method {name} at {cases_path}: run `snakemake {cases_path}` first")
        results.append((json.loads(summary_path.read_text()), pd.read_parquet(cases_path)))
    return results


def paper_row(cfg: DictConfig, key: str, table: str) -> dict | None:
    """The paper's numbers for this row (GPT-2 XL, whatever our model: the tables show them beside
    ours, labelled with the paper's model)."""
    paper = cfg.paper[table]
    if key not in paper.rows:
        return None
    values = paper.rows[key]
    return dict(zip(PAPER_COLUMNS, values)) if table == "table1" else {"perplexity": float(values)}


def metric_cells(cases: pd.DataFrame, metrics: list[tuple[str, float, str]], boot: DictConfig) -> dict[str, float]:
    """Mean, std and bootstrap interval of each (column, scale, source) over the cases; a cases table
    made before a metric existed (gen_*) gives NaN (n/a in the table), not an error."""
    cells = {}
    for column, scale, source in metrics:
        values = (cases[source].dropna().astype(float) if source in cases else pd.Series(dtype=float)) * scale
        cells[f"{column}_mean"] = float(values.mean()) if len(values) else float("nan")
        cells[f"{column}_std"] = float(values.std(ddof=0)) if len(values) else float("nan")
        cells[f"{column}_ci_low"], cells[f"{column}_ci_high"] = bootstrap_interval(
            values.to_numpy(), int(boot.n_resamples), int(boot.seed), float(boot.level))
    return cells


def table1_frame(cfg: DictConfig) -> pd.DataFrame:
    boot = cfg.editing.bootstrap
    rows = []
    for summary, cases in method_results(cfg):
        row = {"model": summary["model"], "method": summary["method"], "label": summary["label"],
               "n_cases": len(cases), "n_generation_cases": int(cases["generation_entropy"].notna().sum()),
               "n_skipped_already_predicted": int(cases["skipped"].sum()),
               "n_already_predicted_before_edit": int(cases["already_predicted"].sum()),
               "n_multi_token_target_new": int((cases["n_target_new_tokens"] > 1).sum()),
               "generation_source": ",".join(sorted(cases["generation_source"].unique()))}
        row.update(metric_cells(cases, TABLE1_METRICS, boot))
        parts = [row["efficacy_success_mean"], row["paraphrase_success_mean"], row["neighborhood_success_mean"]]
        row["score"] = float(len(parts) / sum(1 / p for p in parts)) if all(p > 0 for p in parts) else 0.0
        paper = paper_row(cfg, str(summary["paper_row"]), "table1") or {}
        for column in PAPER_COLUMNS:
            row[f"paper_{column}"] = paper.get(column, float("nan"))
        row.update(metric_cells(cases, GENERATION_METRICS, boot))
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, stem: str, digits: int = 1) -> str:
    """mean ± std, and the bootstrap 95% interval of the mean where the table has one."""
    mean = row[f"{stem}_mean"]
    if pd.isna(mean):
        return "n/a"
    text = f"{mean:.{digits}f} ± {row[f'{stem}_std']:.{digits}f}"
    if f"{stem}_ci_low" in row and not pd.isna(row[f"{stem}_ci_low"]):
        text += f" [{row[f'{stem}_ci_low']:.{digits}f}, {row[f'{stem}_ci_high']:.{digits}f}]"
    return text


def render(frame: pd.DataFrame, columns: list[tuple[str, str, int]], paper: list[str] | None = None,
           paper_model: str = "") -> tuple[str, str]:
    """Markdown and LaTeX of ``frame``: (header, column stem, digits) cells as mean ± std [95% interval];
    ``paper``: the paper_<column>s shown in one last column, values joined by " / "."""
    headers = ["Method"] + [h for h, _, _ in columns] + ([f"Paper, {paper_model} (" + ", ".join(paper) + ")"] if paper else [])
    body = []
    for _, row in frame.iterrows():
        cells = [row["label"]] + [_cell(row, stem, d) if f"{stem}_mean" in row else f"{row[stem]:.{d}f}"
                                  for _, stem, d in columns]
        if paper:
            cells.append(" / ".join("n/a" if pd.isna(row[f"paper_{c}"]) else f"{row[f'paper_{c}']:g}" for c in paper))
        body.append(cells)
    markdown = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    markdown += "".join("| " + " | ".join(cells) + " |\n" for cells in body)
    latex = "\\begin{tabular}{l" + "r" * (len(headers) - 1) + "}\n\\toprule\n" + " & ".join(headers) + " \\\\\n\\midrule\n"
    latex += "".join(" & ".join(c.replace("±", "$\\pm$").replace("_", "\\_") for c in cells) + " \\\\\n" for cells in body)
    latex += "\\bottomrule\n\\end{tabular}\n"
    return markdown, latex


def run_table1(cfg: DictConfig) -> None:
    frame = table1_frame(cfg)
    columns = [("Efficacy", "efficacy", 1), ("Paraphrase", "paraphrase", 1), ("Neighborhood", "neighborhood", 1),
               ("N-gram entropy", "ngram_entropy", 1), ("ES", "efficacy_success", 1), ("PS", "paraphrase_success", 1),
               ("NS", "neighborhood_success", 1), ("Score", "score", 1), *GENERATION_COLUMNS]
    markdown, latex = render(frame, columns, PAPER_COLUMNS, cfg.paper.table1.model)
    first = frame.iloc[0]
    note = (
        f"\n{cfg.model.name}, CounterFact cases {cfg.editing.first_case}..{int(cfg.editing.first_case) + int(first['n_cases']) - 1}"
        f" ({first['n_cases']} edits per method, weights restored after each); accuracies and ES/PS/NS in %, mean ± std over cases "
        f"[bootstrap {float(cfg.editing.bootstrap.level):.0%} interval of the mean, {cfg.editing.bootstrap.n_resamples} "
        "resamples of the cases: two methods differ beyond sampling noise where their intervals do not overlap]; "
        f"the paper's column: {cfg.paper.table1.model}, {cfg.paper.table1.n_cases} cases (its FT row for our FT-L at "
        "a later layer is its FT-L at layer 35; n/a: not in the paper); "
        f"n-gram entropy (x100) over the first {first['n_generation_cases']} cases, generated from: {first['generation_source']}. "
        "Seconds per edit: edit_timings.md. Skipped (shift, already predicted): "
        + (", ".join(f"{r.method}={r.n_skipped_already_predicted}" for r in frame.itertuples() if r.n_skipped_already_predicted) or "none")
        + f"; multi-token target_new: {first['n_multi_token_target_new']} of {first['n_cases']}. "
        + generation_note(frame, cfg) + "\n"
        + not_run_line(cfg)
    )
    table1 = Path(cfg.paths.table1)
    write_table(frame, table1)
    write_text(markdown + note, table1.with_suffix(".md"))
    write_text(latex, table1.with_suffix(".tex"))
    log.info("Table 1:\n%s", markdown)


def generation_note(frame: pd.DataFrame, cfg: DictConfig) -> str:
    """What the Gen. columns are, and which rows lack them (results made before the metric)."""
    missing = [str(m) for m, v in zip(frame["method"], frame["gen_efficacy_mean"]) if pd.isna(v)]
    return ("Gen. efficacy / paraphrase (%): efficacy by free generation, no teacher forcing: the greedy "
            "continuation of the rewrite / paraphrase prompts (the longer target's tokens + "
            f"{int(cfg.editing.evaluation.free_generation.margin_tokens)} tokens) begins with target_new; "
            "Gen. true target: the rewrite prompt's continuation begins with target_true (editing/README.md, Metrics)"
            + (f"; n/a: not measured in the results of {', '.join(missing)} (made before the metric: rerun edit_evaluate)"
               if missing else "") + ".")


def run_table7(cfg: DictConfig) -> None:
    rows = []
    for summary, cases in method_results(cfg):
        values = cases["perplexity"].dropna().astype(float)
        if values.empty:
            raise ValueError(f"method {summary['method']}: no perplexity measured; set editing.n_perplexity_cases > 0 and rerun it")
        paper = paper_row(cfg, str(summary["paper_row"]), "table7_wikitext_perplexity") or {}
        boot = cfg.editing.bootstrap
        low, high = bootstrap_interval(values.to_numpy(), int(boot.n_resamples), int(boot.seed), float(boot.level))
        rows.append({"model": summary["model"], "method": summary["method"], "label": summary["label"],
                     "n_edits": len(values), "perplexity_mean": float(values.mean()),
                     "perplexity_std": float(values.std(ddof=0)), "perplexity_ci_low": low, "perplexity_ci_high": high,
                     "paper_perplexity": paper.get("perplexity", float("nan"))})
    frame = pd.DataFrame(rows)
    columns = [("Perplexity", "perplexity", 2)]
    markdown, latex = render(frame, columns, ["perplexity"], f"{cfg.paper.table7_wikitext_perplexity.model}, WikiText")
    table7 = Path(cfg.paths.table7)
    write_table(frame, table7)
    write_text(markdown + f"\nCorpus: editing.corpus.source={cfg.editing.corpus.source} (held-out blocks); "
               f"{frame['n_edits'].iloc[0]} edits per method; mean ± std over edits [bootstrap "
               f"{float(cfg.editing.bootstrap.level):.0%} interval of the mean].\n" + not_run_line(cfg),
               table7.with_suffix(".md"))
    write_text(latex, table7.with_suffix(".tex"))
