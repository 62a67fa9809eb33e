"""The benchmark JSON convention (``benchmarks/*.py --out F.json``) and ``docs/performance.md``.

Every benchmark writes one object: ``benchmark`` (script stem), ``model``, ``device``, ``smoke``,
``settings`` (the knobs used), timings as flat keys ending in ``_s`` (seconds), ``ratios`` (each of
two timings measured in the same run) and ``goals`` (``name``, ``value``, ``bound``, ``met``, with
``met`` computed). ``make bench`` runs them all into results/bench/ and renders the page with

    python -m backlens.bench render results/bench docs/performance.md
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from backlens.conf import DEFAULT_MODEL

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = ("benchmark", "model", "device", "smoke", "settings", "ratios", "goals")


def goal(name: str, value: float, bound: float, *, at_most: bool = True) -> dict:
    """A goal ``value <= bound`` (``at_most``) or ``value >= bound``, ``met`` computed from the two."""
    met = value <= bound if at_most else value >= bound
    return {"name": f"{name} {'<=' if at_most else '>='} {bound:g}", "value": float(value), "bound": float(bound),
            "met": bool(met and math.isfinite(value))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        # The page this module writes is the benchmarks' output, not their code: a changed
        # docs/performance.md does not make the run's commit dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/performance.md"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


# The commit a benchmark runs (its code is imported at start; the tree may move on while it runs).
COMMIT_AT_START = git_commit()


def machine() -> dict:
    """Where a benchmark ran: CPU model and cores, torch version and threads, GPU if any, load."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def write_result(path: str | Path | None, benchmark: str, *, model: str, device: str, smoke: bool, settings: dict,
                 timings: dict[str, float], ratios: dict[str, float], goals: list[dict], extra: dict | None = None) -> dict:
    """Assemble the convention's object (timings as ``<name>_s``), print it and write it to ``path``.
    ``extra``: further top-level entries that are not timings (their names must not end in ``_s``)."""
    extra = dict(extra or {})
    clashing = [key for key in extra if key.endswith("_s") or key in REQUIRED_KEYS or key in ("machine", "commit", "date")]
    if clashing:
        raise ValueError(f"benchmark {benchmark}: extra entry {clashing[0]!r} clashes with the convention's keys")
    result = {"benchmark": benchmark, "model": model, "device": device, "smoke": bool(smoke), "settings": settings,
              **{f"{name}_s": float(seconds) for name, seconds in timings.items()}, **extra,
              "ratios": {name: float(value) for name, value in ratios.items()}, "goals": goals,
              "machine": machine(), "commit": COMMIT_AT_START,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    problems = check_result(result)
    if problems:
        raise ValueError(f"benchmark {benchmark}: {'; '.join(problems)}")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result


def timings_of(result: dict) -> dict[str, float]:
    return {key[:-2]: value for key, value in result.items() if key.endswith("_s") and isinstance(value, (int, float))}


def check_result(result: dict) -> list[str]:
    """What breaks the convention (empty when nothing): missing keys, non-finite or negative timings."""
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in result]
    timings = timings_of(result)
    if not timings:
        problems.append("no timing (a key ending in _s)")
    problems += [f"{name}_s={value} is not a finite positive number of seconds" for name, value in timings.items()
                 if not (math.isfinite(value) and value > 0)]
    for g in result.get("goals", []):
        if set(g) < {"name", "value", "bound", "met"}:
            problems.append(f"goal {g} lacks one of name, value, bound, met")
    return problems


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def sections(page: str) -> dict[str, str]:
    """A rendered page's benchmark sections by name, each its lines from ``## name`` to the next one.
    A section whose run line names no machine (rendered before sections named theirs) gets the page's
    ``- machine:`` line, which was then the machine of every section."""
    header_machine = re.search(r"^- machine: (.+)$", page, flags=re.MULTILINE)
    found = {}
    for part in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        text = ("## " + part).rstrip("\n")
        if header_machine and not re.search(r"^commit .*machine ", text, flags=re.MULTILINE):
            text = re.sub(r"^(commit [^\n]*?)\.$", rf"\1; machine {header_machine.group(1)} (the page's)", text,
                          count=1, flags=re.MULTILINE)
        found[part.split("\n", 1)[0].strip()] = text
    return found


