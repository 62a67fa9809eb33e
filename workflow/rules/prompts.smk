register_outputs("prompts", artifact("prompts"))


use rule stage as sample_prompts with:
    """Seeded sample of CounterFact cases, tokenized, every token labelled with its ROME segment."""
    input:
        data_inputs("dataset"),
    output:
        table=artifact("prompts"),
        meta=artifact("prompts_meta"),
    log:
        job_log("sample_prompts"),
    benchmark:
        job_benchmark("sample_prompts")
    params:
        command=lambda wc, output: hydra_call("sample_prompts", wc, prompts=output.table, prompts_meta=output.meta),
