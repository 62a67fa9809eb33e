"""Table 7's held-out perplexity: exp(mean next-token NLL) of a model over fixed token blocks.

``perplexity`` runs the whole model. ``HeldoutPerplexity`` serves the cases of one editor: an edit
changes weights of some blocks only, so the residual stream entering the lowest changed block is
the unedited model's in every case. It is computed once per layer, and each case runs only the
blocks from there on, the final norm and the unembedding (the adapter's ``run_layers`` and
``logit_lens``). A case that changed nothing (the unedited row, a skipped edit) gets the unedited
model's perplexity, computed once; a change outside every block (embeddings, final norm,
unembedding) or a family without a layer-range forward runs the whole model. The same arithmetic
grouped otherwise: equal to ``perplexity`` within float32 round-off (tests/test_perplexity.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from backlens.editing.base import Editor


def _nll_sum(logits_BxT1xV: torch.Tensor, ids_BxT: torch.Tensor) -> float:
    """Summed NLL of each block's next tokens from the logits of every position but the last."""
    logits = logits_BxT1xV.float()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids_BxT[:, 1:].reshape(-1),
                                                   reduction="sum"))


def _batches(editor: Editor, blocks_BxT: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(blocks_BxT), batch_size):
        yield blocks_BxT[start : start + batch_size].to(editor.device)


def _from_total(total_nll: float, blocks_BxT: torch.Tensor) -> float:
    return math.exp(total_nll / (blocks_BxT.shape[0] * (blocks_BxT.shape[1] - 1)))


@torch.no_grad()
def perplexity(editor: Editor, blocks_BxT: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) of the model as it is, over fixed token blocks: the whole forward."""
    total = sum(_nll_sum(editor.model(input_ids=ids).logits[:, :-1], ids)
                for ids in _batches(editor, blocks_BxT, batch_size))
    return _from_total(total, blocks_BxT)


class HeldoutPerplexity:
    """``perplexity`` over ``blocks_BxT`` of one editor's edited models, what the edits leave as it
    was computed once. Valid while every weight outside those an edit changed is the unedited
    model's: ``evaluate_editor`` restores each edit before the next case (not for sequential edits)."""

    def __init__(self, editor: Editor, blocks_BxT: torch.Tensor, batch_size: int = 8):
        self.editor = editor
        self.blocks_BxT = blocks_BxT
        self.batch_size = batch_size
        self._unedited: float | None = None
        # Layer -> the residual stream entering it, one (b, T, d) tensor per batch of blocks.
        self._entering: dict[int, list[torch.Tensor]] = {}

    def start_block(self, changed: Sequence[torch.Tensor]) -> int | None:
        """The block a case that changed ``changed`` is recomputed from; None: the whole forward."""
        return self.editor.adapter.lowest_block(list(changed))

    def __call__(self, changed: Sequence[torch.Tensor]) -> float:
        """The perplexity of the model as it is now, ``changed`` being every parameter that differs
        from the unedited model (``WeightSnapshot.changed_parameters``)."""
        if not changed:
            if self._unedited is None:
                self._unedited = perplexity(self.editor, self.blocks_BxT, self.batch_size)
            return self._unedited
        start = self.start_block(changed)
        if start is None:
            return perplexity(self.editor, self.blocks_BxT, self.batch_size)
        return self.from_block(start)

    @torch.no_grad()
    def from_block(self, start: int) -> float:
        """The perplexity with blocks ``start`` .. last run on the cached stream entering ``start``."""
        adapter = self.editor.adapter
        total = 0.0
        for ids, entering in zip(_batches(self.editor, self.blocks_BxT, self.batch_size), self.entering(start)):
            # The last position predicts nothing: unembedding only the others spares copying the
            # logits into a contiguous tensor (the logits themselves are the same).
            hidden = adapter.run_layers(entering, start, adapter.n_layers)
            total += _nll_sum(adapter.logit_lens(hidden[:, :-1]), ids)
        return _from_total(total, self.blocks_BxT)

    @torch.no_grad()
    def entering(self, layer: int) -> list[torch.Tensor]:
        """The residual stream entering block ``layer``, computed on first use: the blocks below it
        and the embeddings must be the unedited model's then (``__call__`` asks for no other)."""
        if layer not in self._entering:
            self._entering[layer] = [self.editor.adapter.residual_entering(ids, layer)
                                     for ids in _batches(self.editor, self.blocks_BxT, self.batch_size)]
        return self._entering[layer]
