"""What a composed run config says about editing, read once for every editing stage: the CounterFact
case ranges, each method's hyper-parameters with the run's overrides, the methods a model's editors
refuse, the sweeps' layers, the sequential settings, and the run's editor (``load_editor``, through
the one factory ``editing.methods.build_editor``)."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf

from backlens.data.counterfact import load_counterfact_from_config
from backlens.editing.base import Editor
from backlens.editing.method_configs import (  # noqa: F401 (re-exported: the stages' one place for the run config)
    check_refused_methods,
    load_method_config,
    method_hparams,
    methods_run,
    not_run_line,
    refusal_note,
    refused_methods,
)
from backlens.editing.methods import build_editor
from backlens.editing.requests import EditRequest
from backlens.editing.sequential import SequentialSettings
from backlens.errors import ConfigError
from backlens.models.loading import LoadedModel, load_model


def requests_in_range(cfg: DictConfig, first_case: int, n_cases: int, label: str) -> list[EditRequest]:
    """EditRequests for CounterFact records [first_case, first_case + n_cases) in file order."""
    dataset = load_counterfact_from_config(cfg.dataset)
    if first_case + n_cases > len(dataset):
        raise ValueError(
            f"{label}: records {first_case}..{first_case + n_cases - 1} requested but {dataset.path} has "
            f"{len(dataset)}; lower the case count or the first case"
        )
    return [EditRequest.from_record(r) for r in dataset.records[first_case : first_case + n_cases]]


def evaluation_requests(cfg: DictConfig) -> list[EditRequest]:
    return requests_in_range(cfg, int(cfg.editing.first_case), int(cfg.editing.n_cases), "editing.n_cases")


def user_method_overrides(cfg: DictConfig, method_name: str) -> dict:
    """The ``methods.<method_name>.*`` overrides of this run (applied over base and per_model);
    run_stage has checked them against the method configs (check_run_config)."""
    overrides = (cfg.get("methods") or {}).get(method_name)
    return dict(OmegaConf.to_container(overrides, resolve=True)) if overrides is not None else {}


def run_method_config(cfg: DictConfig, method_name: str) -> DictConfig:
    """conf/method/<method_name>.yaml as this run sees it: ``cfg.method`` (with its ``method.*``
    overrides) for the selected method, else the file, its interpolations into the root config
    (paths) resolved against ``cfg``."""
    if cfg.method.name == method_name:
        return cfg.method
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    merged.method = load_method_config(method_name, f"methods.{method_name}")
    return merged.method


def other_method_hparams(cfg: DictConfig, method_name: str, n_layers: int) -> dict:
    """Hyper-parameters of conf/method/<method_name>.yaml for this model, with the run's
    ``methods.<method_name>`` overrides; the selected method also keeps its ``method.*`` overrides."""
    return {**method_hparams(run_method_config(cfg, method_name), cfg.model.name, n_layers),
            **user_method_overrides(cfg, method_name)}


def statistics_layers(cfg: DictConfig, n_layers: int) -> list[int]:
    """FF2 layers whose second moments some configured method needs (ROME's layer, MEMIT's layers,
    a whitened-key shift's layer and, for its sweep, every swept layer); none for a method the run's
    model refuses (editing.refused_methods)."""
    layers: set[int] = set()
    for name in methods_run(cfg, cfg.editing.covariance_methods):
        hparams = other_method_hparams(cfg, str(name), n_layers)
        layers.update(int(x) for x in hparams.get("layers", []))
        if "layer" in hparams:
            layers.add(int(hparams["layer"]))
        if hparams.get("key") == "whitened":
            layers.update(sweep_layers(cfg, str(name), n_layers))
    return sorted(layers)


def sweep_layers(cfg: DictConfig, method_name: str, n_layers: int) -> list[int]:
    """The layers the shift sweep tries for ``method_name``: ``editing.sweep.layers`` where given (those
    inside the model), else the method's relative-depth layer (its config's base ``layer_fraction`` x
    n_layers, ignoring per_model values: the rule a model without them gets) plus
    ``editing.sweep.layer_offsets``, so each model's sweep brackets its own depth."""
    sweep = cfg.editing.sweep
    if sweep.get("layers") is not None:
        candidates = [int(x) for x in sweep.layers]
    else:
        method = load_method_config(method_name, "editing.sweep.methods")
        base = {"name": method_name, "base": OmegaConf.to_container(method.base, resolve=False)}
        centre = int(method_hparams(base, str(cfg.model.name), n_layers)["layer"])
        candidates = [centre + int(offset) for offset in sweep.layer_offsets]
    layers = sorted({layer for layer in candidates if 0 <= layer < n_layers})
    if not layers:
        raise ConfigError(f"editing.sweep.layers: none of {candidates} is a layer of {cfg.model.name} ({n_layers} "
                          "layers); set editing.sweep.layers=null (relative depth) or layers below its depth")
    return layers


def check_outside_evaluation(cfg: DictConfig, first_case: int, n_cases: int, label: str) -> None:
    """A sweep's cases [first_case, first_case + n_cases) must lie outside the evaluation range."""
    evaluation_start = int(cfg.editing.first_case)
    evaluation_end = evaluation_start + int(cfg.editing.n_cases)
    if first_case < evaluation_end and evaluation_start < first_case + n_cases:
        raise ValueError(f"{label} cases {first_case}..{first_case + n_cases - 1} overlap the evaluation range; move {label}.first_case")


def settings_of(cfg: DictConfig) -> SequentialSettings:
    """The sequential series' checkpoints, scoring batch and collapse rule (``editing.sequential``)."""
    seq = cfg.editing.sequential
    return SequentialSettings(tuple(int(c) for c in seq.checkpoints), int(cfg.editing.evaluation.batch_size),
                              float(seq.collapse.perplexity_multiple), float(seq.collapse.retention_floor))


def load_editor(cfg: DictConfig) -> tuple[LoadedModel, Editor, dict, float]:
    """The run's model and its method's editor (templates and statistics prepared once), seeded as
    every editing stage is: (loaded model, editor, its hyper-parameters, seconds the set-up took)."""
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    torch.manual_seed(int(cfg.seed))
    started = time.perf_counter()
    editor, hparams = build_editor(loaded, cfg.method, user_method_overrides(cfg, cfg.method.name))
    return loaded, editor, hparams, time.perf_counter() - started
