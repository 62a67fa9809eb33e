# figures/<name>.pdf is the headline copy of figures/<first run of the figure's group>/<name>.pdf,
# so `snakemake --cores 4 figures/fig4.pdf` renders the figure for the configured model.


wildcard_constraints:
    figure="[A-Za-z0-9_]+",


rule headline_figure:
    """Copy the figure (PDF and PNG) of its group's first run to figures/."""
    input:
        pdf=lambda wc: f"figures/{headline_run(wc.figure)}/{wc.figure}.pdf",
        png=lambda wc: f"figures/{headline_run(wc.figure)}/{wc.figure}.png",
    output:
        pdf="figures/{figure}.pdf",
        png="figures/{figure}.png",
    conda:
        CONDA_ENV
    log:
        "logs/headline/{figure}.log",
    benchmark:
        "logs/headline/benchmarks/{figure}.tsv"
    shell:
        "(cp {input.pdf} {output.pdf} && cp {input.png} {output.png}) > {log} 2>&1"


# README gallery: small PNGs of the headline run's figures, committed under docs/gallery/.
GALLERY = [*FIGURES, "tracing_avg", "tracing_avg_lines", "tracing_severed", "fig26"]
register_outputs("gallery", *[f"docs/gallery/{name}.png" for name in GALLERY])
# figures/<name>.pdf and results/tables/<table>.* : the default run's copies.
register_outputs("headline", *[f"figures/{name}.pdf" for name in GALLERY], "results/tables/table1.md", "results/tables/table7.md")


rule gallery_image:
    """docs/gallery/<figure>.png: the headline figure scaled to at most 640 px wide."""
    input:
        png=lambda wc: f"figures/{headline_run(wc.figure)}/{wc.figure}.png",
    output:
        png="docs/gallery/{figure}.png",
    conda:
        CONDA_ENV
    log:
        "logs/headline/gallery_{figure}.log",
    benchmark:
        "logs/headline/benchmarks/gallery_{figure}.tsv"
    params:
        python=PYTHON,
    shell:
        "{params.python} -m backlens.figures.gallery {input.png} {output.png} > {log} 2>&1"
