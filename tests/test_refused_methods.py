"""Per-model method lists (issue 25): ``editing.refused_methods.<model>`` names the methods whose editor
refuses that model; its run leaves them out of Table 1, Table 7, the edit timings and the sequential
series, and its tables say which and why. The list is config, the refusal code: these tests keep them
equal on the tiny models, so neither can drift from the other."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from backlens.editing.memit import MLP_OUTPUT_REFUSAL
from backlens.editing.method_configs import REFUSAL_REASONS
from backlens.editing.methods import EDITORS, editor_class, load_method_config, method_refuses, refusal_reason
from backlens.editing.run_config import (
    check_refused_methods,
    methods_run,
    not_run_line,
    other_method_hparams,
    refused_methods,
)
from backlens.errors import ConfigError
from backlens.project import config_dir
from backlens.stages import editing_evaluate, editing_tables, editing_timings
from conftest import compose_config, require_shared


def configured_methods(cfg) -> list[str]:
    """Every method the editing config runs somewhere: Table 1's rows and the sequential series."""
    seq = cfg.editing.sequential
    return list(dict.fromkeys(str(m) for m in (*cfg.editing.table1_methods, *seq.methods, *seq.batch_methods)))


def refusing_methods(cfg, loaded) -> set[str]:
    """The configured methods whose editor refuses ``loaded`` (asked of the editors on the model)."""
    refusing = set()
    for name in configured_methods(cfg):
        hparams = other_method_hparams(cfg, name, loaded.adapter.n_layers)
        if method_refuses(loaded, str(load_method_config(name)["kind"]), hparams):
            refusing.add(name)
    return refusing


def test_gemma3_list_is_exactly_the_configured_methods_whose_editor_refuses_it(tiny_gemma3):
    cfg = compose_config("model=tiny-gemma3")
    listed = refused_methods(cfg)
    assert set(listed) == refusing_methods(cfg, tiny_gemma3)
    assert set(listed) == {"memit", "alphaedit"}  # MEMIT and AlphaEdit (MEMIT's solve) check the MLP output
    # tiny-gemma3 stands for Gemma 3 270M (same block: post-feed-forward norm), whose run gets the same list.
    assert refused_methods(compose_config("model=gemma3-270m")) == listed


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_other_families_refuse_nothing_and_list_nothing(fixture, request):
    loaded = request.getfixturevalue(fixture)
    cfg = compose_config(f"model={loaded.name}")
    assert refused_methods(cfg) == [] and refusing_methods(cfg, loaded) == set()
    assert methods_run(cfg, cfg.editing.table1_methods) == list(cfg.editing.table1_methods)
    assert refused_methods(compose_config("model=smollm2-135m")) == []


def test_runs_keep_the_configured_order_without_the_refused_methods():
    cfg = compose_config("model=gemma3-270m")
    assert methods_run(cfg, cfg.editing.table1_methods) == [
        m for m in cfg.editing.table1_methods if m != "memit"]
    assert "alphaedit" not in methods_run(cfg, cfg.editing.sequential.methods)
    assert methods_run(cfg, cfg.editing.sequential.batch_methods) == []


def test_the_reason_comes_from_the_editor_and_a_name_that_refuses_nothing_is_an_error():
    assert refusal_reason("memit") == refusal_reason("alphaedit") == MLP_OUTPUT_REFUSAL
    assert refusal_reason("rome") is None and refusal_reason("shift") is None
    with pytest.raises(ConfigError, match=r"editing.refused_methods.tiny-gemma3: the rome editor refuses no model"):
        check_refused_methods({"tiny-gemma3": ["memit", "rome"]})
    with pytest.raises(ConfigError, match=r"no method config backlens/conf/method/memt.yaml"):
        check_refused_methods({"tiny-gemma3": ["memt"]})


def test_the_torch_free_reasons_are_the_editors_own():
    # The table and figure stages read REFUSAL_REASONS without loading the editors; each editor class
    # (AlphaEdit's too) must say the same, or a table would name a reason the editor does not give.
    for method in sorted(p.stem for p in config_dir("method").glob("*.yaml")):
        cfg = load_method_config(method)
        base = OmegaConf.to_container(cfg.get("base") or OmegaConf.create({}), resolve=False)
        assert editor_class(str(cfg["kind"]), base).refusal_reason == refusal_reason(method), method
    assert set(REFUSAL_REASONS) <= set(EDITORS)


def test_gemma3_tables_leave_memit_out_and_say_why(tmp_path):
    require_shared("data", "counterfact")
    base = [f"paths.results={tmp_path}", "model=tiny-gemma3", "editing.n_cases=2", "editing.n_generation_cases=0",
            "editing.n_perplexity_cases=0", "editing.table1_methods=[none,memit,shift]"]
    for method in ("none", "shift"):
        editing_evaluate.run(compose_config(*base, f"method={method}"))
    cfg = compose_config(*base)
    not_run = f"Not run on tiny-gemma3 (editing.refused_methods): memit: {MLP_OUTPUT_REFUSAL}."
    editing_tables.run_table1(cfg)
    assert list(pd.read_csv(cfg.paths.table1)["method"]) == ["none", "shift"]
    markdown = (tmp_path / "tables" / "table1.md").read_text()
    assert markdown.count(not_run) == 1 and "| MEMIT" not in markdown
    editing_timings.run(cfg)
    assert list(pd.read_csv(cfg.paths.edit_timings)["method"]) == ["none", "shift"]
    assert not_run in (tmp_path / "tables" / "edit_timings.md").read_text()
    # Table 7 from the same cases with perplexities filled in (the stage reads only the cases tables).
    for method in ("none", "shift"):
        path = tmp_path / "editing" / method / "cases.parquet"
        pd.read_parquet(path).assign(perplexity=[10.0, 12.0]).to_parquet(path)
    editing_tables.run_table7(cfg)
    assert list(pd.read_csv(cfg.paths.table7)["method"]) == ["none", "shift"]
    assert not_run in (tmp_path / "tables" / "table7.md").read_text()
    # A model that refuses nothing: no such line.
    assert not_run_line(compose_config(*base[:1], "model=tiny-llama")) == ""
    assert json.loads((tmp_path / "editing" / "shift" / "summary.json").read_text())["model"] == "tiny-gemma3"
