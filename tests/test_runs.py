"""Result directories named after their overrides, sweeps and their comparison labels."""

import pytest

from backlens.runs import Run, expand_sweep, parse_run, runs_of_label, split_overrides, split_values, sweep_label, varying_overrides


def test_run_names_are_readable_sorted_and_reversible():
    run = Run("smollm2-135m", ("methods.shift.eta=0.1", "dtype=float64"))
    assert run.name == "smollm2-135m__dtype=float64__methods.shift.eta=0.1"
    assert Run("smollm2-135m", ("dtype=float64", "methods.shift.eta=0.1")).name == run.name
    assert parse_run(run.name) == Run("smollm2-135m", ("dtype=float64", "methods.shift.eta=0.1"))
    assert Run("gpt2").name == "gpt2"
    with_path = Run("gpt2", ("model.path=/data/gpt2",))
    assert "/" not in with_path.name and parse_run(with_path.name).overrides == ("model.path=/data/gpt2",)


def test_placement_overrides_stay_out_of_the_name():
    named, placement = split_overrides("device=cuda methods.shift.eta=0.1 tracing.num_threads=4")
    assert named == ["methods.shift.eta=0.1"] and placement == ["device=cuda", "tracing.num_threads=4"]


def test_comma_values_sweep_but_lists_do_not():
    assert split_values("0.1,0.3") == ["0.1", "0.3"]
    assert split_values("[6,7,8],[9,10]") == ["[6,7,8]", "[9,10]"]
    assert split_values("'a,b'") == ["'a,b'"]
    runs = expand_sweep(["smollm2-135m"], ["methods.shift.eta=0.1,0.3", "methods.memit.layers=[6,7]"])
    assert [r.name for r in runs] == [
        "smollm2-135m__methods.memit.layers=[6,7]__methods.shift.eta=0.1",
        "smollm2-135m__methods.memit.layers=[6,7]__methods.shift.eta=0.3",
    ]


def test_model_override_replaces_the_configured_models():
    runs = expand_sweep(["smollm2-135m"], ["model=gpt2,gpt2-medium", "seed=1"])
    assert [r.name for r in runs] == ["gpt2__seed=1", "gpt2-medium__seed=1"]


def test_a_sweep_label_expands_back_to_its_runs():
    overrides = ["methods.shift.eta=0.1,0.3"]
    label = sweep_label(["smollm2-135m"], overrides)
    assert label == "smollm2-135m__methods.shift.eta=0.1,0.3"
    assert runs_of_label(label) == expand_sweep(["smollm2-135m"], overrides)
    assert [r.model for r in runs_of_label("gpt2,gpt2-xl")] == ["gpt2", "gpt2-xl"]


def test_legend_labels_show_what_differs():
    runs = expand_sweep(["smollm2-135m"], ["methods.shift.eta=0.1,0.3", "seed=1"])
    assert varying_overrides(runs) == ["methods.shift.eta=0.1", "methods.shift.eta=0.3"]
    assert varying_overrides([Run("gpt2"), Run("gpt2-xl")]) == ["gpt2", "gpt2-xl"]


def test_shared_artefacts_keep_only_the_overrides_they_depend_on():
    run = Run("smollm2-135m", ("methods.shift.eta=0.1", "editing.corpus.n_blocks=10"))
    assert run.keeping(("editing.corpus", "methods.rome")).name == "smollm2-135m__editing.corpus.n_blocks=10"
    assert Run("gpt2", ("methods.shift.eta=0.1",)).keeping(("dtype",)).name == "gpt2"


def test_an_override_without_a_value_is_refused():
    with pytest.raises(ValueError, match="key=value"):
        split_overrides("methods.shift.eta")
