# Helpers shared by the rules: how a rule calls its Hydra script, and the default targets.
import sys
from pathlib import Path

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
