"""Every number README.md's prose takes from a committed table is read back here and compared
with that table (docs/tables/*.csv, docs/tracing.md, docs/sweeps/<run>/*_choice.json): a number
edited by hand, or a table regenerated without the prose, fails the test. The scorecard block is
generated (rule readme_scorecard) and is checked by tests/test_scorecard.py, not here.

Each check is a regular expression over the README (whitespace collapsed) whose named groups must
equal the value computed from the table. A sentence rewritten so that its pattern no longer
matches fails too: update the pattern with the sentence."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN = "smollm2-135m"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _table(name: str) -> pd.DataFrame:
    return pd.read_csv(DOCS / "tables" / f"{name}.csv").set_index("method")


def _sweep_choice(method: str) -> dict:
    path = DOCS / "sweeps" / RUN / "shift_sweep_choice.json"
    return json.loads(path.read_text())["methods"][method]


def _tracing_segments() -> dict[tuple[str, str], tuple[float, int]]:
    """docs/tracing.md's per-segment table: (segment, kind) -> (largest effect, its layer)."""
    text = (DOCS / "tracing.md").read_text()
    section = text.split("## Per segment", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    out = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for kind, cell in zip(header[1:], cells[1:]):
            match = re.fullmatch(r"(-?[\d.]+) \(layer (\d+)\)", cell)
            if match:
                out[cells[0], kind] = (float(match[1]), int(match[2]))
    return out


def _fig5_shares() -> dict[str, str]:
    """docs/analysis.md's Fig 5 sentence: the subject tokens' and the last token's share of the summed
    FF2 VJP norm and of the tokens (the table below it rounds to 3 digits, the sentence from the data)."""
    text = re.sub(r"\s+", " ", (DOCS / "analysis.md").read_text())
    match = re.search(r"subject tokens carry (?P<sn>[\d.]+)% and the last token (?P<ln>[\d.]+)% of the summed FF2 "
                      r"VJP norm over all layers and prompts \(they are (?P<st>[\d.]+)% and (?P<lt>[\d.]+)%", text)
    assert match, "docs/analysis.md: the Fig 5 sentence changed; update _fig5_shares"
    return match.groupdict()


def _sweep_grid(method: str) -> pd.DataFrame:
    return pd.DataFrame(_sweep_choice(method)["grid"])


def _scorecard(pattern: str) -> dict[str, str]:
    """Named groups of ``pattern`` in docs/scorecard.md (generated from the result tables)."""
    match = re.search(pattern, re.sub(r"\s+", " ", (DOCS / "scorecard.md").read_text()))
    assert match, f"docs/scorecard.md: no match for {pattern!r}; update this test with the scorecard"
    return match.groupdict()


def _pct(x: float) -> str:
    return f"{x:.0f}"


def _expected() -> list[tuple[str, str, dict[str, str]]]:
    """(name, pattern, {group: expected text}) for every table-derived number in the prose."""
    t1, t7 = _table("table1"), _table("table7")
    eff, para, ns = t1["efficacy_mean"], t1["paraphrase_mean"], t1["neighborhood_success_mean"]
    nbh, ent = t1["neighborhood_mean"], t1["ngram_entropy_mean"]
    shifts = ["shift", "shift_centered", "shift_whitened"]
    fts = ["ft", "ft_mlp0"]
    centred, paper_shift = _sweep_choice("shift_centered"), _sweep_choice("shift")
    seg = _tracing_segments()
    n_cases = int(t1.loc["none", "n_cases"])
    shares = _fig5_shares()
    raw, centred_grid = _sweep_grid("shift"), _sweep_grid("shift_centered")
    peak = raw[raw["efficacy"] == raw["efficacy"].max()]
    plateau = centred_grid[centred_grid["layer"].isin([22, 24]) & (centred_grid["eta"] >= 0.56)]["efficacy"]
    fig6 = _scorecard(r"most layers \(GPT-2 XL\) \| (?P<n>\d+) of 30 layers \((?P<layers>[\d-]+)\)")
    fig9 = _scorecard(r"median target rank in the top 1% in \d+ of \d+ layers \((?P<layers>[\d-]+)\)")
    paris = _scorecard(r"\"Paris\": \d+/\d+ \(layers (?P<layers>[\d-]+)\)")
    attention = _scorecard(r"median within 1% of V-1 in \d+ of \d+ layers \((?P<layers>[\d-]+)\)")
    return [
        ("Fig 4a caption: Paris layers", r"the least probable token \(outlined\) at the last token \"in\" in layers "
         r"(?P<layers>[\d-]+)", paris),
        ("Fig 6 caption", r"within 1% of V-1 in layers (?P<layers>[\d-]+), (?P<n>\d+) of 30", fig6),
        ("Fig 9 caption", r"the changes promote the target \(median rank in the top 1%\) in layers (?P<layers>[\d-]+)",
         fig9),
        ("attention Fig 6 style", r"the median is within 1% of V-1 in layers (?P<layers>[\d-]+)\.", attention),
        ("deviations: Fig 6", r"holds in (?P<n>\d+) of 30 layers \((?P<layers>[\d-]+)\), not in most", fig6),
        ("gallery tracing", r"the largest MLP effect overall is at the last token in layer (?P<ml>\d+) \((?P<me>[\d.]+)\), "
         r"and attention peaks at the last token in layer (?P<al>\d+) \((?P<ae>[\d.]+)\).*? \(layer (?P<l>\d+): "
         r"(?P<r>[\d.]+) -> [\d.]+\), severing attention barely does \((?P<a>[\d.]+)\)",
         {"ml": str(seg["last token", "mlp"][1]), "me": f"{seg['last token', 'mlp'][0]:.3f}",
          "al": str(seg["last token", "attention"][1]), "ae": f"{seg['last token', 'attention'][0]:.3f}",
          "l": str(seg["last subject token", "residual"][1]), "r": f"{seg['last subject token', 'residual'][0]:.3f}",
          "a": f"{seg['last subject token', 'residual_attention_severed'][0]:.3f}"}),
        ("Fig 5 caption: shares", r"the subject tokens hold (?P<sn>[\d.]+)% of the norm on (?P<st>[\d.]+)% of the "
         r"tokens \(less than their share\) and the last token (?P<ln>[\d.]+)% on (?P<lt>[\d.]+)%",
         shares),
        ("Fig 26 caption: the paper's shift peaks", r"The paper's shift peaks at eta (?P<eta>[\d.]+) \((?P<e>\d+)% "
         r"efficacy at layers (?P<l1>\d+) and (?P<l2>\d+)\)",
         {"eta": f"{peak['eta'].iloc[0]:g}", "e": _pct(100 * peak["efficacy"].iloc[0]),
          "l1": str(peak["layer"].min()), "l2": str(peak["layer"].max())}),
        ("Fig 26 caption: the centred plateau", r"plateaus \((?P<lo>\d+)-(?P<hi>\d+)% from eta 0.56 on at layers 22-24\)",
         {"lo": _pct(100 * plateau.min()), "hi": _pct(100 * plateau.max())}),
        ("Fig 26 frontier caption: NS unedited, ROME, MEMIT", r"stays far from the unedited (?P<none>\d+)% .*? on "
         r"Table 1's cases their NS is (?P<rome>\d+)% and (?P<memit>\d+)%\)",
         {"none": _pct(100 * json.loads((DOCS / "sweeps" / RUN / "shift_sweep_choice.json").read_text())["baseline"]
                       ["neighborhood_success"]),
          "rome": _pct(ns["rome"]), "memit": _pct(ns["memit"])}),
        ("issue 12: ROME and MEMIT after", r"ROME 100 / 36 / NS 58 -> (?P<e>\d+) / (?P<p>\d+) / (?P<n>\d+) "
         r"at [\d.]+x the time per edit .*? MEMIT 96 / 30 / 62 -> (?P<me>\d+) / (?P<mp>\d+) / (?P<mn>\d+);",
         {"e": _pct(eff["rome"]), "p": _pct(para["rome"]), "n": _pct(ns["rome"]),
          "me": _pct(eff["memit"]), "mp": _pct(para["memit"]), "mn": _pct(ns["memit"])}),
        ("FT-L efficacy range", r"100 -> (?P<lo>\d+)-(?P<hi>\d+)% efficacy",
         {"lo": _pct(eff[fts].min()), "hi": _pct(eff[fts].max())}),
        ("NS by method", r"NS \(P\(true\) > P\(new\) on the neighbour prompt; (?P<none>\d+)% unedited\) is where the "
         r"methods differ: MEMIT keeps (?P<memit>\d+)%, ROME (?P<rome>\d+)%, FT-L (?P<ftlo>\d+)-(?P<fthi>\d+)%, "
         r"the shift (?P<slo>\d+)-(?P<shi>\d+)% and MEND (?P<mend>\d+)%",
         {"none": _pct(ns["none"]), "memit": _pct(ns["memit"]), "rome": _pct(ns["rome"]),
          "ftlo": _pct(ns[fts].min()), "fthi": _pct(ns[fts].max()), "slo": _pct(ns[shifts].min()),
          "shi": _pct(ns[shifts].max()), "mend": _pct(ns["mend"])}),
        ("MEND paraphrase and entropy", r"MEND's (?P<p>\d+)% paraphrase accuracy .*? lose (?P<loss>\d+)% of their n-gram "
         r"entropy: (?P<mend>\d+) against (?P<none>\d+)\)",
         {"p": _pct(para["mend"]), "loss": _pct(100 * (1 - ent["mend"] / ent["none"])),
          "mend": _pct(ent["mend"]), "none": _pct(ent["none"])}),
        ("paper's shift gap to ROME", r"The paper's shift is (?P<gap>\d+) points below ROME's efficacy",
         {"gap": _pct(eff["rome"] - eff["shift"])}),
        ("centred shift setting and numbers", r"centring the value changes little at its chosen setting \(layer "
         r"(?P<layer>\d+), eta (?P<eta>[\d.]+),.*?: (?P<ce>\d+) / (?P<cp>\d+) / NS (?P<cn>\d+) against "
         r"(?P<se>\d+) / (?P<sp>\d+) / (?P<sn>\d+)\)",
         {"layer": str(centred["layer"]), "eta": f"{centred['eta']:g}", "ce": _pct(eff["shift_centered"]),
          "cp": _pct(para["shift_centered"]), "cn": _pct(ns["shift_centered"]), "se": _pct(eff["shift"]),
          "sp": _pct(para["shift"]), "sn": _pct(ns["shift"])}),
        ("whitened shift", r"the whitened key reaches (?P<e>\d+)% efficacy with NS (?P<n>\d+)%, (?P<de>\d+) points "
         r"below ROME's efficacy and (?P<dn>\d+) below its NS, and lowers the generation entropy \((?P<ent>\d+)\)",
         {"e": _pct(eff["shift_whitened"]), "n": _pct(ns["shift_whitened"]),
          "de": _pct(eff["rome"] - eff["shift_whitened"]), "dn": _pct(ns["rome"] - ns["shift_whitened"]),
          "ent": _pct(ent["shift_whitened"])}),
        ("deviations: editing", r"the paper's shift reaches (?P<se>\d+)% efficacy against ROME's (?P<re>\d+)% "
         r"\(paper: within 1 point\), with NS (?P<sn>\d+)% against ROME's (?P<rn>\d+)%",
         {"se": _pct(eff["shift"]), "re": _pct(eff["rome"]), "sn": _pct(ns["shift"]), "rn": _pct(ns["rome"])}),
        ("deviations: corpus, today's ROME", r"Table 1's ROME \(model samples, this code\): (?P<e>\d+) / (?P<p>\d+) / "
         r"(?P<nb>\d+) %, NS (?P<n>\d+) %, entropy (?P<ent>[\d.]+)\.",
         {"e": _pct(eff["rome"]), "p": _pct(para["rome"]), "nb": _pct(nbh["rome"]), "n": _pct(ns["rome"]),
          "ent": f"{ent['rome']:.1f}"}),
        ("deviations: Table 7 ROME", r"the model's own samples are easy for it \((?P<ppl>[\d.]+) after ROME edits\)",
         {"ppl": f"{t7.loc['rome', 'perplexity_mean']:.2f}"}),
        ("deviations: neighbourhood spread", r"the original model's neighbourhood accuracy is (?P<m>[\d.]+) ± "
         r"(?P<s>[\d.]+) \(std over (?P<n>\d+) cases\), a standard error of (?P<se>[\d.]+) points",
         {"m": f"{nbh['none']:.1f}", "s": f"{t1.loc['none', 'neighborhood_std']:.1f}", "n": str(n_cases),
          "se": f"{t1.loc['none', 'neighborhood_std'] / math.sqrt(n_cases):.1f}"}),
        ("deviations: original entropy", r"the original model scores (?P<ent>[\d.]+) \(paper",
         {"ent": f"{ent['none']:.1f}"}),
        ("sweep example: the chosen default", r"the sweep now chooses layer (?P<layer>\d+), eta (?P<eta>[\d.]+), "
         r"and Table 1 has (?P<e>\d+) / (?P<p>\d+) / (?P<nb>\d+) %",
         {"layer": str(paper_shift["layer"]), "eta": f"{paper_shift['eta']:g}", "e": _pct(eff["shift"]),
          "p": _pct(para["shift"]), "nb": _pct(nbh["shift"])}),
        ("tracing: MLP and attention", r"the MLP's largest effect is at the last token in layer (?P<ml>\d+) "
         r"\((?P<me>[\d.]+), .*?attention peaks at the last token in layer (?P<al>\d+) \((?P<ae>[\d.]+)\)",
         {"ml": str(seg["last token", "mlp"][1]), "me": f"{seg['last token', 'mlp'][0]:.3f}",
          "al": str(seg["last token", "attention"][1]), "ae": f"{seg['last token', 'attention'][0]:.3f}"}),
        ("tracing: severed", r"Severing the later MLPs lowers the early residual effect at the last subject token "
         r"\(layer (?P<l>\d+): (?P<r>[\d.]+) -> [\d.]+\); severing attention barely does \((?P<a>[\d.]+)\)",
         {"l": str(seg["last subject token", "residual"][1]), "r": f"{seg['last subject token', 'residual'][0]:.3f}",
          "a": f"{seg['last subject token', 'residual_attention_severed'][0]:.3f}"}),
        ("tracing: MLP at the subject", r"the early layers at the subject \((?P<e>[\d.]+), layer (?P<l>\d+)\)",
         {"e": f"{seg['last subject token', 'mlp'][0]:.3f}", "l": str(seg["last subject token", "mlp"][1])}),
    ]


CHECKS = _expected()


@pytest.mark.parametrize("name,pattern,expected", CHECKS, ids=[c[0] for c in CHECKS])
def test_prose_number_matches_its_table(name, pattern, expected):
    match = re.search(pattern, _readme())
    assert match, f"README.md: the sentence of check {name!r} is gone or reworded; update its pattern in this test"
    got = {key: match[key] for key in expected}
    assert got == expected, f"README.md, {name}: the prose says {got}, the tables say {expected}"


# Columns of the README's Table 1 copy -> how to read them from docs/tables/table1.csv / table7.csv.
TABLE1_COLUMNS = {
    "efficacy": lambda t1, t7, m: _pct(t1.loc[m, "efficacy_mean"]),
    "paraphrase": lambda t1, t7, m: _pct(t1.loc[m, "paraphrase_mean"]),
    "NS": lambda t1, t7, m: _pct(t1.loc[m, "neighborhood_success_mean"]),
    "neighbourhood": lambda t1, t7, m: _pct(t1.loc[m, "neighborhood_mean"]),
    "n-gram entropy": lambda t1, t7, m: f"{t1.loc[m, 'ngram_entropy_mean']:.1f}",
    "perplexity (Table 7)": lambda t1, t7, m: f"{t7.loc[m, 'perplexity_mean']:.2f}",
}


# Rows the README labels more explicitly than table1.csv.
README_LABELS = {"shift": "Forward pass shift (the paper's)"}


def test_readme_table1_copy_matches_docs_tables():
    """The README's Table 1 (with Table 7's perplexity) cell by cell. The seconds per edit come
    from results/<run>/tables/edit_timings.md, which is not committed, and are not checked."""
    t1, t7 = _table("table1"), _table("table7")
    by_label = {label: method for method, label in t1["label"].items()}
    by_label = {README_LABELS.get(method, label): method for label, method in by_label.items()}
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | efficacy | paraphrase | NS |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert {row[0] for row in rows} == set(by_label), "README Table 1: its rows are not docs/tables/table1.csv's"
    for row in rows:
        for column, cell in zip(header[1:], row[1:]):
            if column in TABLE1_COLUMNS:
                want = TABLE1_COLUMNS[column](t1, t7, by_label[row[0]])
                assert cell == want, f"README Table 1, {row[0]} / {column}: {cell}, table says {want}"


def test_run_time_quoted_consistently():
    """The limits table quotes the same measured run time as the timing paragraph."""
    text = _readme()
    timed = re.search(r"`snakemake --cores 4` (\d+ min \d+ s) for the", text)
    limits = re.search(r"CPU budget \(the default run took (\d+ min \d+ s) when last timed", text)
    assert timed and limits, "README.md: the run-time sentences were reworded; update this test"
    assert limits[1] == timed[1]


def _half_up(value: float) -> int:
    """Rounded as prose rounds (1430.5 -> 1431; Python's round() gives the even 1430)."""
    return math.floor(value + 0.5)


def _pipeline_section() -> str:
    text = (DOCS / "performance.md").read_text()
    return text.split("## pipeline", 1)[1].split("\n## ", 1)[0]


# README phrase before "CPU / wall s" -> the pipeline section's rule.
PIPELINE_RULES = {
    "the tracing shards": "trace_shard", "MEND's training": "edit_mend_train",
    "ROME's two evaluation shards": "edit_evaluate_rome", "shift sweep": "edit_shift_sweep",
    "MEMIT's shards": "edit_evaluate_memit", "FT-L (MLP 0)'s": "edit_evaluate_ft_mlp0", "FT-L's": "edit_evaluate_ft",
    "the FF2 statistics": "edit_covariance",
}


def test_readme_run_time_is_the_performance_pipeline_section():
    """The "One command" paragraph's commit, total seconds and per-rule CPU / wall seconds are
    docs/performance.md's pipeline section (python -m backlens.bench pipeline)."""
    readme, section = _readme(), _pipeline_section()
    commit = re.search(r"run_commit=(\w+)", section).group(1)
    wall = float(re.search(r"\| pipeline_wall \| ([\d.]+) \|", section).group(1))
    assert re.search(rf"Last measured end to end at commit {commit} ", readme)
    total = re.search(r"(\d+) min (\d+) s in all \(([\d,]+) s[;)]", readme)
    assert total and int(total.group(3).replace(",", "")) == _half_up(wall) == 60 * int(total.group(1)) + int(total.group(2))
    for phrase, rule in PIPELINE_RULES.items():
        cpu = float(re.search(rf"\| {rule} \| \d+ \| ([\d.]+) \|", section).group(1))
        job_wall = float(re.search(rf"\| {rule}_jobs_wall \| ([\d.]+) \|", section).group(1))
        found = re.search(rf"{re.escape(phrase)} ([\d,]+) / ([\d,]+) s", readme)
        assert found, f"README has no '{phrase} CPU / wall s'"
        assert (int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))) == (_half_up(cpu), _half_up(job_wall)), phrase


