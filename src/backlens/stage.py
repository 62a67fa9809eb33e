"""``python -m backlens.stage <name> [hydra overrides...]``: run one pipeline stage.

The one entry point of every workflow rule (``hydra_call`` in workflow/rules/common.smk writes the
command). It composes the project's Hydra config (conf/config.yaml of the project root, whatever the
working directory) with the overrides, as ``@hydra.main`` does, so ``--cfg job``, ``--help`` and
``hydra.run.dir=...`` work as they did for the former per-stage scripts:

    python -m backlens.stage render_figure figure=fig3
    python -m backlens.stage sample_prompts model=gpt2 --cfg job
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from backlens.errors import UserError

# Stage name (the rules' name for it) -> "<module of backlens.stages>.<function>". Modules are
# imported only for the stage that runs: a report stage does not load the tracing code.
STAGES = {
    "analysis_report": "analysis_report.run",
    "attention": "attention.run",
    "attention_report": "beyond_reports.attention_report",
    "backward_lens": "backward_lens.run",
    "backward_lens_merge": "backward_lens_merge.merge",
    "compare_runs": "compare_runs.run",
    "counterfact_corpus": "counterfact_corpus.run",
    "edit_covariance": "editing_covariance.run",
    "edit_evaluate": "editing_evaluate.run",
    "edit_fig26": "editing_figures.run",
    "edit_mend_train": "editing_mend_train.run",
    "edit_merge": "editing_merge.merge",
    "edit_method_sweep": "editing_method_sweep.run",
    "edit_sequential": "editing_sequential.run",
    "edit_sequential_table": "editing_sequential.merge",
    "edit_shift_sweep": "editing_sweep.run",
    "edit_small_statistics": "editing_small_statistics.run",
    "edit_table1": "editing_tables.run_table1",
    "edit_table7": "editing_tables.run_table7",
    "edit_timings": "editing_timings.run",
    "embedding_anisotropy": "embedding_anisotropy.run",
    "ft_trace": "ft_trace.run",
    "ft_trace_report": "beyond_reports.ft_trace_report",
    "lemma_check": "lemma_check.run",
    "logit_lens_examples": "logit_lens_examples.run",
    "render_figure": "render_figure.run",
    "sample_prompts": "sample_prompts.run",
    "scorecard": "scorecard.run",
    "scorecard_models": "scorecard_models.run",
    "sequential_report": "sequential_report.run",
    "trace_figures": "tracing_figures.run",
    "trace_merge": "causal_tracing_merge.merge",
    "trace_screen": "causal_tracing.screen",
    "trace_shard": "causal_tracing.trace_shard",
    "tracing_report": "tracing_report.run",
}

USAGE = "usage: python -m backlens.stage <name> [hydra overrides...]"


class UnknownStage(UserError):
    """A stage name not in STAGES; the message lists the known ones."""


def stage_function(name: str) -> Callable:
    """The function of stage ``name`` (its module imported now), or UnknownStage."""
    if name not in STAGES:
        raise UnknownStage(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    module, function = STAGES[name].rsplit(".", 1)
    return getattr(importlib.import_module(f"backlens.stages.{module}"), function)


def run(name: str, arguments: Sequence[str]) -> None:
    """Run stage ``name`` under ``@hydra.main`` with ``arguments`` (overrides and Hydra's flags)."""
    stage = stage_function(name)

    import hydra
    from omegaconf import DictConfig

    from backlens.cli import run_stage
    from backlens.project import project_root

    # An absolute config_path: Hydra would read a relative one against this file, not the project.
    @hydra.main(version_base="1.3", config_path=str(project_root() / "conf"), config_name="config")
    def main(cfg: DictConfig) -> None:
        run_stage(cfg, stage)

    # Hydra would name the job after this file ("stage"); the job name names the default run
    # directory (conf/hydra/default.yaml) and the job's log file, so it is the stage's, unless the
    # caller gives hydra.job.name=... .
    job_name = [] if any(a.startswith("hydra.job.name=") for a in arguments) else [f"hydra.job.name={name}"]
    sys.argv = [sys.argv[0], *job_name, *arguments]
    main()


def console(argv: Sequence[str] | None = None) -> None:
    """``python -m backlens.stage``: the usage without a name, one error line for an unknown one."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        listing = "\n".join(f"  {name:24} backlens.stages.{target}" for name, target in STAGES.items())
        print(f"{USAGE}\n\nstages:\n{listing}", file=sys.stdout if arguments else sys.stderr)
        sys.exit(0 if arguments else 2)
    try:
        run(arguments[0], arguments[1:])
    except UnknownStage as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    console()
