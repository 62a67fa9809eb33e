# Beyond the paper (issue 16): the Backward Lens on the attention projections, and an FF2 edit
# traced over K optimisation steps. Built on request only, so the default run keeps its wall time:
#   snakemake --cores 2 --config outputs=attention
#   snakemake --cores 2 --config outputs=ft_trace
# Sizes (prompts, cases, steps, optimiser, lr, layers) are in conf/analysis/default.yaml.
from backlens.figures.registry import BEYOND_FIGURES

RESULT_TABLES.update({
    "attention_ranks": "attention/ranks.parquet",
    "attention_vjp_norms": "attention/vjp_norms.parquet",
    "attention_target_ranks": "attention/target_ranks.parquet",
    "attention_lemma": "attention/lemma.parquet",
    "ft_trace": "ft_trace/steps.parquet",
})
ATTENTION_TABLES = ["attention_ranks", "attention_vjp_norms", "attention_target_ranks", "attention_lemma"]
BEYOND_FIGURE_TABLES = {name: list(spec.tables) for name, spec in BEYOND_FIGURES.items()}
ATTENTION_FIGURES = [name for name in BEYOND_FIGURES if name.startswith("attn_")]
FT_TRACE_FIGURES = [name for name in BEYOND_FIGURES if name.startswith("ft_trace")]

register_outputs(
    "attention", "results/{run}/attention.md", *[f"figures/{{run}}/{name}.pdf" for name in ATTENTION_FIGURES], on_request=True
)
register_outputs(
    "ft_trace", "results/{run}/ft_trace.md", *[f"figures/{{run}}/{name}.pdf" for name in FT_TRACE_FIGURES], on_request=True
)


rule attention:
    """W_Q, W_K, W_V, W_O captured in the MLP's forward+backward pass: ranks, VJP norms, target ranks, Lemma 4.1."""
    input:
        prompts="results/{run}/prompts.parquet",
    output:
        **table_paths(ATTENTION_TABLES),
        meta="results/{run}/attention/meta.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/attention.log",
    benchmark:
        "logs/{run}/benchmarks/attention.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "attention", wc, prompts=input.prompts, attention_meta=output.meta,
            **{k: v for k, v in output.items() if k != "meta"},
        ),
    shell:
        STAGE_SHELL


rule attention_report:
    """results/{run}/attention.md: the attention tables in numbers (our findings, not the paper's)."""
    input:
        **table_paths(["prompts", *ATTENTION_TABLES]),
    output:
        report="results/{run}/attention.md",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/attention_report.log",
    benchmark:
        "logs/{run}/benchmarks/attention_report.tsv"
    params:
        command=lambda wc, input, output: hydra_call("attention_report", wc, attention_report=output.report, **input),
    shell:
        STAGE_SHELL


rule ft_trace:
    """K gradient-descent (or Adam) steps on one FF2 weight per case and layer, one row per step."""
    input:
        prompts="results/{run}/prompts.parquet",
    output:
        **table_paths(["ft_trace"]),
        meta="results/{run}/ft_trace/meta.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/ft_trace.log",
    benchmark:
        "logs/{run}/benchmarks/ft_trace.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "ft_trace", wc, prompts=input.prompts, ft_trace=output.ft_trace, ft_trace_meta=output.meta
        ),
    shell:
        STAGE_SHELL


rule ft_trace_report:
    """results/{run}/ft_trace.md: the trace in numbers, with one fact's steps as an example."""
    input:
        **table_paths(["ft_trace"]),
    output:
        report="results/{run}/ft_trace.md",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/ft_trace_report.log",
    benchmark:
        "logs/{run}/benchmarks/ft_trace_report.tsv"
    params:
        command=lambda wc, input, output: hydra_call("ft_trace_report", wc, ft_trace_report=output.report, **input),
    shell:
        STAGE_SHELL


rule beyond_figure:
    """Draw one issue-16 figure from its tables (the registry's BEYOND_FIGURES)."""
    input:
        unpack(lambda wc: table_paths(BEYOND_FIGURE_TABLES[wc.figure])),
    output:
        pdf="figures/{run}/{figure}.pdf",
        png=report("figures/{run}/{figure}.png", caption="../report/caption.rst", category="{run}", subcategory="Beyond the paper"),
    wildcard_constraints:
        figure="|".join(BEYOND_FIGURE_TABLES),
    conda:
        CONDA_ENV
    log:
        "logs/{run}/figures/{figure}.log",
    benchmark:
        "logs/{run}/benchmarks/figure_{figure}.tsv"
    params:
        command=lambda wc, input, output: hydra_call("render_figure", wc, f"figure={wc.figure}", figure=output.pdf, **input),
        caption=lambda wc: caption_for(wc.figure),
    shell:
        STAGE_SHELL
