DEFAULT_TARGETS.extend(per_model("results/{model}/prompts.parquet"))


rule sample_prompts:
    """Seeded sample of CounterFact cases, tokenized, every token labelled with its ROME segment."""
    output:
        table="results/{model}/prompts.parquet",
        meta="results/{model}/prompts.meta.json",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/sample_prompts.log",
    benchmark:
        "logs/{model}/benchmarks/sample_prompts.tsv"
    params:
        command=lambda wc, output: hydra_call("sample_prompts", wc, prompts=output.table, prompts_meta=output.meta),
    shell:
        "{params.command} > {log} 2>&1"
