"""Exact weight restoration: every edit is undone bit for bit before the next case."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightSnapshot:
    """Copies of some parameters, written back with ``restore`` (bit-identical)."""

    def __init__(self, parameters: Iterable[nn.Parameter]):
        unique = {id(p): p for p in parameters}
        self._saved = [(p, p.detach().clone()) for p in unique.values()]

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, saved in self._saved:
                parameter.copy_(saved)

    def changes(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Each changed parameter with its change (current minus saved)."""
        return [(p, p.detach() - saved) for p, saved in self._saved if not torch.equal(p.detach(), saved)]

    def changed_parameters(self) -> list[nn.Parameter]:
        """The snapshot's parameters that differ from their saved copy."""
        return [self._saved[i][0] for i in self.changed()]

    def changed(self) -> list[int]:
        """Positions of the snapshot's parameters that differ from their saved copy."""
        return [i for i, (p, saved) in enumerate(self._saved) if not torch.equal(p.detach(), saved)]


@contextmanager
def restored_after(parameters: Iterable[nn.Parameter]) -> Iterator[WeightSnapshot]:
    """Run the block (an edit and its evaluation); restore the parameters even if it fails."""
    snapshot = WeightSnapshot(parameters)
    try:
        yield snapshot
    finally:
        snapshot.restore()


@contextmanager
def weights_added(parameter: nn.Parameter, delta: torch.Tensor) -> Iterator[WeightSnapshot]:
    """``parameter`` + ``delta`` for the block (an update applied without an editor, e.g. one step of a
    sweep over its scale), then the saved weights back bit for bit, even if the block fails."""
    with restored_after([parameter]) as snapshot:
        with torch.no_grad():
            parameter.add_(delta)
        yield snapshot
