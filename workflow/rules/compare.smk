# Figures comparing the runs of a sweep (figures/compare/<sweep label>/<kind>.pdf). The label is
# written like a run name with comma-separated values and expands to its runs, e.g.
# smollm2-135m__methods.shift.eta=0.1,0.3 or gpt2,gpt2-medium,gpt2-large,gpt2-xl.
COMPARISON_TABLES = {
    "fig3": artifact_paths(["gradient_ranks"]),
    "fig6": artifact_paths(["target_ranks", "prompts"]),
    **{f"editing_{name}": artifact_paths(["editing_summary"], method=name) for name in EDIT_METHODS},
}


use rule stage as compare_runs with:
    """One figure over the runs of a sweep: one line (or point) per run, labelled by what differs."""
    input:
        unpack(comparison_inputs),
    output:
        pdf=artifact("comparison", stem="{kind}"),
        png=report(
            png_of(artifact("comparison", stem="{kind}")), caption="../report/caption.rst", category="Comparisons", subcategory="{sweep}"
        ),
    wildcard_constraints:
        kind="|".join(COMPARISON_TABLES),
    log:
        job_log("{kind}", folder="compare/{sweep}"),
    benchmark:
        job_benchmark("{kind}", folder="compare/{sweep}")
    params:
        command=lambda wc, input, output: (
            f"{STAGE} compare_runs compare.kind={wc.kind} "
            + shlex.quote(f'paths.figure="{output.pdf}"') + " "
            + " ".join(f"++compare.tables.{table}={quoted_list(paths)}" for table, paths in input.items())
        ),
        caption=lambda wc: caption_for(f"compare_{wc.kind}"),
