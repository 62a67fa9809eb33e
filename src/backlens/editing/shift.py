"""Forward pass shift (paper section 6): W_ff2 += eta * outer(a_n, e_t) from one forward pass."""

from __future__ import annotations

import torch
from torch import nn

from backlens.data.segments import first_target_token
from backlens.editing.base import Editor
from backlens.editing.requests import EditRequest
from backlens.models.hooks import record_module_io


class ForwardPassShift(Editor):
    """hparams: ``layer`` (FF2 to edit), ``eta`` (step size), ``skip_if_predicted``.

    a_n is FF2's input (the d_ff activation) at the last prompt token, e_t the input
    embedding of target_new's first token. No gradient and no normalisation.
    """

    def edited_parameters(self) -> list[nn.Parameter]:
        return [self.adapter.ff2_site(int(self.hparams["layer"])).weight]

    def shift_update(self, request: EditRequest) -> tuple[torch.Tensor, bool, int]:
        """The update in the module's weight layout, whether the model already predicts the target, and t."""
        site = self.adapter.ff2_site(int(self.hparams["layer"]))
        target_id = first_target_token(self.tokenizer, request.prompt, request.target_new)
        with torch.no_grad(), record_module_io({"ff2": site.module}, outputs=False) as record:
            logits = self.model(input_ids=self.prompt_ids(request.prompt)).logits
        already_predicted = int(logits[0, -1].argmax()) == target_id
        activation_In = record.inputs["ff2"][0, -1].detach()
        embedding_Out = self.adapter.input_embedding[target_id].detach().to(activation_In.dtype)
        update = float(self.hparams["eta"]) * site.gradient_from_factors(activation_In[None], embedding_Out[None])
        return update, already_predicted, target_id

    def apply(self, request: EditRequest) -> dict[str, object]:
        update, already_predicted, target_id = self.shift_update(request)
        if already_predicted and bool(self.hparams.get("skip_if_predicted", True)):
            return {"skipped": True, "target_token": target_id}
        with torch.no_grad():
            self.edited_parameters()[0].add_(update.to(self.edited_parameters()[0].dtype))
        return {"skipped": False, "target_token": target_id, "update_norm": float(update.norm())}
