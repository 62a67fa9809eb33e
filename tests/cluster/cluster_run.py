"""`make test-cluster`'s check: the smoke target through `snakemake --profile profiles/slurm` on a
running Slurm cluster (tests/cluster/slurm_cluster.sh), and the same target with `--cores 2`.

Checks: every job of the target went through sbatch (the job ids Snakemake logged are the jobs
sacct recorded, one per job of the local run's DAG, all COMPLETED, each with its log file);
model rules ran on the "gpu" partition with a GPU, the others on "cpu" without; and the outputs
of the two runs agree (COMPARED below). Prints a summary and writes it to <workdir>/summary.json.

    python tests/cluster/cluster_run.py --workdir /tmp/backlens-cluster-test
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from backlens.runs import Run, split_overrides

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROJECT_FILES = ("Snakefile", "workflow", "conf", "profiles", "environment.yml")

# The smoke experiment on the tiny GPT-2, small enough for 2 cores (n_prompts=8 as smoke sets it).
# A random model answers no fact correctly: trace the first facts regardless.
OVERRIDES = "experiment=smoke n_prompts=8 editing.n_cases=2 tracing.n_facts=2 tracing.only_correct=false"
RUN = Run("tiny-gpt2", tuple(split_overrides(OVERRIDES)[0])).name
# Run directory of the FF2 statistics (shared by runs agreeing on editing.smk's STATS_KEYS).
STATS_RUN = Run("tiny-gpt2", ("experiment=smoke",)).name
CONFIG = ["--config", "models=[tiny-gpt2]", f"overrides={OVERRIDES}"]
# Prompts, a Backward Lens shard and merge and Fig 3; FF2 statistics, one ROME shard and merge;
# the tracing screen, one shard and merge.
TARGETS = [
    f"figures/{RUN}/fig3.pdf",
    f"results/{RUN}/editing/rome/summary.json",
    f"results/{RUN}/tracing/summary.json",
]

# How an output is compared. BYTES: byte for byte (results are byte-reproducible at one thread
# count, tests/test_reproducibility.py; PDFs carry SOURCE_DATE_EPOCH's date). TIMINGS: JSON (or
# JSON lines) equal once every key naming seconds is dropped, at any depth: wall-clock times live
# in these meta files and cannot agree. TIMINGS_ONLY: files holding nothing but times (must exist).
BYTES, TIMINGS, TIMINGS_ONLY = "bytes", "without wall-clock seconds", "timings only: must exist"
# Every output of the target (fnmatch patterns: progress files are named after a fingerprint).
COMPARED = {
    f"results/{RUN}/prompts.parquet": BYTES,
    f"results/{RUN}/prompts.meta.json": BYTES,
    f"results/{RUN}/analysis_shards/0-8/*.parquet": BYTES,
    f"results/{RUN}/analysis_shards/0-8/meta.json": TIMINGS,
    f"results/{RUN}/*.parquet": BYTES,
    f"results/{RUN}/backward_lens.meta.json": TIMINGS,
    f"figures/{RUN}/fig3.pdf": BYTES,
    f"figures/{RUN}/fig3.png": BYTES,
    f"results/{STATS_RUN}/editing/ff2_mom2.pt": BYTES,
    f"results/{STATS_RUN}/editing/heldout_tokens.pt": BYTES,
    f"results/{RUN}/editing/rome/shards/0-2.*.jsonl": TIMINGS,
    f"results/{RUN}/editing/rome/shards/0-2.parquet": BYTES,
    f"results/{RUN}/editing/rome/shards/0-2.json": TIMINGS,
    f"results/{RUN}/editing/rome/cases.parquet": BYTES,
    f"results/{RUN}/editing/rome/summary.json": TIMINGS,
    f"results/{RUN}/editing/rome/timings.json": TIMINGS_ONLY,
    f"results/{RUN}/tracing/*.parquet": BYTES,
    f"results/{RUN}/tracing/screening.json": TIMINGS,
    f"results/{RUN}/tracing/screening_timings.json": TIMINGS_ONLY,
    f"results/{RUN}/tracing/shards/0-2*.parquet": BYTES,
    f"results/{RUN}/tracing/shards/0-2.json": TIMINGS,
    f"results/{RUN}/tracing/summary.json": TIMINGS,
    f"results/{RUN}/tracing/timings.json": TIMINGS_ONLY,
}

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def fail(message):
    sys.exit(f"cluster test: FAILED: {message}")


def project_copy(directory: Path) -> Path:
    """The workflow files in a scratch directory (as the workflow tests do), so that the two runs
    write beside each other and nothing into the checkout."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, directory / name)
    return directory