def render(results: list[dict], *, commit: str | None = None, date: str | None = None,
           kept: dict[str, str] | None = None) -> str:
    """docs/performance.md from benchmark JSONs: the machine, commit and date, then one section per benchmark
    (settings, timings, ratios, goals). Nothing is typed in: every number comes from a JSON, or, for
    ``kept`` (name -> section text from an earlier page, see ``sections``), from the JSON that page was
    rendered from; a kept section carries its own run's commit and date, and a JSON replaces it."""
    results = sorted(results, key=lambda r: r["benchmark"])
    kept = {name: text for name, text in (kept or {}).items() if name not in {r["benchmark"] for r in results}}
    first = next((r["machine"] for r in results if "machine" in r), None) or machine()
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`python -m backlens.bench render`) from `results/bench/*.json`, one JSON per",
        "`benchmarks/*.py`; every ratio divides two timings measured side by side in the same run. Do not edit by",
        "hand: rerun `make bench`. Timings on a shared machine are noisy; the load average is recorded per run.",
        "",
        f"- machine: {first.get('cpu', '?')}, {first.get('cores', '?')} cores; torch {first.get('torch', '?')}, "
        f"{first.get('torch_threads', '?')} threads" + (f"; GPU {first['gpu']}" if first.get("gpu") else ""),
        f"- commit: {commit or next((r['commit'] for r in results if 'commit' in r), None) or git_commit()}",
        f"- date: {date or datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    if kept:
        lines += [f"- kept from the page before (`render --keep`, not rerun at this commit): {', '.join(sorted(kept))}; "
                  "each section names its own run's commit and date"]
    for name in sorted([*kept, *(r["benchmark"] for r in results)]):
        if name in kept:
            lines += ["", kept[name]]
            continue
        result = next(r for r in results if r["benchmark"] == name)
        run_machine = result.get("machine", {})
        all_settings = result.get("settings", {})
        per_key = {k: v for k, v in all_settings.items() if isinstance(v, dict) and v}
        settings = ", ".join(f"{k}={v}" for k, v in all_settings.items() if k not in per_key)
        lines += ["", f"## {result['benchmark']}", "",
                  f"Model `{result['model']}` on {result['device']}{' (smoke run)' if result.get('smoke') else ''}; "
                  f"{settings}."]
        lines += _settings_table(per_key)
        extra = [f"{label} {result[key]}" for key, label in (("commit", "commit"), ("date", "run")) if key in result]
        if run_machine.get("cpu"):  # per section: a page can hold sections kept from runs on other machines
            extra.append(f"machine {run_machine['cpu']}, {run_machine.get('cores', '?')} cores")
        if "load_average" in run_machine:
            extra.append(f"load average {' / '.join(map(str, run_machine['load_average']))} at the end")
        if extra:
            lines += ["", "; ".join(extra) + "."]
        lines += ["", "| timing | seconds |", "| --- | ---: |"]
        lines += [f"| {name} | {_number(value)} |" for name, value in timings_of(result).items()]
        if result.get("ratios"):
            lines += ["", "| ratio | value |", "| --- | ---: |"]
            lines += [f"| {name} | {_number(value)} |" for name, value in result["ratios"].items()]
        if result.get("goals"):
            lines += ["", "| goal | value | met |", "| --- | ---: | --- |"]
            lines += [f"| {g['name']} | {_number(g['value'])} | {'yes' if g['met'] else 'no'} |" for g in result["goals"]]
    return "\n".join(lines) + "\n"


def _settings_table(per_key: dict[str, dict]) -> list[str]:
    """Settings that map names to values (per rule: jobs, CPU seconds) as one table, a column each,
    rows in the first setting's order, instead of one unreadable settings line."""
    if not per_key:
        return []
    rows = list(dict.fromkeys(name for values in per_key.values() for name in values))
    lines = ["", "| | " + " | ".join(per_key) + " |", "| --- |" + " ---: |" * len(per_key)]
    lines += [f"| {row} | " + " | ".join(_number(values[row]) if row in values else "" for values in per_key.values())
              + " |" for row in rows]
    return lines


def read_results(folder: str | Path) -> list[dict]:
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        result = json.loads(path.read_text())
        problems = check_result(result)
        if problems:
            raise ValueError(f"{path}: {'; '.join(problems)}; rerun its benchmark (make bench)")
        results.append(result)
    return results


def _job_group(stem: str) -> str:
    """A Snakemake benchmark file's rule-level name: shard ranges (``_0-60``) dropped."""
    return re.sub(r"(_\d+-\d+)+$", "", stem)


