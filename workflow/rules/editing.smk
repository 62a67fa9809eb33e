# Editing benchmark (paper section 6): FF2 statistics and MEND training (cached, shared by every
# run that agrees on what they depend on), each method's evaluation in shard jobs merged by a rule,
# Table 1 / Table 7, the forward pass shift sweep (Fig 26) and the baselines' sweeps.
from backlens.figures.editing import frontier_path

EDIT_METHODS = sorted(p.stem for p in config_dir("method").glob("*.yaml"))
# Table 1 / Table 7 / edit_timings (results/{run}/tables/<table>.csv, .md and .tex beside it).
TABLE_CSV = f"{artifact('tables')}/{{table}}.csv"

register_outputs("table1", with_suffix(artifact("table1"), ".md"), with_suffix(artifact("edit_timings"), ".md"))
register_outputs("table7", with_suffix(artifact("table7"), ".md"))
register_outputs("fig26", artifact("fig26"))
# On request (issue 23): snakemake --cores 2 --config outputs=small_statistics (the small run's rows too).
register_outputs("small_statistics", with_suffix(artifact("small_statistics"), ".md"), "docs/small_statistics.md",
                 on_request=True)
for name in EDIT_METHODS:
    # Not in the default target (table1 has them); for sweeps of one method: outputs="edit_shift".
    register_outputs(f"edit_{name}", artifact("editing_summary", method=name), on_request=True)
    register_comparison(f"edit_{name}", artifact("comparison", stem=f"editing_{name}"))

# Methods that may be swept (a wildcard constraint): editing.method_sweeps of the default run (the
# one whose Table 1 the headline copies show) as Hydra composes it, the user's overrides included.
# Which methods a run's Table 1 holds is read from its own composed config (table1_results).
SWEPT_METHODS = sorted(run_config(headline_run("table1")).editing.method_sweeps)


wildcard_constraints:
    method="|".join(EDIT_METHODS),
    swept="|".join(SWEPT_METHODS),
    table="table1|table7",
    start=r"\d+",
    stop=r"\d+",


use rule stage as edit_covariance with:
    """Second moments of the FF2 inputs (ROME/MEMIT layers) and held-out perplexity blocks; resumable."""
    output:
        **artifact_paths(["editing_stats", "editing_heldout"]),
    resources:
        gpu=1,
    log:
        job_log("edit_covariance"),
    benchmark:
        job_benchmark("edit_covariance")
    params:
        command=lambda wc, output: hydra_call("edit_covariance", wc, **output),


use rule stage as edit_mend_train with:
    """MEND editor networks trained on CounterFact cases outside the evaluation range; resumable."""
    input:
        data_inputs("dataset"),
    output:
        editing_mend=artifact("editing_mend"),
    resources:
        gpu=1,
    log:
        job_log("edit_mend_train"),
    benchmark:
        job_benchmark("edit_mend_train")
    params:
        command=lambda wc, output: hydra_call("edit_mend_train", wc, "method=mend", **output),


use rule stage as edit_evaluate_shard with:
    """One method on positions [start, stop) of the evaluation range; resumable through its .jsonl."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
        unpack(shared_mend),
    output:
        editing_cases=artifact("editing_shard", shard="{start}-{stop}"),
        meta=str(shard_meta_path(artifact("editing_shard", shard="{start}-{stop}"))),
    resources:
        gpu=1,
    log:
        job_log("edit_evaluate_{method}_{start}-{stop}"),
    benchmark:
        job_benchmark("edit_evaluate_{method}_{start}-{stop}")
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_evaluate", wc, f"method={wc.method}", f"editing.shard=[{wc.start},{wc.stop}]",
            **input, editing_cases=output.editing_cases,
        ),


use rule stage as edit_merge with:
    """Join a method's shards into one row per case and its summary (mean +- std, per-edit time)."""
    input:
        editing_shards,
    output:
        **artifact_paths(["editing_cases", "editing_summary", "editing_timings"]),
    log:
        job_log("edit_merge_{method}"),
    benchmark:
        job_benchmark("edit_merge_{method}")
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_merge", wc, f"method={wc.method}", editing_shards=list(input), **output
        ),


use rule stage as edit_table with:
    """Table 1 (accuracies, entropy, probabilities) or Table 7 (perplexity) as CSV, Markdown and LaTeX."""
    input:
        unpack(table1_results("editing_cases", "editing_summary")),
    output:
        csv=report(TABLE_CSV, caption="../report/caption.rst", category="{run}", subcategory="Editing"),
        md=with_suffix(TABLE_CSV, ".md"),
        tex=with_suffix(TABLE_CSV, ".tex"),
    log:
        job_log("edit_{table}"),
    benchmark:
        job_benchmark("edit_{table}")
    params:
        command=lambda wc, output: hydra_call(f"edit_{wc.table}", wc, **{wc.table: output.csv}),
        caption=lambda wc: caption_for(wc.table),


