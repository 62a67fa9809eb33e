# Backward Lens analysis (paper sections 4-5): one capture pass, the Lemma check, the
# logit-lens examples, one figure rule for every registered figure, and the report.
# Each figure's tables come from the figure registry itself, the one source of truth.
FIGURE_TABLES = {name: list(spec.tables) for name, spec in FIGURES.items()}

register_outputs("analysis_report", "results/{run}/analysis.md")
for name in FIGURE_TABLES:
    register_outputs(name, f"figures/{{run}}/{name}.pdf")
# Across the runs of a sweep or a model list: Fig 3 (paper Figs 19-21) and Fig 6 (Fig 18).
register_comparison("fig3", "figures/compare/{sweep}/fig3.pdf")
register_comparison("fig6", "figures/compare/{sweep}/fig6.pdf")


rule backward_lens_shard:
    """Capture inputs and VJPs of every MLP matrix for prompts [start, stop) in one forward+backward pass per batch."""
    input:
        prompts="results/{run}/prompts.parquet",
    output:
        **{name: f"results/{{run}}/analysis_shards/{{start}}-{{stop}}/{name}.parquet" for name in ANALYSIS_TABLES},
        meta="results/{run}/analysis_shards/{start}-{stop}/meta.json",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/backward_lens_{start}-{stop}.log",
    benchmark:
        "logs/{run}/benchmarks/backward_lens_{start}-{stop}.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "backward_lens", wc, f"analysis.shard=[{wc.start},{wc.stop}]", prompts=input.prompts,
            analysis_meta=output.meta, **{k: v for k, v in output.items() if k != "meta"},
        ),
    shell:
        STAGE_SHELL


rule backward_lens:
    """Join the shards into five tables: ranks, VJP norms, target ranks, neuron updates, VJP similarity."""
    input:
        analysis_shards,
    output:
        **table_paths(ANALYSIS_TABLES),
        meta="results/{run}/backward_lens.meta.json",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/backward_lens.log",
    benchmark:
        "logs/{run}/benchmarks/backward_lens.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "backward_lens_merge", wc, analysis_shards=list(input), analysis_meta=output.meta,
            **{k: v for k, v in output.items() if k != "meta"},
        ),
    shell:
        STAGE_SHELL


rule lemma_check:
    """Lemma 4.1 reconstruction vs autograd per prompt (every prompt by default), layer and matrix; rank cross-check."""
    input:
        prompts="results/{run}/prompts.parquet",
    output:
        lemma_check="results/{run}/lemma_check.parquet",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/lemma_check.log",
    benchmark:
        "logs/{run}/benchmarks/lemma_check.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "lemma_check", wc, prompts=input.prompts, lemma_check=output.lemma_check
        ),
    shell:
        STAGE_SHELL


rule embedding_anisotropy:
    """Rank of t in LL(e_t) and LL(e_t - mean embedding) for a seeded sample of tokens (issue 17's diagnostic)."""
    output:
        **table_paths(["embedding_anisotropy"]),
    conda:
        CONDA_ENV
    log:
        "logs/{run}/embedding_anisotropy.log",
    benchmark:
        "logs/{run}/benchmarks/embedding_anisotropy.tsv"
    params:
        command=lambda wc, output: hydra_call("embedding_anisotropy", wc, **output),
    shell:
        STAGE_SHELL


rule logit_lens_examples:
    """Logit-lens tables of FF1 inputs and FF2 VJPs for the configured edits (Fig 4)."""
    output:
        **table_paths(["logit_lens_cells", "logit_lens_tokens"]),
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    log:
        "logs/{run}/logit_lens_examples.log",
    benchmark:
        "logs/{run}/benchmarks/logit_lens_examples.tsv"
    params:
        command=lambda wc, output: hydra_call("logit_lens_examples", wc, **output),
    shell:
        STAGE_SHELL


rule figure:
    """Draw one registered figure from its tables."""
    input:
        unpack(lambda wc: table_paths(FIGURE_TABLES[wc.figure])),
    output:
        pdf="figures/{run}/{figure}.pdf",
        png=report("figures/{run}/{figure}.png", caption="../report/caption.rst", category="{run}", subcategory="Backward Lens"),
    wildcard_constraints:
        figure="|".join(FIGURE_TABLES),
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


rule analysis_report:
    """results/{run}/analysis.md: measured numbers beside the paper's claims."""
    input:
        **table_paths(["prompts", "lemma_check", "gradient_ranks", "vjp_norms", "target_ranks", "embedding_anisotropy"]),
    output:
        report="results/{run}/analysis.md",
    conda:
        CONDA_ENV
    log:
        "logs/{run}/analysis_report.log",
    benchmark:
        "logs/{run}/benchmarks/analysis_report.tsv"
    params:
        command=lambda wc, input, output: hydra_call("analysis_report", wc, analysis_report=output.report, **input),
    shell:
        STAGE_SHELL
