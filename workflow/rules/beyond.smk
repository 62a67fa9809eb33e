# Beyond the paper (issue 16): the Backward Lens on the attention projections, and an FF2 edit
# traced over K optimisation steps. In the default target (the scorecard's "beyond the paper" table,
# docs/attention.md, docs/ft_trace.md and the gallery read them); alone:
#   snakemake --cores 2 --config outputs=attention
#   snakemake --cores 2 --config outputs=ft_trace
# Sizes (prompts, cases, steps, optimiser, lr, layers) are in conf/analysis/default.yaml; on SmolLM2
# with other jobs sharing the 2 cores the two jobs took 2 min 52 s and 7 min 12 s.
from backlens.figures.registry import BEYOND_FIGURES

ATTENTION_TABLES = ["attention_ranks", "attention_vjp_norms", "attention_target_ranks", "attention_lemma"]
BEYOND_FIGURE_TABLES = {name: list(spec.tables) for name, spec in BEYOND_FIGURES.items()}
ATTENTION_FIGURES = [name for name in BEYOND_FIGURES if name.startswith("attn_")]
FT_TRACE_FIGURES = [name for name in BEYOND_FIGURES if name.startswith("ft_trace")]

register_outputs(
    "attention", artifact("attention_report"), *[artifact("figure", stem=name) for name in ATTENTION_FIGURES]
)
register_outputs(
    "ft_trace", artifact("ft_trace_report"), *[artifact("figure", stem=name) for name in FT_TRACE_FIGURES]
)


use rule stage as attention with:
    """W_Q, W_K, W_V, W_O captured in the MLP's forward+backward pass: ranks, VJP norms, target ranks, Lemma 4.1."""
    input:
        prompts=artifact("prompts"),
    output:
        **artifact_paths(ATTENTION_TABLES),
        meta=artifact("attention_meta"),
    resources:
        gpu=1,
    log:
        job_log("attention"),
    benchmark:
        job_benchmark("attention")
    params:
        command=lambda wc, input, output: hydra_call(
            "attention", wc, prompts=input.prompts, attention_meta=output.meta,
            **{k: v for k, v in output.items() if k != "meta"},
        ),


use rule stage as attention_report with:
    """results/{run}/attention.md: the attention tables in numbers (our findings, not the paper's)."""
    input:
        **artifact_paths(["prompts", *ATTENTION_TABLES]),
    output:
        report=artifact("attention_report"),
    log:
        job_log("attention_report"),
    benchmark:
        job_benchmark("attention_report")
    params:
        command=lambda wc, input, output: hydra_call("attention_report", wc, attention_report=output.report, **input),


use rule stage as ft_trace with:
    """K gradient-descent (or Adam) steps on one FF2 weight per case and layer, one row per step."""
    input:
        prompts=artifact("prompts"),
    output:
        **artifact_paths(["ft_trace"]),
        meta=artifact("ft_trace_meta"),
    resources:
        gpu=1,
    log:
        job_log("ft_trace"),
    benchmark:
        job_benchmark("ft_trace")
    params:
        command=lambda wc, input, output: hydra_call(
            "ft_trace", wc, prompts=input.prompts, ft_trace=output.ft_trace, ft_trace_meta=output.meta
        ),


use rule stage as ft_trace_report with:
    """results/{run}/ft_trace.md: the trace in numbers, with one fact's steps as an example."""
    input:
        **artifact_paths(["ft_trace"]),
    output:
        report=artifact("ft_trace_report"),
    log:
        job_log("ft_trace_report"),
    benchmark:
        job_benchmark("ft_trace_report")
    params:
        command=lambda wc, input, output: hydra_call("ft_trace_report", wc, ft_trace_report=output.report, **input),


use rule stage as beyond_figure with:
    """Draw one issue-16 figure from its tables (the registry's BEYOND_FIGURES)."""
    input:
        unpack(lambda wc: artifact_paths(BEYOND_FIGURE_TABLES[wc.figure])),
    output:
        pdf=artifact("figure", stem="{figure}"),
        png=report(
            png_of(artifact("figure", stem="{figure}")), caption="../report/caption.rst", category="{run}", subcategory="Beyond the paper"
        ),
    wildcard_constraints:
        figure="|".join(BEYOND_FIGURE_TABLES),
    log:
        job_log("figures/{figure}"),
    benchmark:
        job_benchmark("figure_{figure}")
    params:
        command=lambda wc, input, output: hydra_call("render_figure", wc, f"figure={wc.figure}", figure=output.pdf, **input),
        caption=lambda wc: caption_for(wc.figure),