rule edit_timings:
    """Seconds per edit of the Table 1 methods, apart from Table 1 (timings differ run to run, Table 1 does not)."""
    input:
        unpack(table1_results("editing_timings", "editing_summary")),
    output:
        csv=artifact("edit_timings"),
        md=with_suffix(artifact("edit_timings"), ".md"),
    conda:
        CONDA_ENV
    log:
        job_log("edit_timings"),
    benchmark:
        job_benchmark("edit_timings")
    params:
        command=lambda wc, output: hydra_call("edit_timings", wc, edit_timings=output.csv),
    shell:
        "{params.command} num_threads={threads} > {log} 2>&1"


rule headline_table:
    """results/tables/<table> is the copy of the table's first run (the default model's)."""
    input:
        csv=lambda wc: TABLE_CSV.format(run=headline_run(wc.table), table=wc.table),
        md=lambda wc: with_suffix(TABLE_CSV, ".md").format(run=headline_run(wc.table), table=wc.table),
        tex=lambda wc: with_suffix(TABLE_CSV, ".tex").format(run=headline_run(wc.table), table=wc.table),
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        job_log("{table}", folder="headline"),
    benchmark:
        job_benchmark("{table}", folder="headline")
    shell:
        "(cp {input.csv} {output.csv} && cp {input.md} {output.md} && cp {input.tex} {output.tex}) > {log} 2>&1"


use rule stage as edit_shift_sweep with:
    """Every shift variant (editing.sweep.methods) over layers x eta on cases outside the evaluation range, with each one's chosen setting."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        **artifact_paths(["editing_sweep", "editing_sweep_choice"]),
    resources:
        gpu=1,
    log:
        job_log("edit_shift_sweep"),
    benchmark:
        job_benchmark("edit_shift_sweep")
    params:
        command=lambda wc, input, output: hydra_call("edit_shift_sweep", wc, **input, **output),


use rule stage as edit_method_sweep with:
    """A baseline (FT, MEMIT) over editing.method_sweeps.<method>.grid on cases outside the evaluation range."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        **artifact_paths(["editing_method_sweep", "editing_method_sweep_choice"], method="{swept}"),
    resources:
        gpu=1,
    log:
        job_log("edit_method_sweep_{swept}"),
    benchmark:
        job_benchmark("edit_method_sweep_{swept}")
    params:
        command=lambda wc, input, output: hydra_call("edit_method_sweep", wc, f"method={wc.swept}", **input, **output),


use rule stage as edit_fig26 with:
    """Fig 26: each shift variant's efficacy, paraphrase and NS across layer and eta."""
    input:
        **artifact_paths(["editing_sweep", "editing_sweep_choice"]),
    output:
        pdf=artifact("fig26"),
        png=report(png_of(artifact("fig26")), caption="../report/caption.rst", category="{run}", subcategory="Editing"),
        frontier_pdf=str(frontier_path(artifact("fig26"))),
        frontier_png=png_of(frontier_path(artifact("fig26"))),
    log:
        job_log("edit_fig26"),
    benchmark:
        job_benchmark("edit_fig26")
    params:
        command=lambda wc, input, output: hydra_call("edit_fig26", wc, **input, fig26=output.pdf),
        caption=caption_for("fig26"),


use rule stage as counterfact_corpus with:
    """Human-written text (true CounterFact statements outside the benchmark's cases) for a corpus comparison."""
    input:
        # The stage runs with the default config (no run): any model's config names the same file.
        lambda wc: data_file(MODEL_CONFIGS[0], "dataset"),
    output:
        **artifact_paths(["counterfact_corpus"]),
    log:
        job_log("counterfact_corpus", folder="corpus"),
    benchmark:
        job_benchmark("counterfact_corpus", folder="corpus")
    params:
        command=lambda wc, output: stage_command("counterfact_corpus", [f"paths.counterfact_corpus={output.counterfact_corpus}"]),


use rule stage as edit_small_statistics with:
    """The small FF2-statistics setting against the default on the same cases (editing.small_statistics)."""
    input:
        unpack(small_statistics_inputs),
    output:
        table=artifact("small_statistics"),
        markdown=with_suffix(artifact("small_statistics"), ".md"),
    log:
        job_log("edit_small_statistics"),
    benchmark:
        job_benchmark("edit_small_statistics")
    params:
        command=lambda wc, input, output: hydra_call("edit_small_statistics", wc, small_statistics=output.table,
                                                     **{key: list(value) for key, value in input.items()}),


rule docs_small_statistics:
    """docs/small_statistics.md: the default run's comparison."""
    input:
        headline(with_suffix(artifact("small_statistics"), ".md"), "small_statistics"),
    output:
        "docs/small_statistics.md",
    conda:
        CONDA_ENV
    log:
        job_log("docs_small_statistics", folder="headline"),
    benchmark:
        job_benchmark("docs_small_statistics", folder="headline")
    shell:
        "cp {input} {output} > {log} 2>&1"
