"""One edit at a time, undone bit for bit: ``edit`` as a context manager.

    with edit(loaded, "{} is located in", "The Eiffel Tower", " Rome", method="shift") as result:
        print(result.facts)                      # what the editor reports (skipped, update norm, losses...)
        # ROME / MEMIT: result.update.layers[i].u_In, .v_Out, result.update.v_star_Out, result.update.losses
        next_tokens(loaded, ["The Eiffel Tower is located in"])
    # the edited weights are restored here, whatever happened inside

Methods are the pipeline's editors (conf/method/<name>.yaml: shift, shift_centered, shift_whitened,
ft, ft_mlp0, rome, memit), with their per-model hyper-parameters; keyword arguments override them.
ROME, MEMIT and the whitened shift read the FF2 second moments from the pipeline's statistics file
unless ``covariance`` gives them as tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from backlens.api.lens import target_token
from backlens.api.models import DEFAULT_MODEL, load
from backlens.project import project_root
from backlens.artifacts import artifact
from backlens.data.segments import place_subject
from backlens.editing.base import Editor, FactoredUpdate
from backlens.editing.methods import EDITORS, check_method_overrides, load_method_config, method_hparams
from backlens.editing.requests import EditRequest
from backlens.editing.weights import restored_after
from backlens.errors import UserError
from backlens.models.loading import LoadedModel

STATS_KEY = "stats_path"


class MissingStatisticsError(UserError, FileNotFoundError):
    """A method needs the pipeline's FF2 statistics file, which has not been made yet."""


@dataclass
class EditResult:
    """What one edit did: the request, the hyper-parameters used, ``facts`` (the editor's report) and,
    for ROME and MEMIT, ``update``: per layer the factors u, v of the weight change, the optimised
    value v* (MEMIT: z*) and the value optimisation's loss at every step (None for other methods)."""

    method: str
    request: EditRequest
    hparams: dict
    facts: dict
    editor: Editor
    update: FactoredUpdate | None = None


def stats_file(model_name: str) -> Path:
    """The pipeline's FF2 statistics for a model (rule edit_covariance)."""
    return project_root() / artifact("editing_stats", run=model_name)


def method_config(method: str, model_name: str) -> dict:
    """conf/method/<method>.yaml with the statistics path resolved for ``model_name``."""
    raw = load_method_config(method, f"editing method {method!r}")
    scope = OmegaConf.create({"paths": {"editing_stats": str(stats_file(model_name))}, "method": raw})
    return OmegaConf.to_container(scope, resolve=True)["method"]


def needs_statistics(kind: str, hparams: Mapping) -> bool:
    return (kind == "rome" and bool(hparams.get("mom2_adjustment", True))) or kind == "memit" or (
        kind == "shift" and hparams.get("key") == "whitened")


def _editor(kind: str, loaded: LoadedModel, hparams: dict, covariance, templates) -> Editor:
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
    return EDITORS[kind](loaded, hparams, **extra)


def _missing_statistics(method: str, model_name: str, path: Path) -> MissingStatisticsError:
    root = project_root()
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    return MissingStatisticsError(
        f"{method} needs the FF2 statistics {shown}, which do not exist; make them with "
        f"`snakemake --cores 2 {shown}` (rule edit_covariance) or pass covariance=<tensor>"
    )


@contextmanager
def edit(model: str | LoadedModel, prompt_template: str, subject: str, target_new: str, method: str = "shift", *,
         target_true: str = "", covariance: torch.Tensor | Mapping[int, torch.Tensor] | None = None,
         templates: Sequence | None = None, **hparams: object) -> Iterator[EditResult]:
    """Apply one edit in place for the ``with`` block; the edited weights are restored bit for bit on exit.

    ``prompt_template``: the edit prompt, ``{}`` marking the subject's slot (or the prompt with the
    subject written out). ``hparams`` override conf/method/<method>.yaml (e.g. ``layer=20, eta=0.5``;
    ``stats_path=`` another statistics file). ``covariance``: the FF2 second moment (d_ff, d_ff) of the
    edited layer, or {layer: tensor} (MEMIT), instead of the statistics file; ``templates``: ROME's
    flat context-template list or MEMIT's groups instead of sampled ones.
    """
    loaded = getattr(model, "loaded", None) or load(model if model is not None else DEFAULT_MODEL)
    prompt, subject_start = place_subject(prompt_template, subject)
    target_token(loaded.tokenizer, prompt, target_new)  # one clear error for an empty target
    method_cfg = method_config(method, loaded.name)
    check_method_overrides(method, hparams, method_cfg)
    kind = str(method_cfg["kind"])
    params = method_hparams(method_cfg, loaded.name, loaded.adapter.n_layers)
    params.update(hparams)
    if covariance is None and needs_statistics(kind, params) and not Path(str(params[STATS_KEY])).exists():
        raise _missing_statistics(method, loaded.name, Path(str(params[STATS_KEY])))
    editor = _editor(kind, loaded, params, covariance, templates)
    request = EditRequest(case_id=0, prompt=prompt, subject=subject, target_new=target_new, target_true=target_true,
                          subject_start=subject_start)
    with restored_after(editor.edited_parameters()) as snapshot:
        facts, update = editor.apply_with_update(request)
        yield EditResult(method, request, params, dict(facts), editor, update)
    if snapshot.changed():
        raise RuntimeError(f"{method}: the edited weights were not restored")  # restore copies every saved tensor


@torch.no_grad()
def next_tokens(model: LoadedModel, prompts: str | Sequence[str], k: int = 5) -> pd.DataFrame:
    """The ``k`` most probable next tokens after each prompt: prompt, rank, token_id, token, prob."""
    loaded = getattr(model, "loaded", model)
    rows = []
    for prompt in [prompts] if isinstance(prompts, str) else prompts:
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]], device=loaded.device)
        probs = torch.softmax(loaded.model(input_ids=ids).logits[0, -1].float(), dim=-1)
        top = probs.topk(k)
        for rank, (token_id, prob) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
            rows.append({"prompt": prompt, "rank": rank, "token_id": token_id,
                         "token": loaded.tokenizer.decode([token_id]), "prob": prob})
    return pd.DataFrame(rows)
