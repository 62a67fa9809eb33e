"""Method registry and per-model hyper-parameters (conf/method/<name>.yaml)."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from backlens.editing.base import Editor, NoEdit
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.memit import MassEditingMemory
from backlens.editing.mend import MendEditor
from backlens.editing.rome import RankOneModelEditing
from backlens.editing.shift import ForwardPassShift
from backlens.models.loading import LoadedModel

EDITORS: dict[str, type[Editor]] = {
    "none": NoEdit,
    "shift": ForwardPassShift,
    "ft": ConstrainedFineTuning,
    "rome": RankOneModelEditing,
    "memit": MassEditingMemory,
    "mend": MendEditor,
}


def method_hparams(method_cfg: Mapping, model_name: str, n_layers: int | None = None) -> dict:
    """``base`` overlaid with ``per_model[model_name]``; layers given as a fraction of depth
    (``layer_fraction``) are turned into an index when no per-model layer is set."""
    cfg = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    hparams = dict(cfg.get("base") or {})
    hparams.update((cfg.get("per_model") or {}).get(model_name) or {})
    if "layer" not in hparams and "layer_fraction" in hparams:
        if n_layers is None:
            raise ValueError(f"method {cfg.get('name')}: layer_fraction needs the model's layer count")
        hparams["layer"] = min(n_layers - 1, round(float(hparams["layer_fraction"]) * n_layers))
    return hparams


def build_editor(loaded: LoadedModel, method_cfg: Mapping, extra: Mapping | None = None) -> tuple[Editor, dict]:
    """The editor named by ``method_cfg.kind`` with its hyper-parameters for ``loaded``."""
    kind = str(method_cfg["kind"])
    if kind not in EDITORS:
        raise ValueError(f"method.kind={kind!r} is unknown; choose one of {sorted(EDITORS)}")
    hparams = method_hparams(method_cfg, loaded.name, loaded.adapter.n_layers)
    hparams.update(extra or {})
    return EDITORS[kind](loaded, hparams), hparams
