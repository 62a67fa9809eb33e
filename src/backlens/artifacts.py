"""Where each file of a run lies: the one home of the artefact names and paths.

A run's files lie under ``results/<run>/`` and its figures under ``figures/<run>/``. ``ARTIFACTS``
names each file (and the directories some stages take as a whole) by the key that the workflow's
rules, the Hydra config's ``paths.<key>`` and the stages give it. A path names its directory as
``{results}``, ``{editing}``, ... (another entry of ``ARTIFACTS``), just as conf/config.yaml's
``paths`` interpolate ``${paths.results}``; the other fields are filled by the caller: ``{run}``
the run's name, ``{method}`` an editing method, ``{shard}`` a shard's ``<start>-<stop>``, ``{stem}``
a figure's name.

* The workflow builds rule inputs and outputs with :func:`artifact` (``{run}`` and any field not
  given stay Snakemake wildcards).
* conf/config.yaml's ``paths`` refer to the same entries through the ``${artifact:<name>}``
  resolver, which fills the directories from the composed config's own ``paths`` (so
  ``paths.results=...`` or ``paths.tracing=...`` still moves every file under it), ``{run}`` from
  ``run_name`` and ``{method}`` from ``method.name``. Importing this module registers the resolver,
  and the package ``backlens`` imports it, so importing any ``backlens.<module>`` before Hydra
  composes (every stage, benchmark, the workflow's common.smk, the tests) is enough.
"""

from __future__ import annotations

import string
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ARTIFACTS: dict[str, str] = {
    # Directories
    "results": "results/{run}",
    "figures": "figures/{run}",
    "editing": "{results}/editing",
    "tracing": "{results}/tracing",
    "tables": "{results}/tables",
    # Sampled prompts (rule sample_prompts)
    "prompts": "{results}/prompts.parquet",
    "prompts_meta": "{results}/prompts.meta.json",
    # Backward Lens analysis (rules backward_lens, lemma_check, logit_lens_examples, ...)
    "gradient_ranks": "{results}/gradient_ranks.parquet",
    "vjp_norms": "{results}/vjp_norms.parquet",
    "target_ranks": "{results}/target_ranks.parquet",
    "neuron_updates": "{results}/neuron_updates.parquet",
    "vjp_similarity": "{results}/vjp_similarity.parquet",
    "analysis_meta": "{results}/backward_lens.meta.json",
    # One backward_lens shard job's directory: its meta.json with its tables (<name>.parquet) beside it.
    "analysis_shard": "{results}/analysis_shards/{shard}",
    "analysis_shard_meta": "{analysis_shard}/meta.json",
    "analysis_shard_table": "{analysis_shard}/{table}.parquet",
    "lemma_check": "{results}/lemma_check.parquet",
    "logit_lens_cells": "{results}/logit_lens_cells.parquet",
    "logit_lens_tokens": "{results}/logit_lens_tokens.parquet",
    "embedding_anisotropy": "{results}/embedding_anisotropy.parquet",
    "analysis_report": "{results}/analysis.md",
    # Beyond the paper (issue 16): attention projections, FT trace
    "attention_ranks": "{results}/attention/ranks.parquet",
    "attention_vjp_norms": "{results}/attention/vjp_norms.parquet",
    "attention_target_ranks": "{results}/attention/target_ranks.parquet",
    "attention_lemma": "{results}/attention/lemma.parquet",
    "attention_meta": "{results}/attention/meta.json",
    "attention_report": "{results}/attention.md",
    "ft_trace": "{results}/ft_trace/steps.parquet",
    "ft_trace_meta": "{results}/ft_trace/meta.json",
    "ft_trace_report": "{results}/ft_trace.md",
    # A figure drawn by render_figure or compare_runs (its .png beside it); stem: the figure's name.
    "figure": "{figures}/{stem}.pdf",
    # A figure over the runs of a sweep (rule compare_runs); sweep: the sweep's label.
    "comparison": "figures/compare/{sweep}/{stem}.pdf",
    # Editing benchmark
    "editing_stats": "{editing}/ff2_mom2.pt",
    "editing_heldout": "{editing}/heldout_tokens.pt",
    "editing_mend": "{editing}/mend_editor.pt",
    "editing_cases": "{editing}/{method}/cases.parquet",
    "editing_summary": "{editing}/{method}/summary.json",
    "editing_timings": "{editing}/{method}/timings.json",
    # One edit_evaluate shard job's cases (its meta, .json, beside it: editing_evaluate.shard_meta_path).
    "editing_shard": "{editing}/{method}/shards/{shard}.parquet",
    "editing_sweep": "{editing}/shift_sweep.parquet",
    "editing_sweep_choice": "{editing}/shift_sweep_choice.json",
    "editing_method_sweep": "{editing}/{method}_sweep.parquet",
    "editing_method_sweep_choice": "{editing}/{method}_sweep_choice.json",
    # table1.csv with table1.md and table1.tex beside it; the same for table7 and edit_timings.
    "table1": "{tables}/table1.csv",
    "table7": "{tables}/table7.csv",
    # Table 1 with the rows beyond the paper after its own (editing.sequential.table1_methods; issue 26).
    "table1_beyond": "{tables}/table1_beyond.csv",
    "edit_timings": "{tables}/edit_timings.csv",
    "fig26": "{figures}/fig26.pdf",
    # Many edits without restoring (issue 26): per method, a series of single edits in sequence
    # ({series} = single) or one batch update of that many facts (batch<N>); the tables of every
    # series joined in sequential.parquet; the report from it.
    "sequential": "{editing}/sequential",
    "sequential_series": "{sequential}/{method}/{series}",
    "sequential_checkpoints": "{sequential_series}/checkpoints.parquet",
    "sequential_norms": "{sequential_series}/update_norms.parquet",
    "sequential_cases": "{sequential_series}/cases.parquet",
    "sequential_summary": "{sequential_series}/summary.json",
    "sequential_timings": "{sequential_series}/timings.json",
    "sequential_table": "{sequential}/sequential.parquet",
    "sequential_timings_table": "{sequential}/timings.csv",
    "sequential_report": "{results}/sequential.md",
    # The small statistics setting against the default (issue 23), small_statistics.md beside it.
    "small_statistics": "{tables}/small_statistics.csv",
    # Shared by every run (the corpus comparison's text).
    "counterfact_corpus": "results/corpus/counterfact_true_sentences.txt",
    # ROME causal tracing
    "tracing_screening": "{tracing}/screening.parquet",
    "tracing_screening_meta": "{tracing}/screening.json",
    "tracing_screening_timings": "{tracing}/screening_timings.json",
    # One trace_shard job's facts table (tokens, effects and meta beside it: causal_tracing.shard_files).
    "tracing_shard": "{tracing}/shards/{shard}.parquet",
    "tracing_facts": "{tracing}/facts.parquet",
    "tracing_tokens": "{tracing}/tokens.parquet",
    "tracing_effects": "{tracing}/effects.parquet",
    "tracing_segment_effects": "{tracing}/segment_effects.parquet",
    "tracing_average_effects": "{tracing}/average_effects.parquet",
    "tracing_summary": "{tracing}/summary.json",
    "tracing_timings": "{tracing}/timings.json",
    "tracing_fig_examples": "{figures}/tracing_examples.pdf",
    "tracing_fig_avg": "{figures}/tracing_avg.pdf",
    "tracing_fig_avg_lines": "{figures}/tracing_avg_lines.pdf",
    "tracing_fig_severed": "{figures}/tracing_severed.pdf",
}

