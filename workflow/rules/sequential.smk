# Beyond the paper (issue 26): many CounterFact edits without restoring the weights, single edits one
# after another (edit_sequential) and MEMIT's batch update of the same facts (edit_batch); the joined
# table, the figure, the report and its docs copy. On request only (hours of CPU on 2 cores):
#   snakemake --cores 2 --config outputs=sequential
# Methods, N per method, checkpoints, batch sizes and the collapse rule: conf/editing/default.yaml,
# `sequential` (N sized for about 30-minute one-thread jobs there). Library: backlens.editing.sequential.
SEQUENTIAL_SERIES_FILES = ["sequential_checkpoints", "sequential_norms", "sequential_cases", "sequential_summary",
                           "sequential_timings"]

register_outputs(
    "sequential",
    artifact("sequential_report"),
    artifact("figure", stem="sequential"),
    "docs/sequential.md",
    "docs/gallery/sequential.png",
    with_suffix(artifact("table1_beyond"), ".md"),
    "docs/tables/table1_beyond.md",
    on_request=True,
)


wildcard_constraints:
    batch=r"\d+",


use rule stage as edit_sequential with:
    """One method's edits one after another without restoring, measured at checkpoints; resumable."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        **artifact_paths(SEQUENTIAL_SERIES_FILES, series="single"),
    resources:
        gpu=1,
    log:
        job_log("edit_sequential_{method}"),
    benchmark:
        job_benchmark("edit_sequential_{method}")
    params:
        command=lambda wc, input, output: hydra_call("edit_sequential", wc, f"method={wc.method}", **input, **output),


use rule stage as edit_batch with:
    """The first {batch} cases of the sequential range as one update (MEMIT, AlphaEdit); its z* resumable."""
    input:
        data_inputs("dataset"),
        unpack(shared_statistics),
    output:
        **artifact_paths(SEQUENTIAL_SERIES_FILES, series="batch{batch}"),
    resources:
        gpu=1,
    log:
        job_log("edit_batch_{method}_{batch}"),
    benchmark:
        job_benchmark("edit_batch_{method}_{batch}")
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_sequential", wc, f"method={wc.method}", f"editing.sequential.batch={wc.batch}", **input, **output
        ),


use rule stage as edit_sequential_table with:
    """Every series' checkpoints in one table (parquet and CSV), their timings apart."""
    input:
        sequential_series,
    output:
        table=artifact("sequential_table"),
        csv=with_suffix(artifact("sequential_table"), ".csv"),
        timings=artifact("sequential_timings_table"),
    log:
        job_log("edit_sequential_table"),
    benchmark:
        job_benchmark("edit_sequential_table")
    params:
        command=lambda wc, input, output: hydra_call(
            "edit_sequential_table", wc, sequential_inputs=list(input), sequential_table=output.table,
            sequential_timings_table=output.timings,
        ),


use rule stage as sequential_figure with:
    """Retention, NS and perplexity against the number of edits, one line per method."""
    input:
        sequential_table=artifact("sequential_table"),
    output:
        pdf=artifact("figure", stem="sequential"),
        png=report(
            png_of(artifact("figure", stem="sequential")), caption="../report/caption.rst", category="{run}",
            subcategory="Beyond the paper",
        ),
    log:
        job_log("figures/sequential"),
    benchmark:
        job_benchmark("figure_sequential")
    params:
        command=lambda wc, input, output: hydra_call("render_figure", wc, "figure=sequential", figure=output.pdf, **input),
        caption=caption_for("sequential"),


use rule stage as sequential_report with:
    """results/{run}/sequential.md: the sequential and batch runs in numbers, from the joined table."""
    input:
        sequential_table=artifact("sequential_table"),
        sequential_timings_table=artifact("sequential_timings_table"),
        table1_beyond=artifact("table1_beyond"),
        table1_beyond_md=with_suffix(artifact("table1_beyond"), ".md"),
    output:
        report=artifact("sequential_report"),
    log:
        job_log("sequential_report"),
    benchmark:
        job_benchmark("sequential_report")
    params:
        command=lambda wc, input, output: hydra_call(
            "sequential_report", wc, sequential_report=output.report, sequential_table=input.sequential_table,
            sequential_timings_table=input.sequential_timings_table, table1_beyond=input.table1_beyond,
        ),


rule docs_sequential:
    """docs/sequential.md: the default run's sequential-editing report."""
    input:
        headline(artifact("sequential_report"), "sequential"),
    output:
        "docs/sequential.md",
    conda:
        CONDA_ENV
    log:
        job_log("docs_sequential", folder="headline"),
    benchmark:
        job_benchmark("docs_sequential", folder="headline")
    shell:
        "cp {input} {output} > {log} 2>&1"


use rule stage as edit_table1_beyond with:
    """Table 1 with the rows beyond the paper (editing.sequential.table1_methods: r-ROME, AlphaEdit, the
    null-space shifts) after the paper's rows: the edit_table1 stage on the longer method list."""
    input:
        unpack(table1_results("editing_cases", "editing_summary", beyond=True)),
    output:
        csv=artifact("table1_beyond"),
        md=with_suffix(artifact("table1_beyond"), ".md"),
        tex=with_suffix(artifact("table1_beyond"), ".tex"),
    log:
        job_log("edit_table1_beyond"),
    benchmark:
        job_benchmark("edit_table1_beyond")
    params:
        command=lambda wc, output: hydra_call(
            "edit_table1", wc, "editing.table1_methods=[" + ",".join(table1_method_list(run_config(wc.run), True)) + "]",
            table1=output.csv,
        ),

