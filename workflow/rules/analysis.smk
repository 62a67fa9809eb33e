# Backward Lens analysis (paper sections 4-5): one capture pass, the Lemma check, the
# logit-lens examples, one figure rule for every registered figure, and the report.
# Each figure's tables come from the figure registry itself, the one source of truth.
FIGURE_TABLES = {name: list(spec.tables) for name, spec in FIGURES.items()}

DEFAULT_TARGETS.extend(
    per_model(
        "results/{model}/analysis.md",
        *[f"figures/{{model}}/{name}.pdf" for name in FIGURE_TABLES],
    )
)
DEFAULT_TARGETS.append("figures/across_models/fig3.pdf")


rule backward_lens:
    """Capture inputs and VJPs of every MLP matrix in one forward+backward pass; write five tables."""
    input:
        prompts="results/{model}/prompts.parquet",
    output:
        **table_paths(["gradient_ranks", "vjp_norms", "target_ranks", "neuron_updates", "vjp_similarity"]),
        meta="results/{model}/backward_lens.meta.json",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/backward_lens.log",
    benchmark:
        "logs/{model}/benchmarks/backward_lens.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "backward_lens", wc, prompts=input.prompts, analysis_meta=output.meta,
            **{k: v for k, v in output.items() if k != "meta"},
        ),
    shell:
        "{params.command} > {log} 2>&1"


rule lemma_check:
    """Lemma 4.1 reconstruction vs autograd per prompt, layer and matrix; rank cross-check."""
    input:
        prompts="results/{model}/prompts.parquet",
    output:
        lemma_check="results/{model}/lemma_check.parquet",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/lemma_check.log",
    benchmark:
        "logs/{model}/benchmarks/lemma_check.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "lemma_check", wc, prompts=input.prompts, lemma_check=output.lemma_check
        ),
    shell:
        "{params.command} > {log} 2>&1"


rule logit_lens_examples:
    """Logit-lens tables of FF1 inputs and FF2 VJPs for the configured edits (Fig 4)."""
    output:
        **table_paths(["logit_lens_cells", "logit_lens_tokens"]),
    conda:
        CONDA_ENV
    log:
        "logs/{model}/logit_lens_examples.log",
    benchmark:
        "logs/{model}/benchmarks/logit_lens_examples.tsv"
    params:
        command=lambda wc, output: hydra_call("logit_lens_examples", wc, **output),
    shell:
        "{params.command} > {log} 2>&1"


rule figure:
    """Draw one registered figure from its tables."""
    input:
        unpack(lambda wc: table_paths(FIGURE_TABLES[wc.figure])),
    output:
        pdf="figures/{model}/{figure}.pdf",
        png="figures/{model}/{figure}.png",
    wildcard_constraints:
        figure="|".join(FIGURE_TABLES),
    conda:
        CONDA_ENV
    log:
        "logs/{model}/figures/{figure}.log",
    benchmark:
        "logs/{model}/benchmarks/figure_{figure}.tsv"
    params:
        command=lambda wc, input, output: hydra_call(
            "render_figure", wc, figure=output.pdf, **input
        ) + f" figure={wc.figure}",
    shell:
        "{params.command} > {log} 2>&1"


rule figure_across_models:
    """Fig 3 with one line per matrix and model (paper Figs 19-21) over all configured models."""
    input:
        gradient_ranks=per_model("results/{model}/gradient_ranks.parquet"),
    output:
        pdf="figures/across_models/fig3.pdf",
        png="figures/across_models/fig3.png",
    conda:
        CONDA_ENV
    log:
        "logs/across_models/fig3.log",
    benchmark:
        "logs/across_models/benchmarks/fig3.tsv"
    params:
        command=lambda wc, input, output: (
            f"{PYTHON} scripts/render_figure.py figure=fig3 paths.figure={output.pdf} "
            f"'paths.gradient_ranks=[{','.join(input.gradient_ranks)}]' run_name=across_models "
            f"{config['overrides']}"
        ),
    shell:
        "{params.command} > {log} 2>&1"


rule analysis_report:
    """results/{model}/analysis.md: measured numbers beside the paper's claims."""
    input:
        **table_paths(["prompts", "lemma_check", "gradient_ranks", "vjp_norms", "target_ranks"]),
    output:
        report="results/{model}/analysis.md",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/analysis_report.log",
    benchmark:
        "logs/{model}/benchmarks/analysis_report.tsv"
    params:
        command=lambda wc, input, output: hydra_call("analysis_report", wc, analysis_report=output.report, **input),
    shell:
        "{params.command} > {log} 2>&1"
