"""Rule ``edit_small_statistics``: the small FF2-statistics setting against the default, case for case.

ROME, MEMIT and the whitened-key shift read the FF2 second moment. The default statistics hold
``editing.corpus.n_blocks`` x ``block_tokens`` tokens; the small setting ``n_tokens_per_d_ff`` only as
many blocks as hold that many tokens per FF2 input dimension (issue 23; Gupta et al. 2025 report that
a small fraction of ROME's samples keeps nearly all editing quality). Each metric is compared on the
cases both runs evaluated, as the mean difference (small - default) with a paired bootstrap interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from backlens.editing.table_statistics import TABLE1_METRICS, bootstrap_interval
from backlens.io import write_table, write_text

log = logging.getLogger(__name__)

# Table 1's metrics (percent) and Table 7's per-case perplexity (as it is).
METRICS = [*TABLE1_METRICS, ("perplexity", 1.0, "perplexity")]


def compare_cases(default: pd.DataFrame, small: pd.DataFrame, *, n_resamples: int, seed: int,
                  level: float) -> list[dict]:
    """One row per metric: both means and the paired difference over the cases both tables hold
    (a metric measured on some cases only, entropy and perplexity, on those)."""
    both = default.set_index("case_id").join(small.set_index("case_id"), how="inner", lsuffix="_default",
                                             rsuffix="_small")
    rows = []
    for column, scale, source in METRICS:
        pair = both[[f"{source}_default", f"{source}_small"]].dropna().astype(float) * scale
        difference = (pair[f"{source}_small"] - pair[f"{source}_default"]).to_numpy()
        low, high = bootstrap_interval(difference, n_resamples, seed, level)
        rows.append({"metric": column, "n_cases": len(pair), "default": float(pair[f"{source}_default"].mean()),
                     "small": float(pair[f"{source}_small"].mean()), "difference": float(difference.mean()),
                     "difference_low": low, "difference_high": high})
    return rows


def statistics_tokens(path: str | Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["n_tokens"])


def run(cfg: DictConfig) -> None:
    spec = cfg.editing.small_statistics
    methods = [str(m) for m in spec.methods]
    default_paths, small_paths = list(cfg.paths.small_statistics_default), list(cfg.paths.small_statistics_small)
    if not (len(default_paths) == len(small_paths) == len(methods)):
        raise ValueError(f"paths.small_statistics_default / _small: one per-case table per method of "
                         f"editing.small_statistics.methods ({methods}); got {len(default_paths)} and {len(small_paths)}")
    default_stats, small_stats = (statistics_tokens(p) for p in cfg.paths.small_statistics_stats)
    boot = cfg.editing.bootstrap
    rows = []
    for method, default_path, small_path in zip(methods, default_paths, small_paths):
        default, small = pd.read_parquet(default_path), pd.read_parquet(small_path)
        for row in compare_cases(default, small, n_resamples=int(boot.n_resamples), seed=int(boot.seed),
                                 level=float(boot.level)):
            rows.append({"model": cfg.model.name, "method": method, "default_tokens": default_stats,
                         "small_tokens": small_stats, **row})
    frame = pd.DataFrame(rows)
    level = round(100 * float(boot.level))
    lines = [
        f"# The small statistics setting on {cfg.model.name}",
        "",
        f"FF2 second moments from {small_stats:,} tokens (`editing.corpus.n_tokens_per_d_ff="
        f"{spec.n_tokens_per_d_ff}`) against the default {default_stats:,} tokens, on the same CounterFact cases "
        f"(the first {spec.n_cases} of the evaluation range; generation entropy and perplexity on those of them "
        "that measure it). Accuracies in percent; difference = small - default, mean over cases with a paired "
        f"percentile bootstrap {level}% interval ({boot.n_resamples} resamples, seed {boot.seed}). The held-out "
        "perplexity blocks follow each corpus's statistics blocks, so the two runs' perplexities are measured "
        "on different text: compare their differences within a run (Table 7), not across.",
        "",
        "| method | metric | cases | default | small | difference [interval] |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r.method} | {r.metric} | {r.n_cases} | {r.default:.2f} | {r.small:.2f} | "
              f"{r.difference:+.2f} [{r.difference_low:+.2f}, {r.difference_high:+.2f}] |" for r in frame.itertuples()]
    out = Path(cfg.paths.small_statistics)
    write_table(frame, out)
    write_text("\n".join(lines) + "\n", out.with_suffix(".md"))
    for method, group in frame.groupby("method", sort=False):
        efficacy = group.set_index("metric").loc["efficacy"]
        log.info("%s: efficacy %.1f (default) -> %.1f (small)", method, efficacy["default"], efficacy["small"])
