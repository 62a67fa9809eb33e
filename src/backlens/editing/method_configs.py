"""The method configs (backlens/conf/method/<name>.yaml, shipped in the package) and what a run config
says about them, without torch: per-model hyper-parameters, the overrides a method accepts, and which
editors refuse which models and why. Every stage checks its run config with these
(``config_checks.check_run_config``) and the table and figure stages read the refusals, so none of them
loads torch for it (about 4 s of CPU per such job in `make figures`); ``editing.methods`` builds the editors."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from backlens.errors import ConfigError
from backlens.project import config_dir

# MEMIT writes the residual change z* - z into FF2 outputs, which holds only where a block adds its MLP
# output to the residual unchanged (GPT-2, Llama, Qwen2, NeoX; not Gemma 2/3, whose post-feed-forward
# RMSNorm comes after the MLP: no exact solve through it in general, see editing/README.md).
MLP_OUTPUT_REFUSAL = (
    "a block does not add its MLP output to the residual unchanged (a post-feed-forward norm, as Gemma 2/3's, "
    "fixes the scale of what the MLP adds), so no FF2 update reaches MEMIT's residual target z* in general "
    "(src/backlens/editing/README.md)"
)
# Why the editor of a kind refuses some models, in one line (a kind not listed edits any model). The
# editor classes read their ``refusal_reason`` from here (MEMIT's, and AlphaEdit's through it); a
# model's run leaves such a method out (editing.refused_methods) and its Table 1 names it with this reason.
REFUSAL_REASONS: dict[str, str] = {"memit": MLP_OUTPUT_REFUSAL}


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


def refusal_reason(method_name: str, key: str = "method") -> str | None:
    """Why conf/method/<method_name>.yaml's editor refuses some models, or None where it edits any
    (REFUSAL_REASONS of its kind; no model or editor loaded)."""
    return REFUSAL_REASONS.get(str(load_method_config(method_name, key)["kind"]))


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


def not_run_line(cfg: DictConfig) -> str:
    """The Table 1 methods this model's run leaves out and why, a paragraph after the table's note ("" if none)."""
    note = refusal_note(cfg, cfg.editing.table1_methods)
    return f"\n{note}\n" if note else ""
