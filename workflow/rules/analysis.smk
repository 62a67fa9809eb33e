# Backward Lens analysis (paper sections 4-5): one capture pass, the Lemma check, the
# logit-lens examples, one figure rule for every registered figure, and the report.
# Each figure's tables come from the figure registry itself, the one source of truth.
FIGURE_TABLES = {name: list(spec.tables) for name, spec in FIGURES.items()}

register_outputs("analysis_report", artifact("analysis_report"))
for name in FIGURE_TABLES:
    register_outputs(name, artifact("figure", stem=name))
# Across the runs of a sweep or a model list: Fig 3 (paper Figs 19-21) and Fig 6 (Fig 18).
register_comparison("fig3", artifact("comparison", stem="fig3"))
register_comparison("fig6", artifact("comparison", stem="fig6"))


use rule stage as backward_lens_shard with:
    """Capture inputs and VJPs of every MLP matrix for prompts [start, stop) in one forward+backward pass per batch."""
    input:
        prompts=artifact("prompts"),
    output:
        **{name: artifact("analysis_shard_table", shard="{start}-{stop}", table=name) for name in ANALYSIS_TABLES},
        meta=artifact("analysis_shard_meta", shard="{start}-{stop}"),
    resources:
        gpu=1,
    log:
        job_log("backward_lens_{start}-{stop}"),
    benchmark:
        job_benchmark("backward_lens_{start}-{stop}")
    params:
        command=lambda wc, input, output: hydra_call(
            "backward_lens", wc, f"analysis.shard=[{wc.start},{wc.stop}]", prompts=input.prompts,
            analysis_meta=output.meta, **{k: v for k, v in output.items() if k != "meta"},
        ),


use rule stage as backward_lens with:
    """Join the shards into five tables: ranks, VJP norms, target ranks, neuron updates, VJP similarity."""
    input:
        analysis_shards,
    output:
        **artifact_paths(ANALYSIS_TABLES),
        meta=artifact("analysis_meta"),
    log:
        job_log("backward_lens"),
    benchmark:
        job_benchmark("backward_lens")
    params:
        command=lambda wc, input, output: hydra_call(
            "backward_lens_merge", wc, analysis_shards=list(input), analysis_meta=output.meta,
            **{k: v for k, v in output.items() if k != "meta"},
        ),


use rule stage as lemma_check with:
    """Lemma 4.1 reconstruction vs autograd per prompt (every prompt by default), layer and matrix; rank cross-check."""
    input:
        prompts=artifact("prompts"),
    output:
        lemma_check=artifact("lemma_check"),
    resources:
        gpu=1,
    log:
        job_log("lemma_check"),
    benchmark:
        job_benchmark("lemma_check")
    params:
        command=lambda wc, input, output: hydra_call(
            "lemma_check", wc, prompts=input.prompts, lemma_check=output.lemma_check
        ),


use rule stage as embedding_anisotropy with:
    """Rank of t in LL(e_t) and LL(e_t - mean embedding) for a seeded sample of tokens (issue 17's diagnostic)."""
    output:
        **artifact_paths(["embedding_anisotropy"]),
    log:
        job_log("embedding_anisotropy"),
    benchmark:
        job_benchmark("embedding_anisotropy")
    params:
        command=lambda wc, output: hydra_call("embedding_anisotropy", wc, **output),


use rule stage as logit_lens_examples with:
    """Logit-lens tables of FF1 inputs and FF2 VJPs for the configured edits (Fig 4)."""
    output:
        **artifact_paths(["logit_lens_cells", "logit_lens_tokens"]),
    resources:
        gpu=1,
    log:
        job_log("logit_lens_examples"),
    benchmark:
        job_benchmark("logit_lens_examples")
    params:
        command=lambda wc, output: hydra_call("logit_lens_examples", wc, **output),


use rule stage as figure with:
    """Draw one registered figure from its tables."""
    input:
        unpack(lambda wc: artifact_paths(FIGURE_TABLES[wc.figure])),
    output:
        pdf=artifact("figure", stem="{figure}"),
        png=report(
            png_of(artifact("figure", stem="{figure}")), caption="../report/caption.rst", category="{run}", subcategory="Backward Lens"
        ),
    wildcard_constraints:
        figure="|".join(FIGURE_TABLES),
    log:
        job_log("figures/{figure}"),
    benchmark:
        job_benchmark("figure_{figure}")
    params:
        command=lambda wc, input, output: hydra_call("render_figure", wc, f"figure={wc.figure}", figure=output.pdf, **input),
        caption=lambda wc: caption_for(wc.figure),


use rule stage as analysis_report with:
    """results/{run}/analysis.md: measured numbers beside the paper's claims."""
    input:
        **artifact_paths(["prompts", "lemma_check", "gradient_ranks", "vjp_norms", "target_ranks", "embedding_anisotropy"]),
    output:
        report=artifact("analysis_report"),
    log:
        job_log("analysis_report"),
    benchmark:
        job_benchmark("analysis_report")
    params:
        command=lambda wc, input, output: hydra_call("analysis_report", wc, analysis_report=output.report, **input),
