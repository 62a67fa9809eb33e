# Helpers shared by the rules: runs (result directories named after their overrides), how a rule
# calls its stage, output groups, experiments and the default target.
import functools
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from backlens.artifacts import artifact, artifact_paths, shard_files, shard_meta_path
from backlens.figures.captions import caption_for
from backlens.figures.compare import CROSS_MODEL_GALLERY
from backlens.editing.method_configs import methods_run
from backlens.analysis.scorecard import CLAIM_TABLES
from backlens.figures.registry import FIGURES
from backlens.project import config_dir
from backlens.table_names import GRADIENT_TABLES
from backlens.runs import Run, expand_sweep, override_key, parse_run, runs_of_label, split_overrides, sweep_label

PYTHON = sys.executable
# With --sdm conda every rule runs in the pinned environment; otherwise in the current one.
CONDA_ENV = "../../environment.yml"
MODEL_CONFIGS = sorted(p.stem for p in config_dir("model").glob("*.yaml"))
EXPERIMENT = yaml.safe_load(Path(f"workflow/experiments/{config['experiment']}.yaml").read_text())
# Overrides of the user (--config overrides=...) and of the experiment, split into those that name
# the result directory and those that only say where it runs (device).
NAMED_OVERRIDES, PLACEMENT_OVERRIDES = split_overrides(f"{EXPERIMENT.get('overrides', '')} {config['overrides']}")
USER_MODELS = next((o.split("=", 1)[1].split(",") for o in NAMED_OVERRIDES if override_key(o) == "model"), None)


def fail(message):
    """Stop the workflow before any job with one line on the console (no traceback)."""
    sys.exit(f"error: {message}")


def check_model_names():
    """Every model named by --config models=..., overrides="model=..." or the experiment has a config."""
    named = {*(USER_MODELS or []), *config["models"]}
    for mapping in (EXPERIMENT.get("outputs") or {}, EXPERIMENT.get("comparisons") or {}):
        named.update(m for models in mapping.values() for m in models)
    unknown = sorted(named - set(MODEL_CONFIGS))
    if unknown:
        fail(f"unknown model {unknown[0]!r}; known: {', '.join(MODEL_CONFIGS)} "
             "(a new model needs src/backlens/conf/model/<name>.yaml)")


check_model_names()


wildcard_constraints:
    run=rf"(?:{'|'.join(MODEL_CONFIGS)})(?:__[^/]+)?",
    sweep=r"[^/]+",


def models_of(targets):
    """Models of the runs under results/<run>/ and figures/<run>/, and of the compared runs."""
    models = set()
    for target in targets:
        parts = Path(target).parts
        if parts[:2] == ("figures", "compare"):
            models.update(r.model for r in runs_of_label(parts[2]))
        elif len(parts) > 2 and parts[0] in ("results", "figures"):
            models.add(parse_run(parts[1]).model)
    # results/tables/, results/corpus/: folders of copies and shared inputs, not runs.
    return sorted(models & set(MODEL_CONFIGS))


def check_models(models):
    """Stop the workflow with one line per unreachable model (ModelUnavailableError's message)."""
    from omegaconf import OmegaConf

    from backlens.models.loading import ModelUnavailableError, check_available

    problems = []
    for name in models:
        try:
            # The model's config as Hydra composes it (its ${oc.env:...} paths resolved), not the raw yaml.
            check_available(OmegaConf.to_container(run_config(name).model, resolve=True))
        except ModelUnavailableError as error:
            problems.append(f"error: {error}")
    if problems:
        sys.exit("\n".join(problems))


# Every rule's log: and benchmark: (the job's name, under logs/{run}/ or another folder of logs/).
def job_log(name, folder="{run}"):
    return f"logs/{folder}/{name}.log"


def job_benchmark(name, folder="{run}"):
    return f"logs/{folder}/benchmarks/{name}.tsv"


def hydra_override(override):
    # methods.<name>.* keys do not exist until set: Hydra needs ++ to add them.
    return f"++{override}" if override.startswith("methods.") else override


