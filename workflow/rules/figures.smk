# figures/<name>.pdf is the headline copy of figures/<first configured model>/<name>.pdf, so
# `snakemake --cores 4 figures/fig4.pdf` renders the figure for the configured model.
HEADLINE_MODEL = config["models"][0]


wildcard_constraints:
    figure="[A-Za-z0-9_]+",


rule headline_figure:
    """Copy the first configured model's figure (PDF and PNG) to figures/."""
    input:
        pdf=f"figures/{HEADLINE_MODEL}/{{figure}}.pdf",
        png=f"figures/{HEADLINE_MODEL}/{{figure}}.png",
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
