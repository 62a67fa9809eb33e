# Helpers shared by the rules: how a rule calls its Hydra script, and the default targets.
import sys
from pathlib import Path

from backlens.figures.registry import FIGURES

PYTHON = sys.executable
# With --sdm conda every rule runs in the pinned environment; otherwise in the current one.
CONDA_ENV = "../../environment.yml"
MODEL_CONFIGS = sorted(p.stem for p in Path("conf/model").glob("*.yaml"))


wildcard_constraints:
    model="|".join(MODEL_CONFIGS),


def hydra_call(script, wildcards, **paths):
    """Shell command running scripts/<script>.py with the model, output paths and user overrides."""
    path_overrides = " ".join(f"paths.{key}={value}" for key, value in paths.items())
    return f"{PYTHON} scripts/{script}.py model={wildcards.model} {path_overrides} {config['overrides']}"


# Each rules file appends the outputs it contributes to the default target `all`.
DEFAULT_TARGETS = []


def per_model(*patterns):
    """Expand result patterns over the configured models."""
    return expand(list(patterns), model=config["models"])


# File names of the per-model result tables under results/{model}/.
RESULT_TABLES = {
    "prompts": "prompts.parquet",
    "gradient_ranks": "gradient_ranks.parquet",
    "vjp_norms": "vjp_norms.parquet",
    "target_ranks": "target_ranks.parquet",
    "neuron_updates": "neuron_updates.parquet",
    "vjp_similarity": "vjp_similarity.parquet",
    "logit_lens_cells": "logit_lens_cells.parquet",
    "logit_lens_tokens": "logit_lens_tokens.parquet",
    "lemma_check": "lemma_check.parquet",
}


def table_paths(names):
    """{table name: results/{model}/<file>} for rule inputs and outputs."""
    return {name: f"results/{{model}}/{RESULT_TABLES[name]}" for name in names}
