# What the repository shows (committed under docs/, rewritten by these rules from the default
# run's outputs): the claims scorecard (also copied into README.md between marker comments), the
# analysis and tracing reports, Table 1 and Table 7, and the README gallery. results/ and figures/
# hold only outputs, so every README command rebuilds them on a fresh clone.
GALLERY = [*FIGURES, *TRACING_FIGURES.values(), "fig26", "fig26_frontier", *ATTENTION_FIGURES, *FT_TRACE_FIGURES]
# Gallery copies of on-request groups' figures: their own group lists the copy (sequential.smk),
# so the default docs target does not build them.
GALLERY_ON_REQUEST = ["sequential"]
# Tracing examples: one PNG per page of tracing_examples (the single-fact heatmaps).
DOCS_TABLES = ["table1", "table7"]
# Tables of on-request groups copied by docs_table too: their own group lists the copy (sequential.smk).
DOCS_TABLES_ON_REQUEST = ["table1_beyond"]
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
    wildcard_constraints:
        figure="|".join([*GALLERY, *GALLERY_ON_REQUEST]),
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
    """docs/tables/<table>.{csv,md,tex}: the default run's Table 1 / Table 7 (and, on request, Table 1
    with the rows beyond the paper)."""
    input:
        csv=headline(TABLE_CSV, "{table}"),
        md=headline(with_suffix(TABLE_CSV, ".md"), "{table}"),
        tex=headline(with_suffix(TABLE_CSV, ".tex"), "{table}"),
    output:
        csv="docs/tables/{table}.csv",
        md="docs/tables/{table}.md",
        tex="docs/tables/{table}.tex",
    wildcard_constraints:
        table="|".join([*DOCS_TABLES, *DOCS_TABLES_ON_REQUEST]),
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


# When the docs' runs span several models (--config models="[smollm2-135m,gemma3-270m]"): the paper's
# cross-model Figs 18-21 in the gallery and the claims scorecard with one column per run. With one
# model nothing of this is built.
register_model_comparison(
    "docs", *[f"docs/gallery/{name}.png" for name in CROSS_MODEL_GALLERY], "docs/scorecard_models.md"
)


rule gallery_comparison:
    """docs/gallery/compare_fig18.png, compare_fig19_21.png: a comparison over the docs' runs (gallery width)."""
    input:
        png=docs_comparison_png,
    output:
        png="docs/gallery/{name}.png",
    wildcard_constraints:
        name="|".join(CROSS_MODEL_GALLERY),
    conda:
        CONDA_ENV
    log:
        job_log("gallery_{name}", folder="headline"),
    benchmark:
        job_benchmark("gallery_{name}", folder="headline")
    params:
        python=PYTHON,
    shell:
        "{params.python} -m backlens.figures.gallery {input.png} {output.png} > {log} 2>&1"


rule scorecard_models:
    """docs/scorecard_models.md: the scorecard's claims with one "ours" and "verdict" column per run of the docs."""
    input:
        unpack(lambda wc: {name: [artifact(name, run=r.name) for r in group_runs("docs")] for name in CLAIM_TABLES}),
    output:
        "docs/scorecard_models.md",
    conda:
        CONDA_ENV
    log:
        job_log("scorecard_models", folder="headline"),
    benchmark:
        job_benchmark("scorecard_models", folder="headline")
    params:
        command=lambda wc, input, output: docs_runs_command("scorecard_models", input, output[0]),
    shell:
        "{params.command} > {log} 2>&1"


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
