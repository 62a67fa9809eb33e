"""Causal tracing in stages: screen, shards of any size, merge (tiny random GPT-2, three known facts)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from backlens.data.sources import sha256_of
from backlens.stages import causal_tracing, causal_tracing_merge
from conftest import compose_config, require_shared

N_FACTS = 5  # more than the three facts in the file: shards past the chosen facts are empty
LAYOUTS = {"pieces": [(0, 1), (1, 3), (3, 5)], "whole": [(0, 5)]}
TIMING = {"screen_seconds", "trace_seconds", "facts_per_second", "total_seconds"}
TABLES = ("tracing_facts", "tracing_tokens", "tracing_effects", "tracing_segment_effects", "tracing_average_effects")


def tracing_config(root: Path, directory: str, *overrides: str):
    """Tiny GPT-2 tracing the facts in root/facts.json regardless of its answers, cheaply."""
    return compose_config(
        "model=tiny-gpt2",
        "tracing.only_correct=false",
        f"tracing.n_facts={N_FACTS}",
        "tracing.noise_samples=1",
        "tracing.window=2",
        f"known_facts.path='{root / 'facts.json'}'",
        f"paths.tracing='{root / directory}'",
        f"paths.tracing_screening_meta='{root / 'screen' / 'screening.json'}'",
        f"paths.tracing_screening_timings='{root / 'screen' / 'screening_timings.json'}'",
        *overrides,
    )


def shard_path(root: Path, layout: str, start: int, stop: int) -> Path:
    return root / layout / "shards" / f"{start}-{stop}.parquet"


def merge_config(root: Path, layout: str, shards: list[tuple[int, int]], *overrides: str):
    paths = [str(shard_path(root, layout, a, b)) for a, b in shards]
    return tracing_config(root, layout, f"paths.tracing_shards={json.dumps(paths)}", *overrides)


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> Path:
    """Screened once, traced as shards 0-1, 1-3, 3-5 and as one shard 0-5, each layout merged."""
    require_shared("assets", "gpt2_tokenizer")
    facts = json.loads(require_shared("data", "known_1000.json").read_text())[:3]
    root = tmp_path_factory.mktemp("tracing")
    (root / "facts.json").write_text(json.dumps(facts))
    causal_tracing.screen(tracing_config(root, "screen"))
    for layout, shards in LAYOUTS.items():
        for start, stop in shards:
            shard = f"paths.tracing_shard='{shard_path(root, layout, start, stop)}'"
            causal_tracing.trace_shard(tracing_config(root, layout, f"tracing.shard=[{start},{stop}]", shard))
        causal_tracing_merge.merge(merge_config(root, layout, shards))
    return root


def test_screening_chooses_the_first_facts(traced):
    screening = json.loads((traced / "screen" / "screening.json").read_text())
    assert screening["chosen_known_ids"] == [0, 1, 2]
    assert screening["n_screened"] == screening["n_known_facts"] == 3
    assert len(pd.read_parquet(traced / "screen" / "screening.parquet")) == 3


def test_merged_tables_do_not_depend_on_the_shard_size(traced):
    pieces, whole = (tracing_config(traced, layout).paths for layout in LAYOUTS)
    for key in TABLES:
        left, right = (pd.read_parquet(p[key]) for p in (pieces, whole))
        assert not left.empty, key
        assert_frame_equal(left, right)
    # Byte for byte, too: no timings in the tables or the summary (they are in timings.json).
    for key in (*TABLES, "tracing_summary"):
        assert sha256_of(Path(pieces[key])) == sha256_of(Path(whole[key])), key
    summaries = [json.loads(Path(p.tracing_summary).read_text()) for p in (pieces, whole)]
    assert summaries[0]["n_traced"] == 3 and summaries[0]["n_screened"] == 3
    assert summaries[0] == summaries[1] and not TIMING & set(summaries[0])
    metas = [json.loads(causal_tracing.shard_files(shard_path(traced, "pieces", a, b))["meta"].read_text())
             for a, b in LAYOUTS["pieces"]]
    timings = json.loads(Path(pieces.tracing_timings).read_text())
    assert timings["trace_seconds"] == pytest.approx(sum(m["trace_seconds"] for m in metas))
    assert timings["total_seconds"] == pytest.approx(timings["screen_seconds"] + timings["trace_seconds"])
    assert sorted(timings["fact_seconds"]) == ["0", "1", "2"]


def test_a_shard_past_the_chosen_facts_is_empty_with_the_same_columns(traced):
    empty, full = (causal_tracing.shard_files(shard_path(traced, "pieces", a, b)) for a, b in [(3, 5), (1, 3)])
    assert json.loads(empty["meta"].read_text())["known_ids"] == []
    for kind in ("facts", "tokens", "effects"):
        table = pd.read_parquet(empty[kind])
        assert table.empty
        assert list(table.columns) == list(pd.read_parquet(full[kind]).columns), kind


@pytest.mark.parametrize(
    "shards",
    [[(0, 1), (3, 5)], [(0, 1), (0, 1), (1, 3)], [(1, 3), (0, 1), (3, 5)]],
    ids=["gap", "twice", "out-of-order"],
)
def test_merge_refuses_shards_that_do_not_cover_the_chosen_facts(traced, shards):
    with pytest.raises(ValueError, match="do not cover the 3 chosen facts once, in order"):
        causal_tracing_merge.merge(merge_config(traced, "pieces", shards))


def test_merge_refuses_shards_traced_with_other_settings(traced):
    with pytest.raises(ValueError, match="other settings"):
        causal_tracing_merge.merge(merge_config(traced, "pieces", LAYOUTS["pieces"], "tracing.window=3"))


@pytest.mark.parametrize("shard", ["[2,1]", "[0,6]", "[-1,2]"])
def test_a_shard_outside_the_facts_to_trace_is_refused(shard):
    cfg = compose_config(f"tracing.n_facts={N_FACTS}", f"tracing.shard={shard}")
    with pytest.raises(ValueError, match="must lie within"):
        causal_tracing.shard_range(cfg)


def test_screen_stops_when_the_model_answers_no_fact_correctly(tmp_path):
    require_shared("assets", "gpt2_tokenizer")
    facts = json.loads(require_shared("data", "known_1000.json").read_text())[:3]
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    cfg = tracing_config(tmp_path, "screen", "tracing.only_correct=true")
    with pytest.raises(ValueError, match="answers none of the known facts correctly"):
        causal_tracing.screen(cfg)
    assert not Path(cfg.paths.tracing_screening_meta).exists()
