# ROME causal tracing (the analysis Backward Lens builds on): clean / corrupted / restored
# runs over the known facts the model answers correctly, their tables, and the figures.
TRACING_TABLES = {
    "tracing_screening": "screening.parquet",
    "tracing_facts": "facts.parquet",
    "tracing_tokens": "tokens.parquet",
    "tracing_effects": "effects.parquet",
    "tracing_segment_effects": "segment_effects.parquet",
    "tracing_average_effects": "average_effects.parquet",
    "tracing_summary": "summary.json",
}
TRACING_FIGURES = {
    "tracing_fig_examples": "tracing_examples",
    "tracing_fig_avg": "tracing_avg",
    "tracing_fig_avg_lines": "tracing_avg_lines",
    "tracing_fig_severed": "tracing_severed",
}

DEFAULT_TARGETS.extend(per_model(*[f"figures/{{model}}/{name}.pdf" for name in TRACING_FIGURES.values()]))


rule causal_tracing:
    """Screen known_1000, trace the correctly answered facts; cells, tokens, facts, segment averages."""
    output:
        **{key: f"results/{{model}}/tracing/{name}" for key, name in TRACING_TABLES.items()},
    conda:
        CONDA_ENV
    log:
        "logs/{model}/causal_tracing.log",
    benchmark:
        "logs/{model}/benchmarks/causal_tracing.tsv"
    params:
        command=lambda wc, output: hydra_call("trace_causal", wc, **output),
    shell:
        "{params.command} > {log} 2>&1"


rule tracing_figures:
    """Per-fact heatmaps, average heatmaps, average lines with 95% bands, severed vs unsevered."""
    input:
        facts="results/{model}/tracing/facts.parquet",
        tokens="results/{model}/tracing/tokens.parquet",
        effects="results/{model}/tracing/effects.parquet",
        averages="results/{model}/tracing/average_effects.parquet",
        summary="results/{model}/tracing/summary.json",
    output:
        **{key: f"figures/{{model}}/{name}.pdf" for key, name in TRACING_FIGURES.items()},
        **{f"{key}_png": f"figures/{{model}}/{name}.png" for key, name in TRACING_FIGURES.items()},
    conda:
        CONDA_ENV
    log:
        "logs/{model}/tracing_figures.log",
    benchmark:
        "logs/{model}/benchmarks/tracing_figures.tsv"
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
    shell:
        "{params.command} > {log} 2>&1"
