"""The documented rule that picks a method's hyper-parameters from a sweep."""

import pandas as pd
import pytest

from backlens.stages.editing_method_sweep import grid_settings
from backlens.stages.editing_sweep import choose

SWEEP = pd.DataFrame({
    "layer": [4, 22, 22, 26],
    "eta": [0.1, 0.3, 1.0, 0.1],
    "efficacy": [0.2, 0.9, 1.0, 0.8],
    "paraphrase": [0.1, 0.2, 0.6, 0.2],
    "neighborhood": [0.06, 0.06, 0.00, 0.06],
})


def test_the_rule_keeps_neighborhood_then_maximises_efficacy_plus_paraphrase():
    # layer 22 / eta 1.0 has the best efficacy + paraphrase but drops neighborhood by 6 points.
    chosen = choose(SWEEP, baseline_neighborhood=0.06, max_drop=0.05, settings=["eta", "layer"])
    assert chosen == {"eta": 0.3, "layer": 22, "efficacy": 0.9, "paraphrase": 0.2, "neighborhood": 0.06}
    assert isinstance(chosen["layer"], int)


def test_ties_go_to_the_smaller_setting():
    chosen = choose(SWEEP, baseline_neighborhood=0.06, max_drop=0.05, settings=["layer", "eta"])
    assert (chosen["layer"], chosen["eta"]) == (22, 0.3)
    tied = SWEEP.assign(efficacy=[0.9, 0.9, 0.0, 0.9], paraphrase=[0.2, 0.2, 0.0, 0.2])  # three equal
    assert choose(tied, 0.06, 0.05, ["eta", "layer"])["layer"] == 4


def test_a_grid_where_every_setting_breaks_neighborhood_is_an_error():
    with pytest.raises(ValueError, match="widen the grid"):
        choose(SWEEP.assign(neighborhood=0.0), baseline_neighborhood=0.5, max_drop=0.05, settings=["eta"])


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
        "editing.method_sweeps.ft.max_neighborhood_drop=1.0", "++methods.ft.num_steps=3",
    )
    editing_method_sweep.run(cfg)
    cases = pd.read_parquet(cfg.paths.editing_method_sweep)
    # The override replaces the bound's values; the grid's two learning rates stay: 2 x 2 settings x 2 cases.
    assert len(cases) == 8 and sorted(cases["norm_constraint"].unique()) == [0.0, 1.0]
    assert sorted(cases["lr"].unique()) == [5e-4, 5e-3]
    assert set(cases["case_id"]) == {5000, 5001}  # outside the evaluation range 0-1
    choice = json.loads((tmp_path / "editing" / "ft_sweep_choice.json").read_text())
    assert choice["norm_constraint"] in (0.0, 1.0) and choice["fixed_hparams"]["num_steps"] == 3
    # A zero bound cannot move the weights: efficacy stays at the unedited model's.
    frozen = cases[cases["norm_constraint"] == 0.0]
    assert (frozen["efficacy"] == frozen["efficacy_before"]).all()
