# figures/<name>.pdf is the headline copy of figures/<first run of the figure's group>/<name>.pdf,
# so `snakemake --cores 4 figures/fig4.pdf` renders the figure for the configured model.


wildcard_constraints:
    figure="[A-Za-z0-9_]+",


rule headline_figure:
    """Copy the figure (PDF and PNG) of its group's first run to figures/."""
    input:
        pdf=lambda wc: artifact("figure", run=headline_run(wc.figure), stem=wc.figure),
        png=lambda wc: png_of(artifact("figure", run=headline_run(wc.figure), stem=wc.figure)),
    output:
        pdf="figures/{figure}.pdf",
        png="figures/{figure}.png",
    conda:
        CONDA_ENV
    log:
        job_log("{figure}", folder="headline"),
    benchmark:
        job_benchmark("{figure}", folder="headline")
    shell:
        "(cp {input.pdf} {output.pdf} && cp {input.png} {output.png}) > {log} 2>&1"


# figures/<name>.pdf and results/tables/<table>.*: the default run's copies (outputs, never committed).
register_outputs("headline", *[f"figures/{name}.pdf" for name in [*FIGURES, *TRACING_FIGURES.values(), "fig26"]], "results/tables/table1.md", "results/tables/table7.md")