# The one entry point of every stage (src/backlens/stage.py): `STAGE <name> <overrides>`.
STAGE = f"{PYTHON} -m backlens.stage"
# It composes conf/ of $BACKLENS_ROOT (else of the package's checkout): the jobs read the conf/ the
# DAG is composed from (run_config), also when the workflow runs in a copy of the checkout.
os.environ.setdefault("BACKLENS_ROOT", str(Path.cwd()))


def stage_command(stage, words):
    """Shell command running stage ``stage`` with the Hydra overrides ``words`` (each shell-quoted)."""
    return f"{STAGE} {stage} " + " ".join(shlex.quote(w) for w in words)


def hydra_call(stage, wildcards, *settings, **paths):
    """Shell command running ``stage`` for the run in ``wildcards.run``: its model and overrides,
    extra ``settings`` (e.g. "method=rome") and ``paths.<key>=<value>`` for each path (a list of
    paths becomes a Hydra list)."""
    run = parse_run(wildcards.run)
    # Run names may hold = , [ ]: Hydra reads them only as quoted strings.
    words = [f"model={run.model}", f'run_name="{run.name}"']
    for key, value in paths.items():
        words.append(f"paths.{key}={json.dumps(list(value))}" if isinstance(value, (list, tuple)) else f'paths.{key}="{value}"')
    words += [hydra_override(o) for o in (*run.overrides, *PLACEMENT_OVERRIDES)]
    words += list(settings)
    # Parallel jobs of one stage (methods, shards) keep their Hydra run directories apart.
    job = "_".join([stage, *(str(value) for key, value in wildcards.items() if key != "run")])
    words.append(f'hydra.run.dir="logs/hydra/{run.name}/{job}"')
    return stage_command(stage, words)


def with_suffix(path, suffix):
    """A file the stages write beside ``path`` (table1.md beside table1.csv)."""
    return str(Path(path).with_suffix(suffix))


def png_of(pdf):
    """The PNG the figure stages write beside a figure's PDF (backlens.figures.common.save_figure)."""
    return with_suffix(pdf, ".png")


def shared_run(wildcards, prefixes):
    """Directory of an artefact shared by every run that agrees on the overrides starting with
    ``prefixes`` (covariance statistics, MEND's editor): a sweep over eta reuses them."""
    return parse_run(wildcards.run).keeping(prefixes).name


@functools.lru_cache(maxsize=None)
def run_config(run_name):
    """The run's resolved Hydra config (for case counts the shard jobs are cut from)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from backlens.config_checks import check_run_config
    from backlens.errors import UserError

    run = parse_run(run_name)
    overrides = [f"model={run.model}", *(hydra_override(o) for o in run.overrides)]
    try:
        with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        check_run_config(cfg)
    except UserError as error:
        fail(error)
    except (HydraException, OmegaConfBaseException) as error:
        # Hydra's first line names the override, its cause says why; its "use +key" hint would
        # only add a misspelt key, so it is left out.
        cause = f" ({str(error.__cause__).splitlines()[0]})" if error.__cause__ else ""
        fail(f"overrides {' '.join(run.overrides)!r}: {str(error).splitlines()[0]}{cause}; "
             "check the key against conf/config.yaml and conf/<group>/")
    return cfg


# Config group of each data file -> the name the library's loaders give it in messages.
DATA_FILES = {"dataset": "CounterFact", "known_facts": "known_1000"}


@functools.lru_cache(maxsize=None)
def data_file(run_name, key):
    """The data file of config group ``key`` that the run's jobs read, found by the library's own
    resolver (dataset.path, BACKLENS_COUNTERFACT / BACKLENS_KNOWN_FACTS, data_dir, cached download).
    As a rule input, another file or a newer one reruns every job that reads it."""
    from backlens.data.sources import DataUnavailableError, resolve_from_config

    try:
        return str(resolve_from_config(run_config(run_name)[key], DATA_FILES[key]))
    except DataUnavailableError as error:
        fail(error)


def data_inputs(*keys):
    """Input function: the run's data files of config groups ``keys`` (unnamed, so `**input` leaves them out)."""
    return lambda wc: [data_file(wc.run, key) for key in keys]


