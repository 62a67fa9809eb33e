# Output groups and the default target: each rules file registers its final outputs under a group
# name (register_outputs); `rule all` asks for default_targets(). Included right after common.smk.
# Each rules file registers its final outputs under a group name; `{run}` stands for the run.
OUTPUT_GROUPS = {}
# Figures comparing the runs of a sweep, per group: `{sweep}` stands for the sweep label.
COMPARISONS = {}
GROUP_ALIASES = {
    "analysis": ["analysis_report", *FIGURES],
    "editing": ["table1", "table7", "fig26"],
}


# Output file stem (fig4, table1, tracing_avg) -> its group.
OUTPUT_OF = {}
# Groups built only when asked for by name (outputs=...), not by the default target.
ON_REQUEST_GROUPS = set()


def register_outputs(group, *patterns, on_request=False):
    OUTPUT_GROUPS.setdefault(group, []).extend(patterns)
    if on_request:
        ON_REQUEST_GROUPS.add(group)
    # Copies of another group's outputs (headline, gallery) have no {run} and are not indexed.
    OUTPUT_OF.update((Path(p).stem, group) for p in patterns if "{run}" in p)


def register_comparison(group, *patterns):
    COMPARISONS.setdefault(group, []).extend(patterns)


# Outputs of a group built only when its runs span several models (docs' cross-model figures and
# per-model scorecard); they name no run: their rules find the runs with group_runs.
MODEL_COMPARISONS = {}


def register_model_comparison(group, *paths):
    MODEL_COMPARISONS.setdefault(group, []).extend(paths)


def selected_groups():
    """Groups named by --config outputs="..." (aliases expanded), or the experiment's, or all."""
    names = config["outputs"].split() or list(
        EXPERIMENT.get("outputs") or [g for g in OUTPUT_GROUPS if g not in ON_REQUEST_GROUPS]
    )
    groups = [g for name in names for g in GROUP_ALIASES.get(name, [name])]
    unknown = sorted(set(groups) - set(OUTPUT_GROUPS))
    if unknown:
        raise ValueError(f"outputs: unknown group(s) {unknown}; known: {sorted(OUTPUT_GROUPS)} and {sorted(GROUP_ALIASES)}")
    return groups


def group_models(group):
    """Models of a group: model=... in the overrides, else the experiment's mapping, else config models."""
    if USER_MODELS:
        return USER_MODELS
    return (EXPERIMENT.get("outputs") or {}).get(group) or config["models"]


def group_runs(group):
    """The runs the default target builds for ``group`` (its models x the sweep's values)."""
    return expand_sweep(group_models(group), NAMED_OVERRIDES)


def headline_run(name):
    """The run whose copy of a figure or table goes to figures/<name>.pdf or results/tables/."""
    return expand_sweep(group_models(OUTPUT_OF.get(name, name)), NAMED_OVERRIDES)[0].name


def default_targets():
    targets = []
    for group in selected_groups():
        models = group_models(group)
        runs = group_runs(group)
        for run in runs:
            run_config(run.name)  # a bad override stops here, with one line, before any job
        targets += expand(OUTPUT_GROUPS[group], run=[r.name for r in runs])
        if len(runs) > 1:
            label = sweep_label(models, NAMED_OVERRIDES)
            targets += expand(COMPARISONS.get(group, []), sweep=label)
        if len({r.model for r in runs}) > 1:
            targets += MODEL_COMPARISONS.get(group, [])
    for group, models in (EXPERIMENT.get("comparisons") or {}).items():
        targets += expand(COMPARISONS[group], sweep=sweep_label(models, NAMED_OVERRIDES))
    return list(dict.fromkeys(targets))
