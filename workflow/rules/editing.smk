# Editing benchmark (paper section 6): FF2 statistics and MEND training (cached, shared by every
# run that agrees on what they depend on), each method's evaluation in shard jobs merged by a rule,
# Table 1 / Table 7, the forward pass shift sweep (Fig 26) and the baselines' sweeps.
EDIT_METHODS = sorted(p.stem for p in Path("conf/method").glob("*.yaml"))
# Methods that may be swept (a wildcard constraint, so any run's grid); which methods a run's
# Table 1 holds is read from its composed config (editing.table1_methods may be overridden).
SWEPT_METHODS = sorted(yaml.safe_load(Path("conf/editing/default.yaml").read_text())["method_sweeps"])
EDIT_DIR = "results/{run}/editing"




register_outputs("table1", "results/{run}/tables/table1.md", "results/{run}/tables/edit_timings.md")
register_outputs("table7", "results/{run}/tables/table7.md")
register_outputs("fig26", "figures/{run}/fig26.pdf")
for name in EDIT_METHODS:
    # Not in the default target (table1 has them); for sweeps of one method: outputs="edit_shift".
    register_outputs(f"edit_{name}", f"{EDIT_DIR}/{name}/summary.json", on_request=True)
    register_comparison(f"edit_{name}", f"figures/compare/{{sweep}}/editing_{name}.pdf")


wildcard_constraints:
    method="|".join(EDIT_METHODS),
    swept="|".join(SWEPT_METHODS),
    table="table1|table7",
    start=r"\d+",
    stop=r"\d+",


rule edit_covariance:
    """Second moments of the FF2 inputs (ROME/MEMIT layers) and held-out perplexity blocks; resumable."""
    output:
        editing_stats=f"{EDIT_DIR}/ff2_mom2.pt",
        editing_heldout=f"{EDIT_DIR}/heldout_tokens.pt",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/edit_covariance.log",
    benchmark:
        "logs/{run}/benchmarks/edit_covariance.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_covariance", wc, **output),
    shell:
        STAGE_SHELL


rule edit_mend_train:
    """MEND editor networks trained on CounterFact cases outside the evaluation range; resumable."""
    input:
        data_inputs("dataset"),
    output:
        editing_mend=f"{EDIT_DIR}/mend_editor.pt",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/edit_mend_train.log",
    benchmark:
        "logs/{run}/benchmarks/edit_mend_train.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_mend_train", wc, "method=mend", **output),
    shell:
        STAGE_SHELL


rule edit_evaluate_shard:
    """One method on positions [start, stop) of the evaluation range; resumable through its .jsonl."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
        unpack(shared_mend),
    output:
        editing_cases=f"{EDIT_DIR}/{{method}}/shards/{{start}}-{{stop}}.parquet",
        meta=f"{EDIT_DIR}/{{method}}/shards/{{start}}-{{stop}}.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/edit_evaluate_{method}_{start}-{stop}.log",
    benchmark:
        "logs/{run}/benchmarks/edit_evaluate_{method}_{start}-{stop}.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_evaluate", wc, f"method={wc.method}", f"editing.shard=[{wc.start},{wc.stop}]",
            **input, editing_cases=output.editing_cases,
        ),
    shell:
        STAGE_SHELL


rule edit_merge:
    """Join a method's shards into one row per case and its summary (mean +- std, per-edit time)."""
    input:
        editing_shards,
    output:
        editing_cases=f"{EDIT_DIR}/{{method}}/cases.parquet",
        editing_summary=f"{EDIT_DIR}/{{method}}/summary.json",
        editing_timings=f"{EDIT_DIR}/{{method}}/timings.json",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/edit_merge_{method}.log",
    benchmark:
        "logs/{run}/benchmarks/edit_merge_{method}.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_merge", wc, f"method={wc.method}", editing_shards=list(input), **output
        ),
    shell:
        STAGE_SHELL


rule edit_table:
    """Table 1 (accuracies, entropy, probabilities) or Table 7 (perplexity) as CSV, Markdown and LaTeX."""
    input:
        unpack(table1_results("cases.parquet", "summary.json")),
    output:
        csv=report("results/{run}/tables/{table}.csv", caption="../report/caption.rst", category="{run}", subcategory="Editing"),
        md="results/{run}/tables/{table}.md",
        tex="results/{run}/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/edit_{table}.log",
    benchmark:
        "logs/{run}/benchmarks/edit_{table}.tsv"
    params:
        command=lambda wc, output: hydra_call(f"edit_{wc.table}", wc, **{wc.table: output.csv}),
        caption=lambda wc: caption_for(wc.table),
    shell:
        STAGE_SHELL


