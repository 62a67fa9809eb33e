"""Shared pieces of the editing stages: case ranges, method configs and the held-out corpus."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf

from backlens.data.counterfact import load_counterfact_from_config
from backlens.editing.methods import check_method_overrides, load_method_config, method_hparams
from backlens.editing.requests import EditRequest


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


def check_all_method_overrides(methods) -> None:
    """Every ``methods.<name>.<key>`` names a configured method and one of its hyper-parameters."""
    for name, overrides in (methods or {}).items():
        check_method_overrides(str(name), overrides or {}, load_method_config(str(name), f"methods.{name}"))


def user_method_overrides(cfg: DictConfig, method_name: str) -> dict:
    """The ``methods.<method_name>.*`` overrides of this run (applied over base and per_model);
    run_stage has checked them against the method configs (check_run_config)."""
    overrides = (cfg.get("methods") or {}).get(method_name)
    return dict(OmegaConf.to_container(overrides, resolve=True)) if overrides is not None else {}


def other_method_hparams(cfg: DictConfig, method_name: str, n_layers: int) -> dict:
    """Hyper-parameters of conf/method/<method_name>.yaml for this model, with the run's
    ``methods.<method_name>`` overrides; the selected method also keeps its ``method.*`` overrides.

    Interpolations into the root config (paths) are resolved against ``cfg``.
    """
    if cfg.method.name == method_name:
        return {**method_hparams(cfg.method, cfg.model.name, n_layers), **user_method_overrides(cfg, method_name)}
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    merged.method = load_method_config(method_name, f"methods.{method_name}")
    return {**method_hparams(merged.method, cfg.model.name, n_layers), **user_method_overrides(cfg, method_name)}


def statistics_layers(cfg: DictConfig, n_layers: int) -> list[int]:
    """FF2 layers whose second moments some configured method needs (ROME's layer, MEMIT's layers,
    a whitened-key shift's layer and, for its sweep, every swept layer)."""
    layers: set[int] = set()
    for name in cfg.editing.covariance_methods:
        hparams = other_method_hparams(cfg, str(name), n_layers)
        layers.update(int(x) for x in hparams.get("layers", []))
        if "layer" in hparams:
            layers.add(int(hparams["layer"]))
        if hparams.get("key") == "whitened":
            layers.update(int(x) for x in cfg.editing.sweep.layers if int(x) < n_layers)
    return sorted(layers)


def load_editor(cfg: DictConfig):
    """The run's model and its method's editor handle (templates and statistics prepared once), seeded
    as every editing stage is: (loaded model, handle, seconds the handle's set-up took)."""
    from backlens.api.editing import EditorHandle
    from backlens.models.loading import load_model

    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    torch.manual_seed(int(cfg.seed))
    started = time.perf_counter()
    handle = EditorHandle(loaded, cfg.method, user_method_overrides(cfg, cfg.method.name))
    return loaded, handle, time.perf_counter() - started
