"""The benchmarks cannot rot: each runs in its smoke mode (tiny random model, seconds) in a subprocess and
must write a JSON of the shared convention (backlens.bench); the page renderer on a synthetic JSON.
(benchmarks/editing_latency.py has its own smoke test, tests/test_bench_editing.py; a guard checks that
every benchmarks/*.py is covered.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, require_shared

from backlens.bench import check_result, goal, read_results, render

REQUIRED_TIMINGS = {
    "analysis_speed": {"bare_s", "capture_s", "tables_s", "naive_s", "gradient_ranks_s", "vjp_norms_s",
                       "target_ranks_s", "neuron_updates_s", "vjp_similarity_s", "projection_floor_s"},
    "training_from_layer": {f"{name}_{path}{cpu}_s" for name in ("mend_training", "ft", "ft_mlp0")
                            for path in ("split", "whole") for cpu in ("", "_cpu")},
    "corpus_sampling": {"grouped_s", "one_batch_s", "grouped_cpu_s", "one_batch_cpu_s"},
    "sweep_speed": {"sweep_cached_s", "sweep_whole_s", "sweep_cached_cpu_s", "sweep_whole_cpu_s"},
    "tracing_speed": {"traced_s", "reference_reuse_s", "reference_full_s"},
    "value_optimisation": {"value_optimisation_new_s", "value_optimisation_old_s", "value_optimisation_rows_s",
                           "value_optimisation_new_cpu_s", "value_optimisation_old_cpu_s",
                           "value_optimisation_rows_cpu_s"},
}
# Smoke-tested in files of their own (tests/test_bench_editing.py, tests/test_bench_start_time.py).
TESTED_ELSEWHERE = {"editing_latency", "start_time"}


def test_every_benchmark_has_a_smoke_test():
    """make bench runs every benchmarks/*.py: a new one without a smoke test here could rot unseen."""
    stems = {path.stem for path in (PROJECT_ROOT / "benchmarks").glob("*.py")}
    assert stems == set(REQUIRED_TIMINGS) | TESTED_ELSEWHERE


def run_smoke(stem: str, tmp_path) -> dict:
    require_shared("assets", "gpt2_tokenizer")
    require_shared("data")
    out = tmp_path / f"{stem}.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / f"{stem}.py"), "--smoke", "--out", str(out)],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("stem", sorted(REQUIRED_TIMINGS))
def test_benchmark_smoke_run_writes_the_convention(stem, tmp_path):
    result = run_smoke(stem, tmp_path)
    assert result["benchmark"] == stem and result["smoke"] is True and result["device"] == "cpu"
    assert check_result(result) == []
    assert REQUIRED_TIMINGS[stem] <= set(result)
    for key in REQUIRED_TIMINGS[stem]:
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["ratios"] and all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    for g in result["goals"]:
        assert g["met"] == (g["value"] <= g["bound"] if "<=" in g["name"] else g["value"] >= g["bound"])
    if stem == "analysis_speed":  # tables_s is the rule's five tables, nothing else
        tables = ("gradient_ranks", "vjp_norms", "target_ranks", "neuron_updates", "vjp_similarity")
        assert math.isclose(result["tables_s"], sum(result[f"{t}_s"] for t in tables), rel_tol=1e-9)
        assert math.isclose(result["ratios"]["(capture + tables) / bare"],
                            (result["capture_s"] + result["tables_s"]) / result["bare_s"], rel_tol=1e-9)


def synthetic(benchmark: str, **timings) -> dict:
    return {"benchmark": benchmark, "model": "m", "device": "cpu", "smoke": False, "settings": {"prompts": 7},
            **timings, "ratios": {"b / a": timings["b_s"] / timings["a_s"]},
            "goals": [goal("b / a", timings["b_s"] / timings["a_s"], 3.0)],
            "machine": {"cpu": "Test CPU", "cores": 2, "torch": "9.9", "torch_threads": 2, "load_average": [1.5, 1, 1]},
            "commit": "abc1234", "date": "2030-01-01 00:00 UTC"}


def test_render_writes_machine_and_one_table_per_benchmark(tmp_path):
    (tmp_path / "z_bench.json").write_text(json.dumps(synthetic("z_bench", a_s=2.0, b_s=8.0)))
    (tmp_path / "a_bench.json").write_text(json.dumps(synthetic("a_bench", a_s=2.0, b_s=5.0)))
    page = render(read_results(tmp_path), date="2030-01-02")
    assert "Test CPU, 2 cores; torch 9.9, 2 threads" in page and "commit: abc1234" in page and "2030-01-02" in page
    assert page.index("## a_bench") < page.index("## z_bench")
    assert "| b / a | 2.5 |" in page and "| b / a | 4 |" in page
    assert "| b / a <= 3 | 2.5 | yes |" in page and "| b / a <= 3 | 4 | no |" in page
    assert "| a | 2 |" in page and "prompts=7" in page and "load average 1.5 / 1 / 1" in page


def test_a_broken_json_is_named_with_the_fix(tmp_path):
    broken = synthetic("x", a_s=1.0, b_s=2.0)
    broken["a_s"] = float("nan")
    del broken["goals"]
    (tmp_path / "x.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"x.json: missing key 'goals'.*a_s=nan.*make bench"):
        read_results(tmp_path)


def test_write_result_takes_extra_entries_that_are_not_timings(tmp_path):
    from backlens.bench import write_result

    common = dict(model="m", device="cpu", smoke=True, settings={}, timings={"a": 1.0}, ratios={}, goals=[])
    result = write_result(tmp_path / "x.json", "x", **common, extra={"per_case_diff": [1e-6, 2e-6]})
    assert json.loads((tmp_path / "x.json").read_text())["per_case_diff"] == [1e-6, 2e-6] and result["a_s"] == 1.0
    for clash in ("b_s", "goals", "commit"):
        with pytest.raises(ValueError, match=f"extra entry '{clash}' clashes"):
            write_result(None, "x", **common, extra={clash: 1.0})


def test_pipeline_timings_from_snakemake_benchmark_files(tmp_path):
    """python -m backlens.bench pipeline: shards of a rule summed, the run's commit and wall time kept,
    the JSON of the shared convention (docs/performance.md renders it beside the benchmarks)."""
    from backlens.bench import main as bench_main

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for stem, wall, cpu in (("trace_shard_0-10", 100.0, 60.0), ("trace_shard_10-20", 50.0, 40.0),
                            ("edit_evaluate_rome_0-25", 30.0, 20.0), ("sample_prompts", 5.0, "NA")):
        (tmp_path / f"{stem}.tsv").write_text(header + f"{wall}\t0:00:00\t1\t1\t1\t1\t0\t0\t1\t{cpu}\n")
    out = tmp_path / "bench" / "pipeline.json"
    assert bench_main(["pipeline", str(tmp_path), str(out), "--wall-s", "120", "--commit", "abc1234",
                       "--cores", "4", "--goal-s", "100"]) == 0
    result = json.loads(out.read_text())
    assert check_result(result) == []
    assert result["commit"] == "abc1234" and result["pipeline_wall_s"] == 120.0
    assert result["trace_shard_jobs_wall_s"] == 150.0 and result["settings"]["jobs_per_rule"]["trace_shard"] == 2
    assert result["edit_evaluate_rome_jobs_wall_s"] == 30.0 and result["jobs_wall_sum_s"] == 185.0
    assert result["settings"]["cpu_s_per_rule"]["trace_shard"] == 100.0
    assert result["goals"][0]["met"] is False
    page = render(read_results(out.parent))
    assert "## pipeline" in page
    # Per-rule settings are a table (a row per rule, a column per setting), not part of the settings line.
    assert "| | jobs_per_rule | cpu_s_per_rule |" in page and "| trace_shard | 2 | 100.0 |" in page
    assert "jobs_per_rule=" not in page


def test_render_keep_replaces_rerun_sections_and_keeps_the_others_verbatim(tmp_path):
    """`render --keep`: a session that reruns one benchmark keeps the other sections (each with its own run's
    commit and date) and replaces the rerun one; without --keep the page holds only the JSONs given."""
    from backlens.bench import main, sections
    folder, page = tmp_path / "bench", tmp_path / "performance.md"
    folder.mkdir()
    (folder / "a_bench.json").write_text(json.dumps(synthetic("a_bench", a_s=2.0, b_s=5.0)))
    (folder / "z_bench.json").write_text(json.dumps(synthetic("z_bench", a_s=2.0, b_s=8.0)))
    assert main(["render", str(folder), str(page)]) == 0
    before = sections(page.read_text())
    assert set(before) == {"a_bench", "z_bench"} and "| b_s | 8 |" not in before["a_bench"]
    (folder / "a_bench.json").unlink()
    rerun = {**synthetic("z_bench", a_s=2.0, b_s=9.0), "commit": "def5678"}
    (folder / "z_bench.json").write_text(json.dumps(rerun))
    assert main(["render", str(folder), str(page), "--keep"]) == 0
    after = sections(page.read_text())
    assert after["a_bench"] == before["a_bench"] and after["z_bench"] != before["z_bench"]
    assert "commit def5678" in after["z_bench"] and "4.5" in after["z_bench"]
    assert "kept from the page before (`render --keep`, not rerun at this commit): a_bench;" in page.read_text()
    assert page.read_text().index("## a_bench") < page.read_text().index("## z_bench")
    assert main(["render", str(folder), str(page)]) == 0
    assert set(sections(page.read_text())) == {"z_bench"}


def test_pipeline_result_sums_shards_per_rule_and_dates_the_run_by_its_last_job(tmp_path):
    from backlens.bench import pipeline_result
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for stem, wall, cpu, when in (("trace_shard_0-10", 100.0, 40.0, 1_700_000_000), ("trace_shard_10-20", 50.0, 30.0,
                                   1_700_000_600), ("edit_table1", 5.0, 4.0, 1_700_000_300)):
        path = tmp_path / f"{stem}.tsv"
        path.write_text(header + f"{wall}\t0:00:00\t1\t1\t1\t1\t0\t0\t0\t{cpu}\n")
        os.utime(path, (when, when))
    result = pipeline_result(tmp_path, wall_s=120.0, commit="abc1234", cores=4, model="m", goal_s=100.0)
    assert result["settings"]["jobs_per_rule"] == {"trace_shard": 2, "edit_table1": 1}
    assert result["settings"]["cpu_s_per_rule"] == {"trace_shard": 70.0, "edit_table1": 4.0}
    assert result["trace_shard_jobs_wall_s"] == 150.0 and result["pipeline_wall_s"] == 120.0
    assert result["commit"] == "abc1234" and result["date"] == "2023-11-14 22:23 UTC"  # the last job's end
    assert result["goals"][0]["met"] is False


def test_a_kept_section_without_its_machine_gets_the_pages():
    from backlens.bench import sections
    legacy = ("# Performance\n\n- machine: AMD EPYC, 2 cores; torch 2.1, 2 threads\n- commit: abc\n\n## a_bench\n\n"
              "Model `m` on cpu; x=1.\n\ncommit abc; run 2030-01-01 00:00 UTC; load average 1 / 1 / 1 at the end.\n\n"
              "| timing | seconds |\n| --- | ---: |\n| a | 2 |\n\n## b_bench\n\ncommit def; run 2030-01-02 00:00 UTC; "
              "machine Test CPU, 2 cores.\n")
    kept = sections(legacy)
    assert ("commit abc; run 2030-01-01 00:00 UTC; load average 1 / 1 / 1 at the end; machine AMD EPYC, 2 cores; "
            "torch 2.1, 2 threads (the page's)") in kept["a_bench"]
    assert kept["a_bench"].endswith("| a | 2 |")
    assert "commit def; run 2030-01-02 00:00 UTC; machine Test CPU, 2 cores." in kept["b_bench"]
    assert "AMD" not in kept["b_bench"]
