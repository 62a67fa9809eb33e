register_outputs("prompts", artifact("prompts"))


rule sample_prompts:
    """Seeded sample of CounterFact cases, tokenized, every token labelled with its ROME segment."""
    input:
        data_inputs("dataset"),
    output:
        table=artifact("prompts"),
        meta=artifact("prompts_meta"),
    conda:
        CONDA_ENV
    log:
        job_log("sample_prompts"),
    benchmark:
        job_benchmark("sample_prompts")
    params:
        command=lambda wc, output: hydra_call("sample_prompts", wc, prompts=output.table, prompts_meta=output.meta),
    shell:
        STAGE_SHELL
