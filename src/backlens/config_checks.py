"""Checks of a composed run config that the workflow makes at DAG time and every stage repeats,
so a bad override is one line before any job runs instead of a traceback inside one."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from backlens.errors import positive_int

# Counts the workflow cuts shard jobs from (a bad value would break the DAG itself).
COUNT_KEYS = ("n_prompts", "editing.n_cases", "tracing.n_facts")


def check_run_config(cfg: DictConfig) -> None:
    """Counts are whole numbers >= 1, every ``methods.<name>.<key>`` override exists and every method
    ``editing.refused_methods`` lists has an editor that refuses some models."""
    # Imported here, not at the top: the workflow imports this module at DAG time. The method configs'
    # module loads no torch, so a figure or table stage does not load it for this check.
    from backlens.editing.method_configs import check_all_method_overrides, check_refused_methods

    for key in COUNT_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            positive_int(value, key)
    check_all_method_overrides(cfg.get("methods"))
    if cfg.get("editing") is not None:
        check_refused_methods(cfg.editing.get("refused_methods"))