def _start_time_section() -> dict[str, float]:
    text = (DOCS / "performance.md").read_text()
    section = text.split("## start_time", 1)[1].split("\n## ", 1)[0]
    return {name: float(value) for name, value in re.findall(r"\| (\w+) \| ([\d.]+) \|", section)}


def test_readme_start_times_are_the_performance_start_time_section():
    """The cache folder paragraph's start times are docs/performance.md's start_time section
    (benchmarks/start_time.py), at the precision the prose gives."""
    timings, readme = _start_time_section(), _readme()
    found = re.search(r"`backlens explain \"Obama grew up in\" \" Paris\"` ([\d.]+) s with the cache off \(([\d.]+) s "
                      r"of it loading\), ([\d.]+) s the first time, ([\d.]+) s from the second start on without the "
                      r"resident server \(([\d.]+) s loading; .*?and ([\d.]+) s with it \(([\d.]+) s for the start "
                      r"right after the first", readme)
    assert found, "README.md: the start-time sentence was reworded; update this test"
    names = ("off", "load_off", "cold", "warm", "load_warm", "served", "served_next")
    for name, quoted in zip(names, found.groups()):
        decimals = len(quoted.split(".")[1]) if "." in quoted else 0
        assert float(quoted) == round(timings[name], decimals), f"README's {name} {quoted} s against {timings[name]}"