def pipeline_result(benchmarks: str | Path, out: str | Path | None = None, *, wall_s: float, commit: str,
                    cores: int, model: str, goal_s: float | None = None) -> dict:
    """One whole ``snakemake`` run as a benchmark JSON: its wall time and, per rule (shards summed), the
    jobs' wall and CPU seconds from Snakemake's own ``benchmark:`` files (``logs/<run>/benchmarks/*.tsv``).
    Jobs share the cores, so a job's wall time includes waiting for them; the sum over jobs exceeds the
    run's wall time by about the number of jobs running at once. Written to ``out`` when given."""
    groups: dict[str, dict[str, float]] = {}
    for path in sorted(Path(benchmarks).glob("*.tsv")):
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        group = groups.setdefault(_job_group(path.stem), {"jobs": 0, "wall": 0.0, "cpu": 0.0})
        group["jobs"] += 1
        group["wall"] += float(rows[-1]["s"])
        cpu = rows[-1].get("cpu_time", "NA")
        group["cpu"] += float(cpu) if cpu not in ("NA", "", None) else 0.0
    if not groups:
        raise ValueError(f"{benchmarks}: no Snakemake benchmark file (*.tsv); run the pipeline first")
    ordered = sorted(groups.items(), key=lambda item: -item[1]["wall"])
    timings = {"pipeline_wall": wall_s, "jobs_wall_sum": sum(g["wall"] for g in groups.values())}
    timings.update({f"{name}_jobs_wall": g["wall"] for name, g in ordered if g["wall"] > 0})
    settings = {"run_commit": commit, "cores": cores, "jobs": sum(g["jobs"] for g in groups.values()),
                "jobs_per_rule": {name: g["jobs"] for name, g in ordered},
                "cpu_s_per_rule": {name: round(g["cpu"], 1) for name, g in ordered}}
    ratios = {"jobs' wall sum / pipeline wall": timings["jobs_wall_sum"] / wall_s}
    goals = [goal("pipeline wall seconds from a fresh clone", wall_s, goal_s)] if goal_s else []
    result = write_result(None, "pipeline", model=model, device=f"cpu ({os.cpu_count()} cores, --cores {cores})",
                          smoke=False, settings=settings, timings=timings, ratios=ratios, goals=goals)
    # The run's commit and end (its last benchmark file), not this JSON's; the load now says nothing about the run.
    result["commit"] = commit
    last = max(path.stat().st_mtime for path in Path(benchmarks).glob("*.tsv"))
    result["date"] = datetime.datetime.fromtimestamp(last, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["machine"].pop("load_average", None)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backlens.bench", description="render docs/performance.md")
    sub = parser.add_subparsers(dest="command", required=True)
    rendering = sub.add_parser("render", help="results/bench/*.json -> markdown")
    rendering.add_argument("folder")
    rendering.add_argument("out")
    rendering.add_argument("--keep", action="store_true",
                           help="keep out's sections of benchmarks with no JSON in folder (each names its own run)")
    pipeline = sub.add_parser("pipeline", help="one whole snakemake run's timings (its benchmark: files) -> JSON")
    pipeline.add_argument("benchmarks", help="logs/<run>/benchmarks")
    pipeline.add_argument("out")
    pipeline.add_argument("--wall-s", type=float, required=True, help="the run's measured wall time")
    pipeline.add_argument("--commit", required=True, help="the commit the run was made from")
    pipeline.add_argument("--cores", type=int, required=True, help="snakemake --cores of the run")
    pipeline.add_argument("--model", default=DEFAULT_MODEL)
    pipeline.add_argument("--goal-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "pipeline":
        pipeline_result(args.benchmarks, args.out, wall_s=args.wall_s, commit=args.commit, cores=args.cores,
                        model=args.model, goal_s=args.goal_s)
        return 0
    results = read_results(args.folder)
    if not results:
        print(f"no benchmark JSON in {args.folder}: run `make bench` first", file=sys.stderr)
        return 1
    kept = sections(Path(args.out).read_text()) if args.keep and Path(args.out).exists() else {}
    Path(args.out).write_text(render(results, kept=kept))
    kept_names = sorted(set(kept) - {r["benchmark"] for r in results})
    print(f"wrote {args.out} from {len(results)} benchmark(s)" + (f"; kept {', '.join(kept_names)}" if kept_names else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
