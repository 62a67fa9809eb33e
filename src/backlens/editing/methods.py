"""Method registry and per-model hyper-parameters (backlens/conf/method/<name>.yaml, shipped in the package)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from backlens.editing.alphaedit import AlphaEditMemory
from backlens.editing.base import Editor, NoEdit
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.memit import MassEditingMemory
from backlens.editing.mend import MendEditor
from backlens.editing.null_space import projection_enabled
from backlens.editing.rome import RankOneModelEditing
from backlens.editing.shift import ForwardPassShift
from backlens.errors import ConfigError, UserError
from backlens.models.loading import LoadedModel
from backlens.artifacts import artifact
from backlens.project import config_dir, files_root, in_checkout

EDITORS: dict[str, type[Editor]] = {
    "none": NoEdit,
    "shift": ForwardPassShift,
    "ft": ConstrainedFineTuning,
    "rome": RankOneModelEditing,
    "memit": MassEditingMemory,
    "mend": MendEditor,
}


def load_method_config(method_name: str, key: str = "method") -> DictConfig:
    """backlens/conf/method/<method_name>.yaml, unresolved (its ``${paths...}`` interpolations
    are the caller's to resolve); an unknown name is a ConfigError naming ``key`` and the known methods.

    A variant names the method it extends in a Hydra defaults list (``defaults: [rome, _self_]``, as
    Hydra composes ``method=<name>``): that config comes first and the variant's keys are merged over
    it, so the shared hyper-parameters have one source."""
    folder = config_dir("method")
    path = folder / f"{method_name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"{key}: no method config backlens/conf/method/{method_name}.yaml; "
                          f"known methods: {', '.join(known)}")
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", None) or [])
    if not defaults:
        return own
    if "_self_" not in defaults:
        defaults.append("_self_")  # Hydra's default place for _self_ in a config's defaults list
    parts = [own if entry == "_self_" else load_method_config(str(entry), key) for entry in defaults]
    return OmegaConf.merge(*parts)


def method_hparams(method_cfg: Mapping, model_name: str, n_layers: int | None = None) -> dict:
    """``base`` overlaid with ``per_model[model_name]``; without per-model layers, a layer given as a
    fraction of depth (``layer_fraction``) becomes an index, MEMIT's ``n_edit_layers`` a run of layers
    ending there, and MEND's ``layers_from_end`` the last layers."""
    cfg = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    hparams = dict(cfg.get("base") or {})
    hparams.update((cfg.get("per_model") or {}).get(model_name) or {})
    needs_depth = ("layer" not in hparams and "layer_fraction" in hparams) or (
        "layers" not in hparams and ("n_edit_layers" in hparams or "layers_from_end" in hparams))
    if needs_depth and n_layers is None:
        raise ValueError(f"method {cfg.get('name')}: default layers need the model's layer count")
    # Default layers for a model without per-model values, at GPT-2 XL's relative depths:
    # MEMIT's n_edit_layers ending at layer_fraction, MEND's last layers_from_end layers.
    if "n_edit_layers" in hparams:
        if "layers" not in hparams:
            last = min(n_layers - 1, round(float(hparams["layer_fraction"]) * n_layers))
            hparams["layers"] = list(range(max(0, last - int(hparams["n_edit_layers"]) + 1), last + 1))
    elif "layer" not in hparams and "layer_fraction" in hparams:
        hparams["layer"] = min(n_layers - 1, round(float(hparams["layer_fraction"]) * n_layers))
    if "layers" not in hparams and "layers_from_end" in hparams:
        hparams["layers"] = list(range(max(0, n_layers - int(hparams["layers_from_end"])), n_layers))
    return hparams


# Hyper-parameters a kind takes with a default in the code (off: ROME's edit-prompt key, no
# projection), so they can be overridden on a method whose config does not list them (the
# configs of the methods without them, and their results' fingerprints, stay as they were).
OPTIONAL_HPARAMS = {
    "rome": {"update_key", "nullspace_projection", "nullspace_threshold", "nullspace_energy"},
    "memit": {"nullspace_projection", "nullspace_threshold", "nullspace_energy", "L2"},
    "shift": {"nullspace_projection", "nullspace_threshold", "nullspace_energy", "stats_path"},
}


def known_hparams(method_cfg: Mapping) -> set[str]:
    """Hyper-parameters a method has: its ``base`` keys, every ``per_model`` key, ``layer``
    where the base gives a ``layer_fraction``, and its kind's OPTIONAL_HPARAMS."""
    cfg = OmegaConf.to_container(method_cfg, resolve=False) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    known = set(cfg.get("base") or {}) | OPTIONAL_HPARAMS.get(str(cfg.get("kind")), set())
    for values in (cfg.get("per_model") or {}).values():
        known.update(values or {})
    if "layer_fraction" in known:
        known.add("layer")
    return known


def check_method_overrides(method_name: str, overrides: Mapping, method_cfg: Mapping) -> None:
    """Reject ``methods.<method_name>.<key>`` overrides of keys the method does not have (a typo
    would otherwise run with the default and name a result directory after the typo)."""
    known = known_hparams(method_cfg)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"methods.{method_name}.{unknown[0]}: {method_name} has no hyper-parameter {unknown[0]!r}; "
            f"known: {', '.join(sorted(known))}"
        )