def site_profile(project: Path, account: str) -> Path:
    """profiles/slurm as a site would fill it in: only the account differs."""
    profile = yaml.safe_load((PROJECT_ROOT / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = account
    directory = project / "site-profile"
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def run_snakemake(project: Path, name: str, *args: str) -> tuple[float, str]:
    # Matplotlib stamps PDFs with the time they were drawn unless SOURCE_DATE_EPOCH fixes it
    # (the reproducible-builds convention); the same value in both runs (sbatch passes the
    # environment on) lets the PDFs be compared byte for byte.
    env = dict(os.environ, SOURCE_DATE_EPOCH="0")
    start = time.monotonic()
    result = subprocess.run([SNAKEMAKE, *args, *CONFIG, "--", *TARGETS], cwd=project, env=env,
                            capture_output=True, text=True)
    seconds = time.monotonic() - start
    text = result.stdout + result.stderr
    (project / f"{name}.snakemake.txt").write_text(text)
    if result.returncode != 0:
        fail(f"the {name} run exited with {result.returncode}; its output: {project / f'{name}.snakemake.txt'}\n"
             + text[-4000:])
    return seconds, text


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints at the start of a run: rule -> number of jobs."""
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and fields[0] != "total":
            counts[fields[0]] = int(fields[1])
    return counts


def sacct_jobs(job_ids: list[str]) -> pd.DataFrame:
    """sacct's records of the jobs, once every one has ended (slurmdbd records job ends a moment
    after Snakemake has seen them)."""
    command = ["sacct", "-X", "-P", "-j", ",".join(job_ids),
               "-o", "JobIDRaw,JobName,Partition,Account,AllocTRES,State,ExitCode,Comment"]
    for _ in range(60):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        table = pd.read_csv(io.StringIO(result.stdout), sep="|", dtype=str, keep_default_na=False)
        if len(table) == len(job_ids) and not table.State.isin(["PENDING", "RUNNING", "COMPLETING"]).any():
            return table
        time.sleep(1)
    return table


# A rule's first line: `rule <name>:`, or `use rule stage as <name> with:` for the stage rules.
RULE_HEAD = re.compile(r"^(?:rule|use rule \w+ as) (\w+)(?: with)?:", flags=re.MULTILINE)


def rule_bodies() -> dict[str, str]:
    """Every rule of workflow/rules/: its name -> the text of its block."""
    rules = {}
    for path in sorted((PROJECT_ROOT / "workflow/rules").glob("*.smk")):
        text = path.read_text()
        heads = list(RULE_HEAD.finditer(text))
        for head, following in zip(heads, [*heads[1:], None]):
            rules[head.group(1)] = text[head.end():following.start() if following else len(text)]
    return rules


def gpu_rules() -> set[str]:
    """Rules that declare `gpu=1` in their resources (those that run a model)."""
    return {name for name, body in rule_bodies().items()
            if re.search(r"^\s+resources:\s*\n(?:\s+\w+=.*\n)*?\s+gpu=", body, flags=re.MULTILINE)}


def check_submissions(project: Path, text: str, expected: dict[str, int]) -> pd.DataFrame:
    submitted = SUBMITTED.findall(text)
    rules = {}
    for _, job_id, log in submitted:
        # The plugin's log path: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<job id>.log
        rule = re.search(r"/rule_([^/]+)/", log).group(1)
        rules[job_id] = rule
        if Path(log).name != f"{job_id}.log":
            fail(f"SLURM log of job {job_id} ({rule}) is not named after its job id: {log}")
        if not (project / log).is_file() or not (project / log).read_text().strip():
            fail(f"SLURM log of job {job_id} ({rule}) is missing or empty: {project / log}")
    if sorted(pd.Series(list(rules.values())).value_counts().items()) != sorted(expected.items()):
        fail(f"submitted jobs per rule {pd.Series(list(rules.values())).value_counts().to_dict()} differ from the "
             f"local run's DAG {expected}")
    table = sacct_jobs(list(rules))
    if sorted(table.JobIDRaw) != sorted(rules):
        fail(f"sacct knows jobs {sorted(table.JobIDRaw)}, Snakemake submitted {sorted(rules)}")
    table["rule"] = table.JobIDRaw.map(rules)
    # The plugin names every job of one Snakemake run after the run's id.
    if table.JobName.nunique() != 1:
        fail(f"the jobs carry several names (run ids): {sorted(table.JobName.unique())}")
    bad = table[(table.State != "COMPLETED") | (table.ExitCode != "0:0")]
    if len(bad):
        fail(f"jobs that did not complete:\n{bad.to_string()}")
    if not table.apply(lambda row: row.Comment.startswith(f"rule_{row.rule}"), axis=1).all():
        fail(f"sacct comments do not name the submitted rules:\n{table.to_string()}")
    on_gpu = table.rule.isin(gpu_rules())
    has_gpu = table.AllocTRES.str.contains("gres/gpu=1")
    wrong = table[(on_gpu != (table.Partition == "gpu")) | (on_gpu != has_gpu)]
    if len(wrong):
        fail(f"jobs on the wrong partition (model rules: gpu partition with a GPU; others: cpu):\n{wrong.to_string()}")
    return table


def without_seconds(value):
    """A JSON value without the keys that name wall-clock seconds, at any depth."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def same_objects(a, b) -> bool:
    """Equal nested dicts/lists of tensors and plain values (tensors: same dtype, shape, values)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_objects(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_objects(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def same_output(local: Path, cluster: Path, how: str) -> bool:
    if how == BYTES:
        return local.read_bytes() == cluster.read_bytes()
    if how == TIMINGS_ONLY:
        return True
    lines = (p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()] for p in (local, cluster))
    a, b = ([without_seconds(json.loads(line)) for line in text] for text in lines)
    return a == b


def pattern_of(path: str) -> str | None:
    return next((pattern for pattern in COMPARED if fnmatch.fnmatchcase(path, pattern)), None)


def compare_outputs(local: Path, cluster: Path) -> dict[str, str]:
    produced = {
        str(p.relative_to(root)) for root in (local, cluster) for top in ("results", "figures")
        for p in (root / top).rglob("*") if p.is_file()
    }
    unlisted = sorted(path for path in produced if pattern_of(path) is None)
    if unlisted:
        fail(f"outputs not in COMPARED (add them): {unlisted}")
    unmatched = sorted(pattern for pattern in COMPARED if not any(fnmatch.fnmatchcase(p, pattern) for p in produced))
    if unmatched:
        fail(f"COMPARED entries that match no output (remove or fix them): {unmatched}")
    verdicts, problems = {}, []
    for path in sorted(produced):
        how = COMPARED[pattern_of(path)]
        if not (local / path).is_file() or not (cluster / path).is_file():
            problems.append(f"{path}: missing from the {'local' if not (local / path).is_file() else 'cluster'} run")
        elif not same_output(local / path, cluster / path, how):
            problems.append(f"{path} differs between the local and the cluster run ({how})")
        else:
            verdicts[path] = f"identical ({how})"
    if problems:
        fail("\n".join(problems))
    return verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backlens-cluster-test"))
    parser.add_argument("--account", default=os.environ.get("BACKLENS_SLURM_ACCOUNT", "backlens"))
    args = parser.parse_args()
    slurm_version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=True).stdout.strip()

    local = project_copy(args.workdir / "local")
    local_seconds, local_text = run_snakemake(local, "local", "--cores", "2")
    expected = job_counts(local_text)
    print(f"cluster test: local run --cores 2: {sum(expected.values())} jobs in {local_seconds:.0f} s", flush=True)

    cluster = project_copy(args.workdir / "slurm")
    profile = site_profile(cluster, args.account)
    # Kept SLURM logs show each job's id in its file name; 10 s before the first status query
    # instead of 40 (the jobs take about a minute each).
    cluster_seconds, cluster_text = run_snakemake(
        cluster, "slurm", "--profile", str(profile), "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks", "10",
    )
    table = check_submissions(cluster, cluster_text, expected)
    print(f"cluster test: slurm run: {len(table)} sbatch jobs, all COMPLETED, in {cluster_seconds:.0f} s", flush=True)
    print(table[["JobIDRaw", "rule", "Partition", "Account", "AllocTRES", "State"]].to_string(index=False))

    verdicts = compare_outputs(local, cluster)
    kinds = {how: sum(v == f"identical ({how})" for v in verdicts.values()) for how in (BYTES, TIMINGS, TIMINGS_ONLY)}
    print(f"cluster test: {len(verdicts)} outputs agree: {kinds[BYTES]} byte for byte, {kinds[TIMINGS]} "
          f"{TIMINGS}, {kinds[TIMINGS_ONLY]} hold timings only", flush=True)
    summary = {
        "slurm_version": slurm_version,
        "local_seconds": round(local_seconds, 1),
        "cluster_seconds": round(cluster_seconds, 1),
        "sbatch_jobs": len(table),
        "jobs": table[["JobIDRaw", "rule", "Partition", "Account", "AllocTRES", "State", "ExitCode"]]
        .to_dict("records"),
        "outputs": verdicts,
    }
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"cluster test: passed (summary: {args.workdir / 'summary.json'})")


if __name__ == "__main__":
    main()
