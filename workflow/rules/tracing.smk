# ROME causal tracing (the analysis Backward Lens builds on): clean / corrupted / restored
# runs over the known facts the model answers correctly, their tables, and the figures.
# One job screens every fact and chooses those to trace, shard jobs trace parts of that list,
# and a rule merges them into the tables below.

# The merged tables and summary (rule trace_merge); tracing_timings: seconds per stage and fact,
# apart from the tables and summary (byte-identical run to run).
TRACING_TABLES = [
    "tracing_facts", "tracing_tokens", "tracing_effects", "tracing_segment_effects", "tracing_average_effects",
    "tracing_summary", "tracing_timings",
]
# Figure artefact -> its name (the file's stem: figures/{run}/<name>.pdf).
TRACING_FIGURES = {
    key: Path(artifact(key)).stem
    for key in ["tracing_fig_examples", "tracing_fig_avg", "tracing_fig_avg_lines", "tracing_fig_severed"]
}

register_outputs("tracing", *[artifact(key) for key in TRACING_FIGURES])


use rule stage as trace_screen with:
    """Screen known_1000 (is the answer the model's greedy next token?) and choose the facts to trace."""
    input:
        data_inputs("known_facts"),
    output:
        **artifact_paths(["tracing_screening", "tracing_screening_meta", "tracing_screening_timings"]),
    resources:
        gpu=1,
    log:
        job_log("trace_screen"),
    benchmark:
        job_benchmark("trace_screen")
    params:
        command=lambda wc, output: hydra_call("trace_screen", wc, **output),


use rule stage as trace_shard with:
    """Trace positions [start, stop) of the chosen facts: per fact, token and (token, layer, kind) cell."""
    input:
        data_inputs("known_facts"),
        tracing_screening_meta=artifact("tracing_screening_meta"),
    output:
        # The facts table (tracing_shard), and the tokens, effects and meta files beside it.
        **trace_shard_files(shard="{start}-{stop}"),
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    resources:
        gpu=1,
    log:
        job_log("trace_shard_{start}-{stop}"),
    benchmark:
        job_benchmark("trace_shard_{start}-{stop}")
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_shard", wc, f"tracing.shard=[{wc.start},{wc.stop}]", **input, tracing_shard=output.tracing_shard
        ),


use rule stage as trace_merge with:
    """Join the shards in order; segment averages over facts with 95% bands; the summary."""
    input:
        **artifact_paths(["tracing_screening_meta", "tracing_screening_timings"]),
        tracing_shards=lambda wc: tracing_shard_files(wc, "tracing_shard"),
        shard_tables=lambda wc: tracing_shard_files(wc, "tokens", "effects", "meta"),
    output:
        **artifact_paths(TRACING_TABLES),
    log:
        job_log("trace_merge"),
    benchmark:
        job_benchmark("trace_merge")
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_merge", wc, tracing_screening_meta=input.tracing_screening_meta,
            tracing_screening_timings=input.tracing_screening_timings,
            tracing_shards=list(input.tracing_shards), **output
        ),


use rule stage as tracing_figures with:
    """Per-fact heatmaps, average heatmaps, average lines with 95% bands, severed vs unsevered."""
    input:
        **artifact_paths(["tracing_facts", "tracing_tokens", "tracing_effects", "tracing_average_effects", "tracing_summary"]),
    output:
        **artifact_paths(TRACING_FIGURES),
        **{
            f"{key}_png": report(png_of(artifact(key)), caption="../report/tracing.rst", category="{run}",
                                 subcategory="Causal tracing", labels={"figure": name})
            for key, name in TRACING_FIGURES.items()
        },
    log:
        job_log("tracing_figures"),
    benchmark:
        job_benchmark("tracing_figures")
    params:
        command=lambda wc, input, output: hydra_call(
            "trace_figures", wc, **input, **{key: value for key, value in output.items() if not key.endswith("_png")}
        ),
        captions={name: caption_for(name) for name in TRACING_FIGURES.values()},
