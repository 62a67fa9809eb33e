"""The documented rule that picks a method's hyper-parameters from a sweep."""

import pandas as pd
import pytest

from backlens.stages.editing_method_sweep import grid_settings
from backlens.editing.selection import accuracy_score, choose

SWEEP = pd.DataFrame({
    "layer": [4, 22, 22, 26],
    "eta": [0.1, 0.3, 1.0, 0.1],
    "efficacy": [0.2, 0.9, 1.0, 0.8],
    "paraphrase": [0.1, 0.2, 0.6, 0.2],
    "neighborhood_success": [0.66, 0.60, 0.05, 0.66],
    "efficacy_success": [1.0] * 4,
    "paraphrase_success": [1.0] * 4,
})


def test_the_score_is_the_harmonic_mean_and_zero_when_one_part_is():
    frame = pd.DataFrame({"efficacy": [1.0, 0.5, 0.0], "paraphrase": [1.0, 0.5, 0.9], "neighborhood_success": [1.0, 0.25, 0.9]})
    assert accuracy_score(frame).tolist() == pytest.approx([1.0, 3 / (2 + 2 + 4), 0.0])


def test_the_rule_maximises_the_score_and_flags_ns():
    # layer 22 / eta 1.0 has the best efficacy + paraphrase but leaves 5% NS: its score (0.13) loses to
    # layer 26 / eta 0.1 (0.8 / 0.2 / 0.66: 0.38) and layer 22 / eta 0.3 (0.9 / 0.2 / 0.60: 0.38 + tie-break).
    chosen = choose(SWEEP, baseline_ns=0.66, max_drop=0.10, settings=["eta", "layer"])
    expected = 3 / (1 / 0.8 + 1 / 0.2 + 1 / 0.66)
    assert (chosen["eta"], chosen["layer"]) == (0.1, 26) and chosen["score"] == pytest.approx(expected)
    assert chosen["ns_within_max_drop"] is True and isinstance(chosen["layer"], int)
    strict = choose(SWEEP.assign(neighborhood_success=[0.66, 0.3, 0.05, 0.3]), baseline_ns=0.66, max_drop=0.10,
                    settings=["eta", "layer"])
    # The best trade-off is still chosen; the flag says its NS is not within 10 points of the unedited 66%.
    assert strict["ns_within_max_drop"] is False and strict["efficacy"] > 0


def test_ties_go_to_the_smaller_setting():
    tied = SWEEP.assign(efficacy=[0.9, 0.9, 0.0, 0.9], paraphrase=[0.2, 0.2, 0.0, 0.2], neighborhood_success=[0.6] * 4)
    assert choose(tied, 0.66, 0.10, ["eta", "layer"])["layer"] == 4
    assert (choose(tied, 0.66, 0.10, ["layer", "eta"])["layer"], choose(tied, 0.66, 0.10, ["layer", "eta"])["eta"]) == (4, 0.1)


def test_ties_go_to_the_probability_score_then_to_the_gentler_setting():
    # MEMIT's sweep on SmolLM2: 20, 200 and 2000 tie on the accuracy score (93 / 13 / 87); 2000's
    # paraphrase success is lower (80% against 93%), and 20 and 200 tie in everything: the gentler one
    # is the larger weight (MEMIT's update shrinks as it grows), not the smaller value.
    memit = pd.DataFrame({
        "mom2_update_weight": [20, 200, 2000, 20000],
        "efficacy": [0.93, 0.93, 0.93, 0.0], "paraphrase": [0.13, 0.13, 0.13, 0.0],
        "neighborhood_success": [0.87] * 4, "efficacy_success": [1.0, 1.0, 1.0, 0.47],
        "paraphrase_success": [0.93, 0.93, 0.8, 0.53],
    })
    gentle = choose(memit, 0.87, 0.10, ["mom2_update_weight"], larger_is_gentler=["mom2_update_weight"])
    assert gentle["mom2_update_weight"] == 200 and gentle["success_score"] == pytest.approx(3 / (1 + 1 / 0.93 + 1 / 0.87))
    assert choose(memit, 0.87, 0.10, ["mom2_update_weight"])["mom2_update_weight"] == 20
    # Without the probability tie-break, the largest tied weight (2000) would have won.
    flat = memit.assign(paraphrase_success=[0.93] * 4)
    assert choose(flat, 0.87, 0.10, ["mom2_update_weight"], larger_is_gentler=["mom2_update_weight"])["mom2_update_weight"] == 2000


def test_grid_settings_are_every_combination_in_config_order():
    assert grid_settings({"norm_constraint": [5e-4, 5e-2], "lr": [1e-3]}) == [
        {"norm_constraint": 5e-4, "lr": 1e-3}, {"norm_constraint": 5e-2, "lr": 1e-3}]