# A script run standalone (no shard given by the workflow) works on the whole range: shards/all.*.
WHOLE_SHARD = "all"


def _fields(pattern: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(pattern) if field]


def artifact(name: str, **fields: str) -> str:
    """The path of artefact ``name``, e.g. ``artifact("editing_cases", method="rome")`` ->
    ``results/{run}/editing/rome/cases.parquet``. Directories are expanded from ``ARTIFACTS``
    unless given; a field not given (``run`` included) stays a ``{field}`` wildcard."""
    return _expand(name, fields, {})


def artifact_paths(names, **fields: str) -> dict[str, str]:
    """{name: path} of several artefacts (rule inputs and outputs)."""
    return {name: artifact(name, **fields) for name in names}


def _expand(name: str, fields: dict, directories) -> str:
    values = {}
    for field in _fields(ARTIFACTS[name]):
        if field in fields:
            values[field] = fields[field]
        elif field in directories:
            values[field] = str(directories[field])
        elif field in ARTIFACTS:
            values[field] = _expand(field, fields, directories)
        else:
            values[field] = "{" + field + "}"
    return ARTIFACTS[name].format(**values)


def series_name(batch: int | None) -> str:
    """A sequential-editing series' directory: ``single`` (single edits one after another) or
    ``batch<N>`` (N facts in one batch update)."""
    return "single" if batch is None else f"batch{int(batch)}"


def _resolve(name: str, _root_: DictConfig) -> str:
    """``${artifact:<name>}``: the directories from the config's own ``paths`` where it has them
    (``paths.results``, ``paths.editing``, ``paths.tracing``), the fields from the config."""
    fields = {
        "run": str(_root_.run_name),
        "method": str(_root_.method.name),
        "shard": WHOLE_SHARD,
        # paths.figure's default (a script run standalone): figures/<run>/figure.pdf.
        "stem": "figure",
        "series": series_name(OmegaConf.select(_root_, "editing.sequential.batch", default=None)),
    }
    return _expand(name, fields, _root_.paths)


def shard_files(facts_path: str | Path) -> dict[str, Path]:
    """A trace_shard job's files: its facts table at ``facts_path``, tokens, effects and meta beside it."""
    facts = Path(facts_path)
    stem = facts.name.removesuffix(".parquet")
    return {
        "facts": facts,
        "tokens": facts.with_name(f"{stem}.tokens.parquet"),
        "effects": facts.with_name(f"{stem}.effects.parquet"),
        "meta": facts.with_name(f"{stem}.json"),
    }


def shard_meta_path(cases_path: str | Path) -> Path:
    """An edit_evaluate shard job's meta, beside its cases table."""
    return Path(cases_path).with_suffix(".json")


def register_resolver() -> None:
    """Register ``${artifact:<name>}`` with OmegaConf (a second call does nothing)."""
    if not OmegaConf.has_resolver("artifact"):
        OmegaConf.register_new_resolver("artifact", _resolve)


register_resolver()
