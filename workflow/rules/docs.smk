# What the repository shows (committed under docs/, rewritten by these rules from the default
# run's outputs): the claims scorecard (also copied into README.md between marker comments), the
# analysis and tracing reports, Table 1 and Table 7, and the README gallery. results/ and figures/
# hold only outputs, so every README command rebuilds them on a fresh clone.
GALLERY = [*FIGURES, *TRACING_FIGURES.values(), "fig26", "fig26_frontier", *ATTENTION_FIGURES, *FT_TRACE_FIGURES]
# Tracing examples: one PNG per page of tracing_examples (the single-fact heatmaps).
DOCS_TABLES = ["table1", "table7"]
# docs/<name>.md: a copy of the default run's report (artefact) of an output group.
DOCS_REPORTS = {"analysis": ("analysis_report", "analysis_report"), "attention": ("attention_report", "attention"),
                "ft_trace": ("ft_trace_report", "ft_trace")}
register_outputs(
    "docs",
    *[f"docs/gallery/{name}.png" for name in GALLERY],
    *[f"docs/tables/{table}.md" for table in DOCS_TABLES],
    *[f"docs/{report}.md" for report in DOCS_REPORTS],
    "docs/tracing.md",
    "docs/scorecard.md",
    "logs/headline/readme_scorecard.done",
)


rule gallery_image:
    """docs/gallery/<figure>.png: the headline figure, scaled to the width the README shows it at 2x."""
    input:
        png=headline(png_of(artifact("figure", stem="{figure}")), "{figure}"),
    output:
        png="docs/gallery/{figure}.png",
    conda:
        CONDA_ENV
    log:
        job_log("gallery_{figure}", folder="headline"),
    benchmark:
        job_benchmark("gallery_{figure}", folder="headline")
    params:
        python=PYTHON,
    shell:
        "{params.python} -m backlens.figures.gallery {input.png} {output.png} > {log} 2>&1"


rule docs_table:
    """docs/tables/<table>.{csv,md,tex}: the default run's Table 1 / Table 7."""
    input:
        csv=headline(TABLE_CSV, "{table}"),
        md=headline(with_suffix(TABLE_CSV, ".md"), "{table}"),
        tex=headline(with_suffix(TABLE_CSV, ".tex"), "{table}"),
    output:
        csv="docs/tables/{table}.csv",
        md="docs/tables/{table}.md",
        tex="docs/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        job_log("docs_{table}", folder="headline"),
    benchmark:
        job_benchmark("docs_{table}", folder="headline")
    shell:
        "(cp {input.csv} {output.csv} && cp {input.md} {output.md} && cp {input.tex} {output.tex}) > {log} 2>&1"


rule docs_report:
    """docs/<report>.md: the default run's analysis report, attention report or FT-trace report."""
    input:
        lambda wc: headline(artifact(DOCS_REPORTS[wc.report][0]), DOCS_REPORTS[wc.report][1])(wc),
    output:
        "docs/{report}.md",
    wildcard_constraints:
        report="|".join(DOCS_REPORTS),
    conda:
        CONDA_ENV
    log:
        job_log("docs_{report}", folder="headline"),
    benchmark:
        job_benchmark("docs_{report}", folder="headline")
    shell:
        "cp {input} {output} > {log} 2>&1"


# Artefact -> the output (figure or table) whose run the scorecard reads it from.
SCORECARD_INPUTS = {
    name: headline(artifact(name), output)
    for name, output in {
        "prompts": "analysis_report",
        "gradient_ranks": "fig3",
        "vjp_norms": "fig5",
        "target_ranks": "fig6",
        "neuron_updates": "fig9",
        "logit_lens_cells": "fig4",
        "logit_lens_tokens": "fig4",
        "tracing_average_effects": "tracing_avg",
        "tracing_summary": "tracing_avg",
        "table1": "table1",
        "table7": "table7",
        "edit_timings": "table1",
        "attention_ranks": "attention",
        "attention_vjp_norms": "attention",
        "attention_target_ranks": "attention",
        "attention_lemma": "attention",
        "ft_trace": "ft_trace",
    }.items()
}


rule docs_tracing_summary:
    """docs/tracing.md: where each kind's average indirect effect peaks, and the run's settings."""
    input:
        tracing_average_effects=SCORECARD_INPUTS["tracing_average_effects"],
        tracing_summary=SCORECARD_INPUTS["tracing_summary"],
    output:
        "docs/tracing.md",
    conda:
        CONDA_ENV
    log:
        job_log("docs_tracing", folder="headline"),
    benchmark:
        job_benchmark("docs_tracing", folder="headline")
    params:
        command=lambda wc, input, output: docs_command("tracing_report", "tracing_report", input, output[0]),
    shell:
        "{params.command} > {log} 2>&1"


rule scorecard:
    """docs/scorecard.md: one row per claim (paper, ROME's tracing) with its number, ours and a verdict."""
    input:
        **SCORECARD_INPUTS,
    output:
        "docs/scorecard.md",
    conda:
        CONDA_ENV
    log:
        job_log("scorecard", folder="headline"),
    benchmark:
        job_benchmark("scorecard", folder="headline")
    params:
        command=lambda wc, input, output: docs_command("scorecard", "scorecard", input, output[0]),
    shell:
        "{params.command} > {log} 2>&1"


rule readme_scorecard:
    """Copy docs/scorecard.md's table into README.md between its scorecard marker comments."""
    input:
        scorecard="docs/scorecard.md",
        readme="README.md",
    output:
        touch("logs/headline/readme_scorecard.done"),
    conda:
        CONDA_ENV
    log:
        job_log("readme_scorecard", folder="headline"),
    benchmark:
        job_benchmark("readme_scorecard", folder="headline")
    params:
        python=PYTHON,
    shell:
        "{params.python} -m backlens.stages.scorecard --readme {input.readme} {input.scorecard} > {log} 2>&1"


# The baselines' and the shift's sweeps (hours of CPU; not in the default target): the chosen
# values are committed in conf/method/<method>.yaml, the sweep tables under docs/sweeps/<run>/.
rule docs_sweep:
    """docs/sweeps/<run>/<method>_sweep{.parquet,_choice.json}: a sweep's table and its choice."""
    input:
        table=artifact("editing_method_sweep", method="{swept_or_shift}"),
        choice=artifact("editing_method_sweep_choice", method="{swept_or_shift}"),
    output:
        table="docs/sweeps/{run}/{swept_or_shift}_sweep.parquet",
        choice="docs/sweeps/{run}/{swept_or_shift}_sweep_choice.json",
    wildcard_constraints:
        swept_or_shift="|".join([*SWEPT_METHODS, "shift"]),
    conda:
        CONDA_ENV
    log:
        job_log("docs_sweep_{swept_or_shift}"),
    benchmark:
        job_benchmark("docs_sweep_{swept_or_shift}")
    shell:
        "(cp {input.table} {output.table} && cp {input.choice} {output.choice}) > {log} 2>&1"
