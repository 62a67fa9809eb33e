"""Forward pass shift (paper section 6): W_ff2 += eta * outer(key, value) from one forward pass.

The paper's recipe (``direction=embedding``, ``key=activation``) uses FF2's own input a_n at the
last prompt token as the key and the target's input embedding e_t as the value. Two variants
(issue 17), each still one forward pass and no gradient:

- ``direction=centered``: the value is e_t - mean_j e_j. On an anisotropic embedding matrix
  (SmolLM2) the raw e_t, read through the final norm and unembedding, promotes the same few tokens
  whatever t is; removing the common mean leaves what distinguishes t.
- ``key=whitened``: the key is C^-1 a_n scaled so that its dot product with a_n is |a_n|^2 (the
  paper's update then writes the same amount on the edit prompt), with C the FF2 input second
  moment of the edit_covariance rule, as ROME whitens its key. Prompts whose activations share
  a_n's common directions (same relation, other subject) are edited less.

With ``nullspace_projection`` (issue 26; editing/null_space.py) either key is projected onto the null
space of the FF2 second moment (AlphaEdit's P) and rescaled so that its dot product with a_n is
unchanged: keys in the preserved span receive no change, the edit prompt the same write.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from backlens.data.segments import first_target_token
from backlens.editing.base import Editor
from backlens.editing.covariance import load_second_moment
from backlens.editing.null_space import null_space_from_hparams, projected_key, projection_enabled
from backlens.editing.requests import EditRequest
from backlens.errors import ConfigError
from backlens.models.hooks import record_module_io

DIRECTIONS = ("embedding", "centered")
KEYS = ("activation", "whitened")


def shift_value(input_embedding_VxD: torch.Tensor, target_id: int, mean_embedding_D: torch.Tensor | None) -> torch.Tensor:
    """(d,) the value vector written for target ``target_id``: e_t, or e_t - mean_j e_j when the mean is given."""
    embedding_D = input_embedding_VxD[target_id]
    return embedding_D if mean_embedding_D is None else embedding_D - mean_embedding_D


def whitened_key(activation_In: torch.Tensor, inverse_mom2_InxIn: torch.Tensor) -> torch.Tensor:
    """C^-1 a scaled so that (C^-1 a) . a = |a|^2."""
    key_In = inverse_mom2_InxIn @ activation_In
    return key_In * (activation_In @ activation_In) / (key_In @ activation_In)


class ForwardPassShift(Editor):
    """hparams: ``layer`` (FF2 to edit), ``eta`` (step size), ``skip_if_predicted``, ``direction``
    (embedding | centered), ``key`` (activation | whitened), ``nullspace_projection`` with
    ``nullspace_energy`` (our variants) or ``nullspace_threshold`` and, for the whitened key or the
    projection, ``stats_path``.

    a_n is FF2's input (the d_ff activation) at the last prompt token, t the first token of
    target_new. ``second_moment`` (d_ff, d_ff) replaces the statistics file when given.
    """

    def __init__(self, loaded, hparams: Mapping, *, second_moment: torch.Tensor | None = None):
        super().__init__(loaded, hparams)
        self.direction = str(hparams.get("direction", "embedding"))
        self.key = str(hparams.get("key", "activation"))
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"shift direction={self.direction!r} is unknown; choose one of {', '.join(DIRECTIONS)}")
        if self.key not in KEYS:
            raise ConfigError(f"shift key={self.key!r} is unknown; choose one of {', '.join(KEYS)}")
        # The embedding matrix is never edited (shift edits FF2), so its mean is computed once.
        self.mean_embedding = self.adapter.input_embedding.detach().mean(0) if self.direction == "centered" else None
        self.inverse_mom2 = None
        self.null_space = None
        if self.key == "whitened" or projection_enabled(hparams):
            mom2 = second_moment if second_moment is not None else load_second_moment(hparams["stats_path"], int(hparams["layer"]))
            self.null_space = null_space_from_hparams(hparams, mom2, int(hparams["layer"]), self.device)
        if self.key == "whitened":
            weight_dtype = self.adapter.ff2_site(int(hparams["layer"])).weight.dtype
            self.inverse_mom2 = torch.linalg.inv(mom2.double()).to(self.device, weight_dtype)

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(int(self.hparams["layer"])).weight]

    def shift_factors(self, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
        """(key_In, value_Out) of the unit-eta update, whether the model already predicts the target, and t."""
        site = self.adapter.ff2_site(int(self.hparams["layer"]))
        target_id = first_target_token(self.tokenizer, request.prompt, request.target_new)
        with torch.no_grad(), record_module_io({"ff2": site.module}, outputs=False) as record:
            logits = self.model(input_ids=self.prompt_ids(request.prompt)).logits
        already_predicted = int(logits[0, -1].argmax()) == target_id
        activation_In = record.inputs["ff2"][0, -1].detach()
        key_In = activation_In if self.inverse_mom2 is None else whitened_key(activation_In, self.inverse_mom2)
        if self.null_space is not None:
            key_In = projected_key(self.null_space, key_In, activation_In)
        embedding = self.adapter.input_embedding.detach()
        value_Out = shift_value(embedding, target_id, self.mean_embedding).to(activation_In.dtype)
        return key_In, value_Out, already_predicted, target_id

    def shift_update(self, request: EditRequest) -> tuple[torch.Tensor, bool, int]:
        """The update in the module's weight layout, whether the model already predicts the target, and t."""
        key_In, value_Out, already_predicted, target_id = self.shift_factors(request)
        site = self.adapter.ff2_site(int(self.hparams["layer"]))
        update = float(self.hparams["eta"]) * site.gradient_from_factors(key_In[None], value_Out[None])
        return update, already_predicted, target_id

    def apply(self, request: EditRequest) -> dict[str, object]:
        update, already_predicted, target_id = self.shift_update(request)
        if already_predicted and bool(self.hparams.get("skip_if_predicted", True)):
            return {"skipped": True, "target_token": target_id}
        with torch.no_grad():
            self.edited_parameters()[0].add_(update.to(self.edited_parameters()[0].dtype))
        return {"skipped": False, "target_token": target_id, "update_norm": float(update.norm())}
