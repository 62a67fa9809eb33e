"""Result directories named after the configuration that produced them.

A *run* is a model config plus Hydra overrides. Its directory name is readable and reversible:
``smollm2-135m`` for the defaults, ``smollm2-135m__dtype=float64__methods.shift.eta=0.1`` with
overrides (sorted, so the same overrides in another order give the same directory). Snakemake
passes the name through the ``{run}`` wildcard and the stages get the overrides back from it, so
runs with different overrides never overwrite each other and any result path can be asked for
directly.

A *sweep* is written like a run with comma-separated values (Hydra's multirun syntax):
``smollm2-135m__methods.shift.eta=0.1,0.3`` expands to two runs, and names the comparison
figures of those runs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from urllib.parse import quote, unquote

SEPARATOR = "__"
# Overrides that say where a run executes, not what it computes: applied to every script call
# but kept out of directory names, so a GPU run fills the same directory as a CPU run.
PLACEMENT_KEYS = ("device", "num_threads", "tracing.num_threads")
_SAFE = "=.,-_+:[]@~"


@dataclass(frozen=True)
class Run:
    model: str
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return SEPARATOR.join([self.model, *(quote(o, safe=_SAFE) for o in sorted(self.overrides))])

    def keeping(self, prefixes: tuple[str, ...]) -> "Run":
        """The run with only the overrides whose key starts with one of ``prefixes``: where an
        artefact that depends on nothing else (e.g. covariance statistics) is shared from."""
        return Run(self.model, tuple(o for o in self.overrides if override_key(o).startswith(prefixes)))


def override_key(override: str) -> str:
    """``methods.shift.eta`` for ``methods.shift.eta=0.1`` (Hydra's +/++/~ prefixes dropped)."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    return override.split("=", 1)[0].lstrip("+~")


def parse_run(name: str) -> Run:
    """The inverse of ``Run.name``."""
    model, *overrides = name.split(SEPARATOR)
    return Run(model, tuple(unquote(o) for o in overrides))


def split_values(value: str) -> list[str]:
    """Top-level comma-separated values; commas inside brackets or quotes do not split."""
    values, depth, quote_char, current = [], 0, None, ""
    for char in value:
        if quote_char:
            quote_char = None if char == quote_char else quote_char
        elif char in "'\"":
            quote_char = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def split_overrides(text: str) -> tuple[list[str], list[str]]:
    """(overrides that name the run, placement overrides) from a space-separated string."""
    named, placement = [], []
    for override in shlex.split(text or ""):
        (placement if override_key(override) in PLACEMENT_KEYS else named).append(override)
    return named, placement


def expand_sweep(models: list[str], overrides: list[str]) -> list[Run]:
    """Every run of ``models`` x the comma-separated values of each override, in order.
    A ``model=a,b`` override replaces ``models``."""
    choices: list[list[str]] = []
    for override in overrides:
        key, value = override.split("=", 1)
        if override_key(override) == "model":
            models = split_values(value)
            continue
        choices.append([f"{key}={v}" for v in split_values(value)])
    return [Run(model, combo) for model in models for combo in product(*choices)]


def sweep_label(models: list[str], overrides: list[str]) -> str:
    """Directory name of a sweep's comparison figures: its models and overrides, commas kept."""
    without_model = [o for o in overrides if override_key(o) != "model"]
    return Run(",".join(models), tuple(without_model)).name


def runs_of_label(label: str) -> list[Run]:
    """The runs a sweep label stands for (``sweep_label``'s inverse, expanded)."""
    parsed = parse_run(label)
    return expand_sweep(split_values(parsed.model), list(parsed.overrides))


def varying_overrides(runs: list[Run]) -> list[str]:
    """A short legend label per run: its model and the overrides that differ between the runs."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    several_models = len({r.model for r in runs}) > 1
    labels = []
    for run in runs:
        parts = ([run.model] if several_models else []) + [o for o in run.overrides if o not in common]
        labels.append(" ".join(parts) or run.model)
    return labels


def run_of(path: str) -> str:
    """The run directory name in results/<run>/..."""
    parts = Path(path).parts
    if len(parts) < 2 or parts[0] != "results":
        raise ValueError(f"compare.tables: {path} is not under results/<run>/")
    return parts[1]