def shards(n_items, size):
    """[start, stop) pieces of range(n_items), ``size`` items each (the last may be shorter)."""
    return [(start, min(start + size, n_items)) for start in range(0, n_items, size)]


def sweep_inputs(pattern):
    """Input function: ``pattern`` (with {run}) for every run of the {sweep} wildcard."""
    return lambda wc: [pattern.format(run=r.name) for r in runs_of_label(wc.sweep)]


def quoted_list(paths):
    """A Hydra list override value whose items may contain = and , (run names do)."""
    return shlex.quote(json.dumps(list(paths)))


# Rule inputs and outputs are named and placed by backlens.artifacts (ARTIFACTS: one entry per file,
# shared with conf/config.yaml's paths): artifact("prompts") is results/{run}/prompts.parquet.
ANALYSIS_TABLES = list(GRADIENT_TABLES)  # the backward_lens stage's tables (backlens.table_names)


def analysis_shards(wc):
    """Meta files of the backward_lens shards, cut from the run's n_prompts at analysis_shard_size."""
    n_prompts = int(run_config(wc.run).n_prompts)
    return [
        artifact("analysis_shard_meta", run=wc.run, shard=f"{a}-{b}") for a, b in shards(n_prompts, config["analysis_shard_size"])
    ]


def trace_shard_files(**fields):
    """{kind: path} of a trace_shard job's files: its facts table (tracing_shard) and the tokens,
    effects and meta files the library's shard_files puts beside it."""
    files = shard_files(artifact("tracing_shard", **fields))
    return {("tracing_shard" if kind == "facts" else kind): str(path) for kind, path in files.items()}


def tracing_shard_files(wc, *kinds):
    """A run's trace_shard files of the given kinds (keys of trace_shard_files), cut from its
    tracing.n_facts; shards past the facts the screening chose come out empty."""
    return [
        trace_shard_files(run=wc.run, shard=f"{a}-{b}")[kind]
        for a, b in shards(int(run_config(wc.run).tracing.n_facts), config["tracing_shard_size"])
        for kind in kinds
    ]


# --- Editing: artefacts shared between runs, shard jobs, comparisons ------------------------
# Overrides the statistics (and held-out text) or MEND's editor depend on; a run differing only in
# others (e.g. methods.shift.eta) reuses the artefacts of the run with just these overrides.
STATS_KEYS = ("model.", "dtype", "seed", "experiment", "editing.corpus", "editing.covariance_methods",
              "editing.sweep.layers", "editing.sweep.layer_offsets", "methods.rome", "methods.memit", "methods.shift_whitened")
MEND_KEYS = ("model.", "dtype", "seed", "experiment", "dataset", "editing.mend_training", "methods.mend")


def shared_statistics(wc):
    return artifact_paths(["editing_stats", "editing_heldout"], run=shared_run(wc, STATS_KEYS))


def shared_mend(wc):
    return artifact_paths(["editing_mend"], run=shared_run(wc, MEND_KEYS)) if wc.method == "mend" else {}


def table1_method_list(cfg, beyond=False):
    """Table 1's methods (editing.table1_methods), and with ``beyond`` the rows beyond the paper after
    them (editing.sequential.table1_methods), without repeats."""
    names = [*cfg.editing.table1_methods, *(cfg.editing.sequential.table1_methods if beyond else [])]
    return list(dict.fromkeys(str(name) for name in names))


def table1_results(*names, beyond=False):
    """Input function: the artefacts ``names`` (editing_cases, ...) of every Table 1 method of the
    run (its composed config: editing.table1_methods may be overridden; ``beyond``: with the rows
    beyond the paper) that its model's editors do not refuse (editing.refused_methods), keyed
    <kind>_<method>."""

    def inputs(wc):
        cfg = run_config(wc.run)
        methods = methods_run(cfg, table1_method_list(cfg, beyond))
        return {
            f"{name.removeprefix('editing_')}_{method}": artifact(name, run=wc.run, method=method)
            for method in methods
            for name in names
        }

    return inputs