# The editing README's "Measured on SmolLM2-135M" paragraph: method -> its name there, in its order.
EDITING_README_ROWS = {
    "none": "Original", "ft_mlp0": "FT-L (MLP 0)", "ft": "FT-L (MLP 22)", "mend": "MEND-style", "rome": "ROME",
    "memit": "MEMIT", "shift": "forward pass shift", "shift_centered": "centred e_t",
    "shift_whitened": "centred e_t with the whitened key",
}
PERPLEXITY_NAMES = {**EDITING_README_ROWS, "shift": "the paper's shift"}


def test_editing_readme_measured_paragraph_is_the_tables():
    """src/backlens/editing/README.md's measured paragraph, rebuilt from docs/tables/table1.csv and table7.csv."""
    t1, t7 = _table("table1"), _table("table7")
    rows = "; ".join(f"{name} {_pct(t1.loc[m, 'efficacy_mean'])} / {_pct(t1.loc[m, 'paraphrase_mean'])} / "
                     f"{_pct(t1.loc[m, 'neighborhood_success_mean'])}" for m, name in EDITING_README_ROWS.items())
    neighbourhood, entropy = t1["neighborhood_mean"], t1["ngram_entropy_mean"].sort_values()
    perplexity = t7["perplexity_mean"].sort_values(ascending=False)
    top = [f"{PERPLEXITY_NAMES[m]} ({perplexity[m]:.2f}" for m in perplexity.index[:3]]
    expected = (
        f"Efficacy / paraphrase / NS (%), cases 0-{int(t1.loc['none', 'n_cases']) - 1}: {rows}. Neighbourhood accuracy "
        f"is {_pct(neighbourhood.min())}-{_pct(neighbourhood.max())}% for every row ({_pct(neighbourhood['none'])}% "
        f"unedited), so it cannot rank them; NS does. Generation entropy drops most for "
        f"{EDITING_README_ROWS[entropy.index[0]]} ({_pct(entropy.iloc[0])} against {_pct(t1.loc['none', 'ngram_entropy_mean'])} "
        f"unedited) and for the whitened shift ({_pct(t1.loc['shift_whitened', 'ngram_entropy_mean'])}); Table 7's "
        f"perplexity rises most for {top[0]} against {t7.loc['none', 'perplexity_mean']:.2f}), then {top[1]}) and "
        f"{top[2]}).")
    assert entropy.index[1] == "shift_whitened", "the second-lowest entropy is no longer the whitened shift: reword"
    text = re.sub(r"\s+", " ", (ROOT / "src" / "backlens" / "editing" / "README.md").read_text())
    assert expected in text, f"src/backlens/editing/README.md's measured paragraph should read: {expected}"
