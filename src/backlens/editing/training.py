"""Helpers for methods that optimise something through a frozen model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from backlens.data.batching import pad_batch, pad_id
from backlens.editing.requests import continuation


@contextmanager
def trainable_only(model: nn.Module, parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Gradients flow only into ``parameters`` during the block; flags restored afterwards."""
    keep = {id(p) for p in parameters}
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(previous[name])


def teacher_forced_batch(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs for the NLL of each answer after its prompt.

    Returns (B, T) ids, (B, T) attention mask and (B, T) labels holding the answer token to
    predict at each position (-100 elsewhere).
    """
    items = [continuation(tokenizer, prompt, answer) for prompt, answer in pairs]
    ids, mask = pad_batch([c.prompt_ids + c.target_ids[:-1] for c in items], pad_id(tokenizer), device)
    labels = torch.full_like(ids, -100)
    for row, item in enumerate(items):
        first = len(item.prompt_ids) - 1
        labels[row, first : first + len(item.target_ids)] = torch.tensor(item.target_ids, device=device)
    return ids, mask, labels


def mean_answer_nll(logits_BxTxV: torch.Tensor, labels_BxT: torch.Tensor) -> torch.Tensor:
    """Mean over rows of each row's mean answer-token NLL."""
    log_probs = torch.log_softmax(logits_BxTxV.float(), dim=-1)
    mask = labels_BxT != -100
    picked = log_probs.gather(-1, labels_BxT.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_row = -(picked * mask).sum(dim=1) / mask.sum(dim=1)
    return per_row.mean()


class LogitsAbove:
    """Logits of fixed batches for a model that changes only in ``parameters`` between runs (an editor
    being trained, a weight being fine-tuned): the residual stream entering the lowest block holding one
    of them (``lowest_block``) is computed once per batch, without a graph, and each run starts there.
    The logits, and the gradients through them, equal the whole forward's bit for bit
    (tests/test_mend_training.py, tests/test_ft_from_layer.py). Where no block holds them all, or the
    family has no layer-range forward, each run is the whole model's forward."""

    def __init__(self, editor, parameters: list[torch.Tensor]):
        self.model, self.adapter = editor.model, editor.adapter
        self.lowest = editor.adapter.lowest_block(parameters)

    def __call__(self, ids_BxT: torch.Tensor, mask_BxT: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
        """A function giving the (B, T, V) logits of the model as it is when called (hooks included)."""
        if self.lowest is None:
            return lambda: self.model(input_ids=ids_BxT, attention_mask=mask_BxT).logits
        entering_BxTxd = self.adapter.residual_entering(ids_BxT, self.lowest)

        def logits() -> torch.Tensor:
            top_BxTxd = self.adapter.run_layers(entering_BxTxd, self.lowest, self.adapter.n_layers,
                                                padding_mask=mask_BxT, grad=torch.is_grad_enabled())
            return self.adapter.logit_lens(top_BxTxd)

        return logits
