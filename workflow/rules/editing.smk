# Editing benchmark (paper section 6): FF2 statistics and MEND training (cached, once per model),
# one evaluation per method, Table 1 / Table 7, and the forward pass shift sweep (Fig 26).
import yaml

EDIT_METHODS = sorted(p.stem for p in Path("conf/method").glob("*.yaml"))
TABLE1_METHODS = yaml.safe_load(Path("conf/editing/default.yaml").read_text())["table1_methods"]
EDIT_DIR = "results/{model}/editing"
EDIT_SHARED = {
    "editing_stats": f"{EDIT_DIR}/ff2_mom2.pt",
    "editing_heldout": f"{EDIT_DIR}/heldout_tokens.pt",
}
EDIT_MEND = f"{EDIT_DIR}/mend_editor.pt"
# Inputs of the table rules: every Table 1 method's cases and summary.
TABLE1_RESULTS = {
    f"{kind}_{name}": f"{EDIT_DIR}/{name}/{kind}.{ext}"
    for name in TABLE1_METHODS
    for kind, ext in (("cases", "parquet"), ("summary", "json"))
}

DEFAULT_TARGETS.extend(
    per_model(
        "results/{model}/tables/table1.md",
        "results/{model}/tables/table7.md",
        "figures/{model}/fig26.pdf",
    )
)


wildcard_constraints:
    method="|".join(EDIT_METHODS),
    table="table1|table7",


rule edit_covariance:
    """Second moments of the FF2 inputs (ROME/MEMIT layers) and held-out perplexity blocks; resumable."""
    output:
        **EDIT_SHARED,
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_covariance.log",
    benchmark:
        "logs/{model}/benchmarks/edit_covariance.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_covariance", wc, **output),
    shell:
        "{params.command} > {log} 2>&1"


rule edit_mend_train:
    """MEND editor networks trained on CounterFact cases outside the evaluation range; resumable."""
    output:
        editing_mend=EDIT_MEND,
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_mend_train.log",
    benchmark:
        "logs/{model}/benchmarks/edit_mend_train.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_mend_train", wc, **output) + " method=mend",
    shell:
        "{params.command} > {log} 2>&1"


rule edit_evaluate:
    """One method on the evaluation range: one row per case, resumable through cases.jsonl."""
    input:
        **EDIT_SHARED,
        editing_mend=lambda wc: EDIT_MEND if wc.method == "mend" else [],
    output:
        editing_cases=f"{EDIT_DIR}/{{method}}/cases.parquet",
        editing_summary=f"{EDIT_DIR}/{{method}}/summary.json",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_evaluate_{method}.log",
    benchmark:
        "logs/{model}/benchmarks/edit_evaluate_{method}.tsv"
    params:
        command=lambda wc, input, output: hydra_call("edit_evaluate", wc, **{k: v for k, v in input.items() if v}, **output) + f" method={wc.method}",
    shell:
        "{params.command} > {log} 2>&1"


rule edit_table:
    """Table 1 (accuracies, entropy, probabilities) or Table 7 (perplexity) as CSV, Markdown and LaTeX."""
    input:
        **TABLE1_RESULTS,
    output:
        csv="results/{model}/tables/{table}.csv",
        md="results/{model}/tables/{table}.md",
        tex="results/{model}/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_{table}.log",
    benchmark:
        "logs/{model}/benchmarks/edit_{table}.tsv"
    params:
        command=lambda wc, output: hydra_call(f"edit_{wc.table}", wc, **{wc.table: output.csv}),
    shell:
        "{params.command} > {log} 2>&1"


rule headline_table:
    """results/tables/<table> is the first configured model's copy."""
    input:
        csv=f"results/{HEADLINE_MODEL}/tables/{{table}}.csv",
        md=f"results/{HEADLINE_MODEL}/tables/{{table}}.md",
        tex=f"results/{HEADLINE_MODEL}/tables/{{table}}.tex",
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    conda:
        CONDA_ENV
    log:
        "logs/headline/{table}.log",
    benchmark:
        "logs/headline/benchmarks/{table}.tsv"
    shell:
        "(cp {input.csv} {output.csv} && cp {input.md} {output.md} && cp {input.tex} {output.tex}) > {log} 2>&1"


rule edit_shift_sweep:
    """Forward pass shift over layers x eta on cases outside the evaluation range, with the chosen setting."""
    output:
        editing_sweep=f"{EDIT_DIR}/shift_sweep.parquet",
        editing_sweep_choice=f"{EDIT_DIR}/shift_sweep_choice.json",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_shift_sweep.log",
    benchmark:
        "logs/{model}/benchmarks/edit_shift_sweep.tsv"
    params:
        command=lambda wc, output: hydra_call("edit_shift_sweep", wc, **output),
    shell:
        "{params.command} > {log} 2>&1"


rule edit_fig26:
    """Fig 26: shift accuracies across eta and layer."""
    input:
        editing_sweep=f"{EDIT_DIR}/shift_sweep.parquet",
    output:
        pdf="figures/{model}/fig26.pdf",
        png="figures/{model}/fig26.png",
    conda:
        CONDA_ENV
    log:
        "logs/{model}/edit_fig26.log",
    benchmark:
        "logs/{model}/benchmarks/edit_fig26.tsv"
    params:
        command=lambda wc, input, output: hydra_call("edit_fig26", wc, editing_sweep=input.editing_sweep, fig26=output.pdf),
    shell:
        "{params.command} > {log} 2>&1"