rule edit_timings:
    """Seconds per edit of the Table 1 methods, apart from Table 1 (timings differ run to run, Table 1 does not)."""
    input:
        unpack(table1_results("timings.json", "summary.json")),
    output:
        csv="results/{run}/tables/edit_timings.csv",
        md="results/{run}/tables/edit_timings.md",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/edit_timings.log",
    benchmark:
        "logs/{run}/benchmarks/edit_timings.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_timings", wc, edit_timings=output.csv),
    shell:
        "{params.command} num_threads={threads} > {log} 2>&1"


rule headline_table:
    """results/tables/<table> is the copy of the table's first run (the default model's)."""
    input:
        csv=lambda wc: f"results/{headline_run(wc.table)}/tables/{wc.table}.csv",
        md=lambda wc: f"results/{headline_run(wc.table)}/tables/{wc.table}.md",
        tex=lambda wc: f"results/{headline_run(wc.table)}/tables/{wc.table}.tex",
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        "logs/headline/{table}.log",
    benchmark:
        "logs/headline/benchmarks/{table}.tsv"
    shell:
        "(cp {input.csv} {output.csv} && cp {input.md} {output.md} && cp {input.tex} {output.tex}) > {log} 2>&1"


rule edit_shift_sweep:
    """Every shift variant (editing.sweep.methods) over layers x eta on cases outside the evaluation range, with each one's chosen setting."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        editing_sweep=f"{EDIT_DIR}/shift_sweep.parquet",
        editing_sweep_choice=f"{EDIT_DIR}/shift_sweep_choice.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/edit_shift_sweep.log",
    benchmark:
        "logs/{run}/benchmarks/edit_shift_sweep.tsv"
    params:
        command=lambda wc, input, output: hydra_call("edit_shift_sweep", wc, **input, **output),
    shell:
        STAGE_SHELL


rule edit_method_sweep:
    """A baseline (FT, MEMIT) over editing.method_sweeps.<method>.grid on cases outside the evaluation range."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        editing_method_sweep=f"{EDIT_DIR}/{{swept}}_sweep.parquet",
        editing_method_sweep_choice=f"{EDIT_DIR}/{{swept}}_sweep_choice.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/edit_method_sweep_{swept}.log",
    benchmark:
        "logs/{run}/benchmarks/edit_method_sweep_{swept}.tsv"
    params:
        command=lambda wc, input, output: hydra_call("edit_method_sweep", wc, f"method={wc.swept}", **input, **output),
    shell:
        STAGE_SHELL


rule edit_fig26:
    """Fig 26: each shift variant's efficacy, paraphrase and NS across layer and eta."""
    input:
        editing_sweep=f"{EDIT_DIR}/shift_sweep.parquet",
        editing_sweep_choice=f"{EDIT_DIR}/shift_sweep_choice.json",
    output:
        pdf="figures/{run}/fig26.pdf",
        png=report("figures/{run}/fig26.png", caption="../report/caption.rst", category="{run}", subcategory="Editing"),
        frontier_pdf="figures/{run}/fig26_frontier.pdf",
        frontier_png="figures/{run}/fig26_frontier.png",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/edit_fig26.log",
    benchmark:
        "logs/{run}/benchmarks/edit_fig26.tsv"
    params:
        command=lambda wc, input, output: hydra_call("edit_fig26", wc, **input, fig26=output.pdf),
        caption=caption_for("fig26"),
    shell:
        STAGE_SHELL


rule counterfact_corpus:
    """Human-written text (true CounterFact statements outside the benchmark's cases) for a corpus comparison."""
    input:
        # The script runs with the default config (no run): any model's config names the same file.
        lambda wc: data_file(MODEL_CONFIGS[0], "dataset"),
    output:
        counterfact_corpus="results/corpus/counterfact_true_sentences.txt",
    conda:
        CONDA_ENV
    log:
        "logs/corpus/counterfact_corpus.log",
    benchmark:
        "logs/corpus/benchmarks/counterfact_corpus.tsv"
    params:
        command=lambda wc, output: f"{PYTHON} scripts/counterfact_corpus.py paths.counterfact_corpus={output.counterfact_corpus}",
    shell:
        STAGE_SHELL
