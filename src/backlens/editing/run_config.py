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
from backlens.editing.methods import (
    build_editor,
    check_method_overrides,
    load_method_config,
    method_hparams,
    refusal_reason,
)
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


def check_all_method_overrides(methods) -> None:
    """Every ``methods.<name>.<key>`` names a configured method and one of its hyper-parameters."""
    for name, overrides in (methods or {}).items():
        check_method_overrides(str(name), overrides or {}, load_method_config(str(name), f"methods.{name}"))


def refused_methods(cfg: DictConfig) -> list[str]:
    """The methods whose editor refuses this run's model (``editing.refused_methods.<model name>``)."""
    per_model = cfg.editing.get("refused_methods") or {}
    return [str(name) for name in per_model.get(str(cfg.model.name)) or []]


def methods_run(cfg: DictConfig, names) -> list[str]:
    """``names`` (a method list of the editing config: table1_methods, sequential.methods, ...) without
    the methods whose editor refuses the run's model, in order."""
    refused = set(refused_methods(cfg))
    return [str(name) for name in names if str(name) not in refused]


def refusal_note(cfg: DictConfig, names) -> str:
    """One line naming the methods of ``names`` this run leaves out and why (the editors' reasons), or ""."""
    refused = set(refused_methods(cfg))
    dropped = [name for name in dict.fromkeys(str(name) for name in names) if name in refused]
    if not dropped:
        return ""
    reasons: dict[str, list[str]] = {}
    for name in dropped:
        reasons.setdefault(refusal_reason(name), []).append(name)
    return (f"Not run on {cfg.model.name} (editing.refused_methods): "
            + "; ".join(f"{', '.join(group)}: {reason}" for reason, group in reasons.items()) + ".")


def check_refused_methods(refused) -> None:
    """Every method ``editing.refused_methods`` lists has a config and an editor that refuses some
    models (a name there that refuses nothing would silently drop a row)."""
    for model, names in (refused or {}).items():
        for name in names or []:
            key = f"editing.refused_methods.{model}"
            if refusal_reason(str(name), key) is None:
                raise ConfigError(f"{key}: the {name} editor refuses no model (no refusal_reason); "
                                  f"remove {name} from the list")


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


def not_run_line(cfg: DictConfig) -> str:
    """The Table 1 methods this model's run leaves out and why, a paragraph after the table's note ("" if none)."""
    note = refusal_note(cfg, cfg.editing.table1_methods)
    return f"\n{note}\n" if note else ""


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
