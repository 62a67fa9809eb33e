# ROME causal tracing (the analysis Backward Lens builds on): clean / corrupted / restored
# runs over the known facts the model answers correctly, their tables, and the figures.
# One job screens every fact and chooses those to trace, shard jobs trace parts of that list,
# and a rule merges them into the tables below.
TRACING_TABLES = {
    "tracing_screening": "screening.parquet",
    "tracing_facts": "facts.parquet",
    "tracing_tokens": "tokens.parquet",
    "tracing_effects": "effects.parquet",
    "tracing_segment_effects": "segment_effects.parquet",
    "tracing_average_effects": "average_effects.parquet",
    "tracing_summary": "summary.json",
    # Seconds per stage and fact, apart from the tables and summary (byte-identical run to run).
    "tracing_timings": "timings.json",
}
TRACE_DIR = "results/{run}/tracing"
# A shard job's files: facts table, tokens and effects tables, and meta (range, time, settings);
# the names backlens.stages.causal_tracing.shard_files gives beside the facts table.
TRACE_SHARD_FILES = {
    "tracing_shard": "{start}-{stop}.parquet",
    "tokens": "{start}-{stop}.tokens.parquet",
    "effects": "{start}-{stop}.effects.parquet",
    "meta": "{start}-{stop}.json",
}
TRACING_FIGURES = {
    "tracing_fig_examples": "tracing_examples",
    "tracing_fig_avg": "tracing_avg",
    "tracing_fig_avg_lines": "tracing_avg_lines",
    "tracing_fig_severed": "tracing_severed",
}

register_outputs("tracing", *[f"figures/{{run}}/{name}.pdf" for name in TRACING_FIGURES.values()])


rule trace_screen:
    """Screen known_1000 (is the answer the model's greedy next token?) and choose the facts to trace."""
    input:
        data_inputs("known_facts"),
    output:
        tracing_screening=f"{TRACE_DIR}/{TRACING_TABLES['tracing_screening']}",
        tracing_screening_meta=f"{TRACE_DIR}/screening.json",
        tracing_screening_timings=f"{TRACE_DIR}/screening_timings.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/trace_screen.log",
    benchmark:
        "logs/{run}/benchmarks/trace_screen.tsv"
    params:
        command=lambda wc, output: hydra_call("trace_screen", wc, **output),
    shell:
        STAGE_SHELL


rule trace_shard:
    """Trace positions [start, stop) of the chosen facts: per fact, token and (token, layer, kind) cell."""
    input:
        data_inputs("known_facts"),
        tracing_screening_meta=f"{TRACE_DIR}/screening.json",
    output:
        **{key: f"{TRACE_DIR}/shards/{name}" for key, name in TRACE_SHARD_FILES.items()},
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/trace_shard_{start}-{stop}.log",
    benchmark:
        "logs/{run}/benchmarks/trace_shard_{start}-{stop}.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_shard", wc, f"tracing.shard=[{wc.start},{wc.stop}]", **input, tracing_shard=output.tracing_shard
        ),
    shell:
        STAGE_SHELL


rule trace_merge:
    """Join the shards in order; segment averages over facts with 95% bands; the summary."""
    input:
        tracing_screening_meta=f"{TRACE_DIR}/screening.json",
        tracing_screening_timings=f"{TRACE_DIR}/screening_timings.json",
        tracing_shards=lambda wc: tracing_shard_files(wc, "tracing_shard"),
        shard_tables=lambda wc: tracing_shard_files(wc, "tokens", "effects", "meta"),
    output:
        **{key: f"{TRACE_DIR}/{name}" for key, name in TRACING_TABLES.items() if key != "tracing_screening"},
    conda:
        CONDA_ENV
    log:
        "logs/{run}/trace_merge.log",
    benchmark:
        "logs/{run}/benchmarks/trace_merge.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_merge", wc, tracing_screening_meta=input.tracing_screening_meta,
            tracing_screening_timings=input.tracing_screening_timings,
            tracing_shards=list(input.tracing_shards), **output
        ),
    shell:
        STAGE_SHELL


rule tracing_figures:
    """Per-fact heatmaps, average heatmaps, average lines with 95% bands, severed vs unsevered."""
    input:
        facts="results/{run}/tracing/facts.parquet",
        tokens="results/{run}/tracing/tokens.parquet",
        effects="results/{run}/tracing/effects.parquet",
        averages="results/{run}/tracing/average_effects.parquet",
        summary="results/{run}/tracing/summary.json",
    output:
        **{key: f"figures/{{run}}/{name}.pdf" for key, name in TRACING_FIGURES.items()},
        **{
            f"{key}_png": report(f"figures/{{run}}/{name}.png", caption="../report/tracing.rst", category="{run}",
                                 subcategory="Causal tracing", labels={"figure": name})
            for key, name in TRACING_FIGURES.items()
        },
    conda:
        CONDA_ENV
    log:
        "logs/{run}/tracing_figures.log",
    benchmark:
        "logs/{run}/benchmarks/tracing_figures.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_figures",
            wc,
            tracing_facts=input.facts,
            tracing_tokens=input.tokens,
            tracing_effects=input.effects,
            tracing_average_effects=input.averages,
            tracing_summary=input.summary,
            **{key: value for key, value in output.items() if not key.endswith("_png")},
        ),
        captions={name: caption_for(name) for name in TRACING_FIGURES.values()},
    shell:
        STAGE_SHELL