def test_the_sweep_stage_runs_a_grid_and_writes_its_choice(tmp_path):
    import json

    from backlens.stages import editing_method_sweep
    from conftest import compose_config, require_shared

    require_shared("data", "counterfact")
    cfg = compose_config(
        "model=tiny-gpt2", "method=ft", f"paths.results={tmp_path}", "editing.n_cases=2",
        "editing.method_sweeps.ft.n_cases=2", "editing.method_sweeps.ft.grid={norm_constraint:[0.0,1.0]}",
        "editing.method_sweeps.ft.max_ns_drop=1.0", "++methods.ft.num_steps=3",
    )
    editing_method_sweep.run(cfg)
    cases = pd.read_parquet(cfg.paths.editing_method_sweep)
    # The override replaces the bound's values; the grid's two learning rates stay: 2 x 2 settings x 2 cases.
    assert len(cases) == 8 and sorted(cases["norm_constraint"].unique()) == [0.0, 1.0]
    assert sorted(cases["lr"].unique()) == [5e-4, 5e-3]
    assert set(cases["case_id"]) == {5000, 5001}  # outside the evaluation range 0-1
    choice = json.loads((tmp_path / "editing" / "ft_sweep_choice.json").read_text())
    assert choice["norm_constraint"] in (0.0, 1.0) and choice["fixed_hparams"]["num_steps"] == 3
    assert "ns_within_max_drop" in choice and 0.0 <= choice["baseline"]["neighborhood_success"] <= 1.0
    # A zero bound cannot move the weights: efficacy stays at the unedited model's.
    frozen = cases[cases["norm_constraint"] == 0.0]
    assert (frozen["efficacy"] == frozen["efficacy_before"]).all()


@pytest.fixture
def tiny_gpt2_stats(tiny_gpt2, tmp_path):
    """A statistics file in edit_covariance's format: a random positive definite C per layer."""
    import torch

    mom2 = {}
    for layer in range(tiny_gpt2.adapter.n_layers):
        d = tiny_gpt2.adapter.ff2_site(layer).in_features
        keys = torch.randn(4 * d, d, generator=torch.Generator().manual_seed(layer), dtype=torch.float64)
        mom2[layer] = keys.T @ keys / len(keys)
    path = tmp_path / "ff2_mom2.pt"
    torch.save({"mom2": mom2, "corpus": "random"}, path)
    return path


def test_the_shift_sweep_runs_every_variant_and_draws_fig26(tmp_path, tiny_gpt2_stats):
    import json

    from backlens.figures.editing import shift_sweep_figure
    from backlens.stages import editing_sweep
    from conftest import compose_config, require_shared

    require_shared("data", "counterfact")
    cfg = compose_config(
        "model=tiny-gpt2", f"paths.results={tmp_path}", f"paths.editing_stats={tiny_gpt2_stats}", "editing.n_cases=2",
        "editing.sweep.n_cases=3", "editing.sweep.layers=[0,1,5]", "editing.sweep.etas=[0.5,50.0]", "editing.sweep.max_ns_drop=1.0",
    )
    editing_sweep.run(cfg)
    cases = pd.read_parquet(cfg.paths.editing_sweep)
    # Three variants x two layers (5 is beyond tiny GPT-2's depth) x two etas x three cases.
    assert len(cases) == 3 * 2 * 2 * 3 and set(cases["method"]) == {"shift", "shift_centered", "shift_whitened"}
    assert set(cases[cases["method"] == "shift_whitened"]["key"]) == {"whitened"}
    choice = json.loads((tmp_path / "editing" / "shift_sweep_choice.json").read_text())
    assert set(choice["methods"]) == {"shift", "shift_centered", "shift_whitened"}
    chosen = choice["methods"]["shift_centered"]
    assert chosen["layer"] in (0, 1) and "score" in chosen
    assert sum(group["n_cases"] for group in chosen["by_target_length"].values()) == 3
    shift_sweep_figure(cases, "tiny-gpt2", tmp_path / "fig26.pdf", choice)
    assert (tmp_path / "fig26.png").stat().st_size > 0


def test_the_shift_sweep_refuses_a_method_that_is_not_a_shift(tmp_path):
    from backlens.errors import ConfigError
    from backlens.stages import editing_sweep
    from conftest import compose_config, require_shared

    require_shared("data", "counterfact")
    cfg = compose_config("model=tiny-gpt2", f"paths.results={tmp_path}", "editing.n_cases=2", "editing.sweep.n_cases=1",
                         "editing.sweep.methods=[rome]", "editing.sweep.layers=[0]", "editing.sweep.etas=[1.0]")
    with pytest.raises(ConfigError, match="rome is not a forward pass shift"):
        editing_sweep.run(cfg)


def test_the_shift_sweep_brackets_each_models_relative_depth_layer():
    """The default sweep layers follow the relative-depth rule (base layer_fraction x n_layers, +-2), so
    SmolLM2's are the committed sweep's 20, 22, 24 and Gemma 3 270M's (18 layers) 11, 13, 15 instead of
    SmolLM2's numbers, which lie beyond its depth; an explicit list replaces them."""
    from backlens.errors import ConfigError
    from backlens.editing.run_config import sweep_layers
    from conftest import compose_config

    for model, n_layers, expected in (("smollm2-135m", 30, [20, 22, 24]), ("gemma3-270m", 18, [11, 13, 15]),
                                      ("tiny-gpt2", 3, [0, 2])):
        cfg = compose_config(f"model={model}")
        for method in cfg.editing.sweep.methods:
            assert sweep_layers(cfg, str(method), n_layers) == expected, (model, method)
    assert sweep_layers(compose_config("editing.sweep.layers=[0,1,5]"), "shift", 3) == [0, 1]
    with pytest.raises(ConfigError, match=r"editing.sweep.layers: none of \[20, 22, 24\] is a layer of gemma3-270m"):
        sweep_layers(compose_config("model=gemma3-270m", "editing.sweep.layers=[20,22,24]"), "shift", 18)
