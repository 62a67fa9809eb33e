register_outputs("prompts", "results/{run}/prompts.parquet")


rule sample_prompts:
    """Seeded sample of CounterFact cases, tokenized, every token labelled with its ROME segment."""
    input:
        data_inputs("dataset"),
    output:
        table="results/{run}/prompts.parquet",
        meta="results/{run}/prompts.meta.json",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/sample_prompts.log",
    benchmark:
        "logs/{run}/benchmarks/sample_prompts.tsv"
    params:
        command=lambda wc, output: hydra_call("sample_prompts", wc, prompts=output.table, prompts_meta=output.meta),
    shell:
        STAGE_SHELL
