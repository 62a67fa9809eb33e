# Backward Lens replication pipeline. Snakemake owns paths, wildcards and sweeps; every rule that
# computes runs one stage (python -m backlens.stage <name>) with its output paths as Hydra overrides.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/stage.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/beyond.smk"
include: "workflow/rules/tracing.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/editing.smk"
include: "workflow/rules/sequential.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/docs.smk"


onstart:
    # Before any job: every model the default target needs must be loadable (offline, a hub
    # model fails here with the model error instead of deep inside a rule).
    check_models(models_of(default_targets()))


rule all:
    default_target: True
    input:
        default_targets(),
