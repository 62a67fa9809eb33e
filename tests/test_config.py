"""Every config group composes with Hydra's compose API."""

from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, compose_config

from backlens.conf import DEFAULT_MODEL, GROUPS
from backlens.project import config_dir

MODEL_NAMES = sorted(p.stem for p in config_dir("model").glob("*.yaml"))
DATASET_NAMES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml"))
EXPERIMENT_NAMES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))


def test_expected_models_are_configured():
    expected = {"smollm2-135m", "gemma3-270m", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama2-7b"}
    assert expected | {"tiny-gpt2", "tiny-llama"} <= set(MODEL_NAMES)


def test_default_model_is_the_root_configs_default():
    """backlens.conf.DEFAULT_MODEL (API, console command) and conf/config.yaml's defaults list agree."""
    assert compose_config().model.name == DEFAULT_MODEL


@pytest.mark.parametrize("group", GROUPS)
def test_packaged_groups_have_one_copy_and_compose(group):
    """The groups the library reads live in the package only; Hydra finds them through the root
    config's search path (pkg://backlens.conf)."""
    assert not (PROJECT_ROOT / "conf" / group).exists(), f"conf/{group}/ duplicates src/backlens/conf/{group}/"
    names = sorted(p.stem for p in config_dir(group).glob("*.yaml"))
    assert names
    for name in names:
        assert group in compose_config(f"{group}={name}")


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_model_config_composes(model):
    cfg = compose_config(f"model={model}")
    assert cfg.model.name == model
    assert cfg.model.source in {"package_gguf", "assembled_gguf", "hub", "random"}
    assert cfg.run_name == model
    assert cfg.paths.prompts == f"results/{model}/prompts.parquet"


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_dataset_config_composes(dataset):
    cfg = compose_config(f"dataset={dataset}")
    assert cfg.dataset.name == dataset
    assert list(cfg.dataset.candidates)


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a plain YAML mapping."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("experiment", EXPERIMENT_NAMES)
def test_every_value_an_experiment_sets_wins(experiment):
    """An experiment overrides the root config as well as the groups (it comes after _self_)."""
    import yaml
    from omegaconf import OmegaConf

    cfg = compose_config(f"experiment={experiment}")
    settings = yaml.safe_load((PROJECT_ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text())
    for key, value in leaves(settings):
        assert OmegaConf.select(cfg, key) == value, (experiment, key)


def test_smoke_experiment_shrinks_the_root_sample():
    assert compose_config("experiment=smoke").n_prompts == 8 < compose_config().n_prompts


def test_defaults_are_the_embedded_model_on_cpu_in_float32():
    cfg = compose_config()
    assert (cfg.model.name, cfg.device, cfg.dtype, cfg.n_prompts) == ("smollm2-135m", "cpu", "float32", 100)
    assert cfg.known_facts.name == "known_1000"


def test_paper_numbers_are_data():
    paper = compose_config().paper
    assert paper.table1.rows.shift == [99.4, 41.6, 6.02, 622.45]
    assert paper.fig3_gradient_rank.last_layer_rank == 1


def test_hydra_run_dir_is_under_logs_and_not_timestamped():
    text = Path(PROJECT_ROOT / "conf" / "hydra" / "default.yaml").read_text()
    assert "dir: logs/" in text and "now:" not in text
