# Figures comparing the runs of a sweep (figures/compare/<sweep label>/<kind>.pdf). The label is
# written like a run name with comma-separated values and expands to its runs, e.g.
# smollm2-135m__methods.shift.eta=0.1,0.3 or gpt2,gpt2-medium,gpt2-large,gpt2-xl.
COMPARISON_TABLES = {
    "fig3": {"gradient_ranks": "results/{run}/gradient_ranks.parquet"},
    "fig6": {"target_ranks": "results/{run}/target_ranks.parquet", "prompts": "results/{run}/prompts.parquet"},
    **{f"editing_{name}": {"editing_summary": f"{EDIT_DIR}/{name}/summary.json"} for name in EDIT_METHODS},
}


rule compare_runs:
    """One figure over the runs of a sweep: one line (or point) per run, labelled by what differs."""
    input:
        unpack(comparison_inputs),
    output:
        pdf="figures/compare/{sweep}/{kind}.pdf",
        png=report("figures/compare/{sweep}/{kind}.png", caption="../report/caption.rst", category="Comparisons", subcategory="{sweep}"),
    wildcard_constraints:
        kind="|".join(COMPARISON_TABLES),
    conda:
        CONDA_ENV
    log:
        "logs/compare/{sweep}/{kind}.log",
    benchmark:
        "logs/compare/{sweep}/benchmarks/{kind}.tsv"
    params:
        command=lambda wc, input, output: (
            f"{PYTHON} scripts/compare_runs.py compare.kind={wc.kind} "
            + shlex.quote(f'paths.figure="{output.pdf}"') + " "
            + " ".join(f"++compare.tables.{table}={quoted_list(paths)}" for table, paths in input.items())
        ),
        caption=lambda wc: caption_for(f"compare_{wc.kind}"),
    shell:
        STAGE_SHELL