def editing_shards(wc):
    """The shard tables of one method, cut from the run's editing.n_cases."""
    size = config["editing_shard_size"]
    n_cases = int(run_config(wc.run).editing.n_cases)
    return [artifact("editing_shard", run=wc.run, method=wc.method, shard=f"{a}-{b}") for a, b in shards(n_cases, size)]


def small_statistics_inputs(wc):
    """The default run's and the small-statistics run's per-case tables of editing.small_statistics's
    methods, and both runs' statistics. The small run is this run plus the two overrides that make it."""
    spec = run_config(wc.run).editing.small_statistics
    run = parse_run(wc.run)
    small = Run(run.model, (*run.overrides, f"editing.corpus.n_tokens_per_d_ff={spec.n_tokens_per_d_ff}",
                            f"editing.n_cases={spec.n_cases}")).name
    return {
        "small_statistics_default": [artifact("editing_cases", run=wc.run, method=m) for m in spec.methods],
        "small_statistics_small": [artifact("editing_cases", run=small, method=m) for m in spec.methods],
        "small_statistics_stats": [artifact("editing_stats", run=parse_run(r).keeping(STATS_KEYS).name)
                                   for r in (wc.run, small)],
    }


def sequential_series(wc):
    """Checkpoint tables of every series of the run's editing.sequential: each method's single edits,
    then each batch method at each batch size (without the methods its model's editors refuse)."""
    cfg = run_config(wc.run)
    seq = cfg.editing.sequential
    paths = [artifact("sequential_checkpoints", run=wc.run, method=m, series="single") for m in methods_run(cfg, seq.methods)]
    paths += [artifact("sequential_checkpoints", run=wc.run, method=m, series=f"batch{b}")
              for m in methods_run(cfg, seq.batch_methods) for b in seq.batch_sizes]
    return paths


def comparison_inputs(wc):
    return {table: sweep_inputs(pattern)(wc) for table, pattern in COMPARISON_TABLES[wc.kind].items()}


# --- docs/ (workflow/rules/docs.smk): what the repository shows, from the default run ---------
def headline(pattern, name):
    """Input function: ``pattern`` (with {run} and the rule's wildcards) for the run whose copy of
    ``name`` (which may hold the wildcards too) the docs show."""

    def inputs(wc):
        values = {key: getattr(wc, key) for key in wc.keys()}
        return pattern.format(run=headline_run(name.format(**values)), **values)

    return inputs


def docs_command(stage, output_key, inputs, output):
    """A call of ``stage`` with ++paths.<key>= for every input and the output (these keys are not
    in conf/config.yaml's paths: the docs rules alone set them)."""
    words = [f"++paths.{key}={value}" for key, value in inputs.items()]
    words += [f"++paths.{output_key}={output}", f"hydra.run.dir=logs/hydra/headline/{stage}"]
    return stage_command(stage, words)


def docs_comparison_png(wc):
    """The PNG of the comparison a cross-model gallery image copies (CROSS_MODEL_GALLERY), over the
    docs' runs: figures/compare/<models>/<kind>.png."""
    sweep = sweep_label(group_models("docs"), NAMED_OVERRIDES)
    return png_of(artifact("comparison", sweep=sweep, stem=CROSS_MODEL_GALLERY[wc.name]))


def docs_runs_command(stage, inputs, output):
    """A call of ``stage`` over several runs: ++<stage>.tables.<key>=[one path per run] for every
    input, and ++paths.<stage>= the output."""
    words = [f"++{stage}.tables.{key}={json.dumps(list(paths))}" for key, paths in inputs.items()]
    words += [f"++paths.{stage}={output}", f"hydra.run.dir=logs/hydra/headline/{stage}"]
    return stage_command(stage, words)
