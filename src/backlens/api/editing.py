"""One edit at a time, undone bit for bit: ``edit`` as a context manager.

    with edit(loaded, "{} is located in", "The Eiffel Tower", " Rome", method="shift") as result:
        print(result.facts)                      # what the editor reports (skipped, update norm, losses...)
        # ROME / MEMIT: result.update.layers[i].u_In, .v_Out, result.update.v_star_Out, result.update.losses
        next_tokens(loaded, ["The Eiffel Tower is located in"])
    # the edited weights are restored here, whatever happened inside

Many edits with one method: ``editor`` builds the method once (ROME's sampled templates and C^-1,
MEMIT's statistics, MEND's networks) and keeps it across edits; ``edit`` is one such edit.

    rome = editor(loaded, "rome")
    for subject, target in facts:
        with rome.edit("{} is located in", subject, target) as result:
            ...

Methods are the pipeline's editors (conf/method/<name>.yaml: shift, shift_centered, shift_whitened,
ft, ft_mlp0, rome, memit, and issue 26's r_rome, r_rome_nullspace, alphaedit, shift_centered_nullspace,
shift_whitened_nullspace), with their per-model hyper-parameters; keyword arguments override them.
ROME, MEMIT, the whitened shift and every null-space projection read the FF2 second moments from the
pipeline's statistics file unless ``covariance`` gives them as tensors.
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
from backlens.api.models import DEFAULT_MODEL, loaded_model
from backlens.project import files_root
from backlens.artifacts import artifact
from backlens.data.segments import place_subject
from backlens.editing.base import Editor, FactoredUpdate
# MissingStatisticsError: re-exported, the error a user of ``edit`` / ``editor`` catches.
from backlens.editing.methods import MissingStatisticsError, build_editor, load_method_config  # noqa: F401
from backlens.editing.requests import EditRequest
from backlens.editing.weights import restored_after
from backlens.models.loading import LoadedModel

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
    """The pipeline's FF2 statistics for a model (rule edit_covariance); outside a checkout, the same
    relative path under the cache folder (backlens.project.files_root)."""
    return files_root() / artifact("editing_stats", run=model_name)


def method_config(method: str, model_name: str) -> dict:
    """conf/method/<method>.yaml with the statistics path resolved for ``model_name``."""
    raw = load_method_config(method, f"editing method {method!r}")
    scope = OmegaConf.create({"paths": {"editing_stats": str(stats_file(model_name))}, "method": raw})
    return OmegaConf.to_container(scope, resolve=True)["method"]


def _request(loaded: LoadedModel, prompt_template: str, subject: str, target_new: str, target_true: str) -> EditRequest:
    prompt, subject_start = place_subject(prompt_template, subject)
    target_token(loaded.tokenizer, prompt, target_new)  # one clear error for an empty target
    return EditRequest(case_id=0, prompt=prompt, subject=subject, target_new=target_new, target_true=target_true,
                       subject_start=subject_start)


class EditorHandle:
    """One method's editor for one model, built once and kept across edits: ROME's sampled context
    templates and inverted C, MEMIT's scaled statistics, MEND's trained networks. ``edit`` applies
    one edit for a ``with`` block and restores the weights bit for bit on exit.

    ``method_cfg``: a conf/method/<name>.yaml mapping with its paths resolved (``method_config``, or
    a composed ``cfg.method``); ``overrides`` its hyper-parameters. The editor comes from
    ``editing.methods.build_editor``, the factory the pipeline's stages use too.
    """

    def __init__(self, loaded: LoadedModel, method_cfg: Mapping, overrides: Mapping | None = None, *,
                 covariance: torch.Tensor | Mapping[int, torch.Tensor] | None = None, templates: Sequence | None = None):
        self.loaded = loaded
        self.method = str(method_cfg["name"])
        self.editor, self.hparams = build_editor(loaded, method_cfg, overrides, covariance=covariance,
                                                 templates=templates)

    @contextmanager
    def edit(self, prompt_template: str, subject: str, target_new: str, *,
             target_true: str = "") -> Iterator[EditResult]:
        """Apply one edit in place for the ``with`` block (arguments as ``edit``'s)."""
        request = _request(self.loaded, prompt_template, subject, target_new, target_true)
        with restored_after(self.editor.edited_parameters()) as snapshot:
            facts, update = self.editor.apply_with_update(request)
            yield EditResult(self.method, request, self.hparams, dict(facts), self.editor, update)
        if snapshot.changed():
            # restore copies every saved tensor, so this cannot happen unless the snapshot missed one
            raise RuntimeError(f"{self.method}: the edited weights were not restored")


def editor(model: str | LoadedModel = DEFAULT_MODEL, method: str = "shift", *,
           covariance: torch.Tensor | Mapping[int, torch.Tensor] | None = None, templates: Sequence | None = None,
           device: str | None = None, dtype: str | None = None, **hparams: object) -> EditorHandle:
    """The method's editor for ``model``, built once for many edits (``handle.edit(...)``); arguments as ``edit``'s."""
    loaded = loaded_model(model, device, dtype)
    return EditorHandle(loaded, method_config(method, loaded.name), hparams, covariance=covariance, templates=templates)


@contextmanager
def edit(model: str | LoadedModel, prompt_template: str, subject: str, target_new: str, method: str = "shift", *,
         target_true: str = "", covariance: torch.Tensor | Mapping[int, torch.Tensor] | None = None,
         templates: Sequence | None = None, device: str | None = None, dtype: str | None = None,
         **hparams: object) -> Iterator[EditResult]:
    """Apply one edit in place for the ``with`` block; the edited weights are restored bit for bit on exit.

    ``prompt_template``: the edit prompt, ``{}`` marking the subject's slot (or the prompt with the
    subject written out). ``hparams`` override conf/method/<method>.yaml (e.g. ``layer=20, eta=0.5``;
    ``stats_path=`` another statistics file). ``covariance``: the FF2 second moment (d_ff, d_ff) of the
    edited layer, or {layer: tensor} (MEMIT), instead of the statistics file; ``templates``: ROME's
    flat context-template list or MEMIT's groups instead of sampled ones. ``device``, ``dtype``: where a
    model given by name is loaded (default cpu, float32; ``load``). Builds the editor for this one edit;
    ``editor`` keeps it for many.
    """
    loaded = loaded_model(model, device, dtype)
    _request(loaded, prompt_template, subject, target_new, target_true)  # bad input fails before the editor is built
    handle = editor(loaded, method, covariance=covariance, templates=templates, **hparams)
    with handle.edit(prompt_template, subject, target_new, target_true=target_true) as result:
        yield result


@torch.no_grad()
def next_tokens(model: LoadedModel, prompts: str | Sequence[str], k: int = 5) -> pd.DataFrame:
    """The ``k`` most probable next tokens after each prompt: prompt, rank, token_id, token, prob."""
    loaded = loaded_model(model)
    rows = []
    for prompt in [prompts] if isinstance(prompts, str) else prompts:
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]], device=loaded.device)
        probs = torch.softmax(loaded.model(input_ids=ids).logits[0, -1].float(), dim=-1)
        top = probs.topk(k)
        for rank, (token_id, prob) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
            rows.append({"prompt": prompt, "rank": rank, "token_id": token_id,
                         "token": loaded.tokenizer.decode([token_id]), "prob": prob})
    return pd.DataFrame(rows)