def editor_inputs(kind: str, hparams: Mapping, covariance=None, templates=None) -> dict:
    """Keyword arguments that hand an editor given statistics or templates instead of the
    statistics file and sampled templates: ``covariance`` a (d_ff, d_ff) second moment of the
    edited layer or {layer: tensor}; ``templates`` ROME's flat list or MEMIT's groups."""
    extra: dict = {}
    if kind == "memit":
        if covariance is not None:
            extra["second_moments"] = covariance if isinstance(covariance, Mapping) else {
                int(layer): covariance for layer in hparams["layers"]}
        if templates is not None:
            extra["templates"] = [list(group) for group in templates]
    elif kind in ("rome", "shift"):
        if covariance is not None:
            extra["second_moment"] = covariance[int(hparams["layer"])] if isinstance(covariance, Mapping) else covariance
        if templates is not None and kind == "rome":
            extra["templates"] = list(templates)
    elif covariance is not None or templates is not None:
        raise UserError(f"method kind {kind!r} takes no covariance or templates")
    return extra


def editor_class(kind: str, hparams: Mapping) -> type[Editor]:
    """The editor of ``kind``; MEMIT with ``nullspace_projection`` is AlphaEdit (its own solve and cache)."""
    if kind == "memit" and projection_enabled(hparams):
        return AlphaEditMemory
    return EDITORS[kind]


def refusal_reason(method_name: str, key: str = "method") -> str | None:
    """Why conf/method/<method_name>.yaml's editor refuses some models (its ``refusal_reason``), or None
    where it edits any; read from the editor class, no model loaded."""
    cfg = load_method_config(method_name, key)
    base = OmegaConf.to_container(cfg.get("base") or OmegaConf.create({}), resolve=False)
    return editor_class(str(cfg["kind"]), base).refusal_reason


def method_refuses(loaded: LoadedModel, kind: str, hparams: Mapping) -> bool:
    """Whether the editor of ``kind`` with ``hparams`` refuses ``loaded`` (checked on the model)."""
    return editor_class(kind, hparams).refuses(loaded, hparams)


STATS_KEY = "stats_path"


class MissingStatisticsError(UserError, FileNotFoundError):
    """A method needs the pipeline's FF2 statistics file, which has not been made yet."""


def needs_statistics(kind: str, hparams: Mapping) -> bool:
    """Whether the editor of ``kind`` reads the FF2 second moments (``stats_path``) when none are given."""
    return (kind == "rome" and bool(hparams.get("mom2_adjustment", True))) or kind == "memit" or (
        kind == "shift" and hparams.get("key") == "whitened") or (
        kind in ("rome", "shift") and projection_enabled(hparams))


def missing_statistics(method: str, model_name: str, path: Path) -> MissingStatisticsError:
    """The error naming the absent statistics file and the rule (or argument) that gives it."""
    root = files_root()
    shown = path.relative_to(root) if path.is_relative_to(root) and in_checkout() else path
    # Outside a checkout there is no workflow to run: the pipeline's file is made in one and copied here.
    how = (f"`snakemake --cores 2 {shown}`" if in_checkout() else
           f"`snakemake --cores 2 {artifact('editing_stats', run=model_name)}` in a checkout, copied to {path}")
    return MissingStatisticsError(
        f"{method} needs the FF2 statistics {shown}, which do not exist; make them with "
        f"{how} (rule edit_covariance) or pass covariance=<tensor>"
    )


def build_editor(loaded: LoadedModel, method_cfg: Mapping, extra: Mapping | None = None, *,
                 covariance=None, templates=None) -> tuple[Editor, dict]:
    """The editor named by ``method_cfg.kind`` with its hyper-parameters for ``loaded`` (``extra``
    overrides them): the one factory behind the API's editor handle (``api.edit``, ``backlens edit``),
    the editing stages (through ``editing.run_config.load_editor``) and the sweeps.

    ``extra`` must name hyper-parameters the method has, and a method that reads the FF2 statistics
    file needs it to exist unless ``covariance`` is given: both fail here with a message that says
    what to do, before any set-up work."""
    name = str(method_cfg["name"])
    extra = dict(extra or {})
    check_method_overrides(name, extra, method_cfg)
    kind = str(method_cfg["kind"])
    if kind not in EDITORS:
        raise ValueError(f"method.kind={kind!r} is unknown; choose one of {sorted(EDITORS)}")
    hparams = method_hparams(method_cfg, loaded.name, loaded.adapter.n_layers)
    hparams.update(extra)
    stats = Path(str(hparams.get(STATS_KEY)))
    if covariance is None and needs_statistics(kind, hparams) and not stats.exists():
        raise missing_statistics(name, loaded.name, stats)
    return editor_class(kind, hparams)(loaded, hparams, **editor_inputs(kind, hparams, covariance, templates)), hparams
