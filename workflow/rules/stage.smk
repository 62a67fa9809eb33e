# The template of every stage rule: `use rule stage as <name> with:` gives a rule its docstring,
# input, output, log, benchmark, params.command (hydra_call) and resources; the environment and the
# shell below are written once, here. The template has no output: no target needs it, no job runs it.

# The shell: the job's output goes to its log (the resolved config, progress); on a failure the
# one-line error (run_stage prints "error: ...") is also shown on the console, with the log's tail
# for anything else, so the user does not have to open a 300-line log to read it.
STAGE_SHELL = (
    "{params.command} num_threads={threads} > {log} 2>&1 "
    "|| {{ grep -h '^error: ' {log} >&2 || tail -n 20 {log} >&2; exit 1; }}"
)


rule stage:
    """Template of the stage rules (no output: never a job)."""
    conda:
        CONDA_ENV
    # Every stage rule sets its own log and benchmark; this one is only for --lint.
    log:
        job_log("stage", folder="template"),
    shell:
        STAGE_SHELL
