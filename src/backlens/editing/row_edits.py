"""Many edited models in one batch: each case's weight change applied to its batch rows through a hook.

An edit that changed one or more FF2 weights by a rank-one matrix each (the forward pass shift,
ROME, MEMIT for one request) is equivalent to adding (x_b . u_b) v_b to that module's output for
the rows b of its case, x_b being the module's input: W + u v^T maps x to x W + (x . u) v. An edit
of higher rank to FF2 modules (FT-L, MEND) adds x_b dW_b (+ its bias change) to the rows of its case
(``DenseChange``: one matrix product per case and module). So the generation of several cases
shares one batch, each row with its own case's change; the numbers are those of the edited weights
up to float round-off (tests/test_editing_batched.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from backlens.editing.weights import WeightSnapshot
from backlens.models.adapters import ArchitectureAdapter
from backlens.models.hooks import add_to_outputs
from backlens.models.sites import LinearSite

# A change is taken as rank one when u v^T reproduces it to this fraction of its largest entry
# (the float32 round-off of W + u v^T - W is ~1e-7 of |W|; a rank-two change misses by O(1)).
RANK_ONE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class RankOneChange:
    """``module``'s weight changed by u v^T in (in, out) terms: its output gains (x . u_In) v_Out."""

    module: nn.Module
    u_In: torch.Tensor
    v_Out: torch.Tensor

    def addition(self, inputs_xIn: torch.Tensor) -> torch.Tensor:
        return (inputs_xIn @ self.u_In)[..., None] * self.v_Out


@dataclass(frozen=True)
class DenseChange:
    """An FF2 module's weight changed by ``weight_delta`` (the weight's layout; None: unchanged) and its
    bias by ``bias_delta`` (None: unchanged), of any rank: its output gains x dW + db."""

    site: LinearSite
    weight_delta: torch.Tensor | None
    bias_delta: torch.Tensor | None

    @property
    def module(self) -> nn.Module:
        return self.site.module

    def addition(self, inputs_xIn: torch.Tensor) -> torch.Tensor:
        if self.weight_delta is None:
            return self.bias_delta.expand(*inputs_xIn.shape[:-1], -1)
        gained = self.site.map_inputs(inputs_xIn, self.weight_delta)
        return gained if self.bias_delta is None else gained + self.bias_delta


RowChange = RankOneChange | DenseChange


def rank_one_changes(snapshot: WeightSnapshot, adapter: ArchitectureAdapter) -> list[RankOneChange] | None:
    """The edit's changes as rank-one FF2 changes, or None when some change is not one (a bias, a
    weight other than FF2's, a change of higher rank: FT, MEND)."""
    sites = {id(site.weight): site for site in (adapter.ff2_site(layer) for layer in range(adapter.n_layers))}
    changes = []
    for parameter, delta in snapshot.changes():
        site = sites.get(id(parameter))
        if site is None:
            return None
        change_InxOut = delta if site.layout == "in_out" else delta.T
        row = int(change_InxOut.norm(dim=1).argmax())
        v_Out = change_InxOut[row]
        column = int(v_Out.abs().argmax())
        u_In = change_InxOut[:, column] / v_Out[column]
        if float((change_InxOut - torch.outer(u_In, v_Out)).abs().max()) > RANK_ONE_TOLERANCE * float(change_InxOut.abs().max()):
            return None
        changes.append(RankOneChange(site.module, u_In, v_Out))
    return changes


def dense_changes(snapshot: WeightSnapshot, adapter: ArchitectureAdapter) -> list[DenseChange] | None:
    """The edit's changes as changes of FF2 weights and biases of any rank (FT-L, MEND), one per
    module, or None when some parameter outside every FF2 module changed."""
    sites = {id(site.module): site for site in (adapter.ff2_site(layer) for layer in range(adapter.n_layers))}
    owners = {}
    for site in sites.values():
        owners[id(site.weight)] = (site, "weight")
        if getattr(site.module, "bias", None) is not None:
            owners[id(site.module.bias)] = (site, "bias")
    deltas: dict[int, dict[str, torch.Tensor]] = {}
    for parameter, delta in snapshot.changes():
        if id(parameter) not in owners:
            return None
        site, kind = owners[id(parameter)]
        deltas.setdefault(id(site.module), {})[kind] = delta
    return [DenseChange(sites[key], parts.get("weight"), parts.get("bias")) for key, parts in deltas.items()]


def row_changes(snapshot: WeightSnapshot, adapter: ArchitectureAdapter) -> list[RowChange] | None:
    """The edit's changes for ``per_row_changes``: rank-one where every change is (the cheaper hook),
    otherwise dense FF2 changes; None when the edit changed something else."""
    changes = rank_one_changes(snapshot, adapter)
    return changes if changes is not None else dense_changes(snapshot, adapter)


def _grouped_addition(rows_and_changes: list[tuple[torch.Tensor, RowChange]]):
    """A module's addition for rows grouped by change: each group's rows gain their change's addition."""

    def addition(x_BxTxIn: torch.Tensor) -> torch.Tensor:
        total = None
        for rows, change in rows_and_changes:
            part = change.addition(x_BxTxIn[rows])
            if total is None:
                total = x_BxTxIn.new_zeros(x_BxTxIn.shape[0], *part.shape[1:])
            total[rows] = part
        return total

    return addition


@contextmanager
def per_row_changes(changes_per_row: Sequence[Sequence[RowChange]]) -> Iterator[None]:
    """During the block, batch row b of every forward pass runs with ``changes_per_row[b]`` applied
    (rows without a change of some module run with its unchanged weight)."""
    modules = {id(c.module): c.module for row in changes_per_row for c in row}
    additions = {}
    for key, module in modules.items():
        if not all(isinstance(c, RankOneChange) for row in changes_per_row for c in row if id(c.module) == key):
            # Rows grouped by their change (a case's rows share one): one product per case.
            groups: dict[int, tuple[list[int], RowChange]] = {}
            for b, row in enumerate(changes_per_row):
                for change in row:
                    if id(change.module) == key:
                        groups.setdefault(id(change), ([], change))[0].append(b)
            additions[module] = _grouped_addition([(torch.tensor(rows), change) for rows, change in groups.values()])
            continue
        first = next(c for row in changes_per_row for c in row if id(c.module) == key)
        u_BxIn = first.u_In.new_zeros(len(changes_per_row), first.u_In.shape[0])
        v_BxOut = first.v_Out.new_zeros(len(changes_per_row), first.v_Out.shape[0])
        for b, row in enumerate(changes_per_row):
            for change in row:
                if id(change.module) == key:
                    u_BxIn[b], v_BxOut[b] = change.u_In, change.v_Out
        additions[module] = lambda x_BxTxIn, u=u_BxIn, v=v_BxOut: torch.einsum("bti,bi->bt", x_BxTxIn, u)[..., None] * v[:, None, :]
    with add_to_outputs(additions):
        yield
