"""Method registry: the editor of each kind and the one factory that builds it (``build_editor``). The
method configs themselves (backlens/conf/method/<name>.yaml, per-model hyper-parameters, refusal reasons)
are read by ``editing.method_configs``, which loads no torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


from backlens.editing.alphaedit import AlphaEditMemory
from backlens.editing.base import Editor, NoEdit
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.memit import MassEditingMemory
from backlens.editing.method_configs import (  # noqa: F401 (the configs' half, torch-free; re-exported here)
    check_method_overrides,
    load_method_config,
    method_hparams,
    refusal_reason,
)
from backlens.editing.mend import MendEditor
from backlens.editing.null_space import projection_enabled
from backlens.editing.rome import RankOneModelEditing
from backlens.editing.shift import ForwardPassShift
from backlens.errors import UserError
from backlens.models.loading import LoadedModel
from backlens.artifacts import artifact
from backlens.project import files_root, in_checkout

EDITORS: dict[str, type[Editor]] = {
    "none": NoEdit,
    "shift": ForwardPassShift,
    "ft": ConstrainedFineTuning,
    "rome": RankOneModelEditing,
    "memit": MassEditingMemory,
    "mend": MendEditor,
}


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
