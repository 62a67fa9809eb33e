# Backward Lens replication pipeline. Snakemake owns paths, wildcards and sweeps; every rule
# calls one thin Hydra script (scripts/) with its output paths as overrides.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/tracing.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/editing.smk"


rule all:
    default_target: True
    input:
        DEFAULT_TARGETS,
