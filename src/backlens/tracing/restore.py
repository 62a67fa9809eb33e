"""Restored runs that recompute only what a restoration can change.

Restoring a clean state at (token t, layer l) leaves every position before t untouched
(causal attention) and every layer below the first patched one at its corrupted value.
So a restored run starts at its first patched layer, carries only positions t.., and
reads the earlier positions' keys/values from the corrupted run. All layers, kinds and
noise samples of one token go through the blocks together as one batch: a row joins the
batch at the layer where it first differs from the corrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backlens.models.adapters import ArchitectureAdapter
from backlens.models.hooks import replace_outputs
from backlens.tracing.runs import KeyValuePrefix, RecordedRun, answer_probabilities

# residual: restore block l's output. mlp / attention: restore that output in a window of
# layers around l. *_severed: restore block l's output while the MLP (attention) output at
# the same token stays at its corrupted value in every later layer (ROME's Fig. 3 variant).
KINDS: tuple[str, ...] = ("residual", "mlp", "attention", "residual_mlp_severed", "residual_attention_severed")
_SITE_OF_KIND = {"mlp": "mlp", "attention": "attention"}
_FROZEN_SITE_OF_KIND = {"residual_mlp_severed": "mlp", "residual_attention_severed": "attention"}


def restore_window(layer: int, window: int, n_layers: int) -> range:
    """ROME's window of ``window`` layers centred on ``layer``, clipped to the model."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@dataclass(frozen=True)
class RestoredRow:
    """One restored run: restore ``kind`` around ``layer`` at the token, noise sample ``sample``."""

    kind: str
    layer: int
    sample: int
    entry_layer: int  # first block this run computes; blocks below keep their corrupted values


def restored_rows(kinds: tuple[str, ...], n_layers: int, n_samples: int, window: int) -> list[RestoredRow]:
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown tracing kinds {unknown}; use some of {', '.join(KINDS)} (tracing.kinds)")
    rows = []
    for kind in kinds:
        for layer in range(n_layers):
            entry = restore_window(layer, window, n_layers).start if kind in _SITE_OF_KIND else layer + 1
            rows.extend(RestoredRow(kind, layer, sample, entry) for sample in range(n_samples))
    return sorted(rows, key=lambda row: row.entry_layer)


@dataclass(frozen=True)
class _RowTable:
    """The rows' fields as tensors, so each block's patches are chosen without a Python loop."""

    layer: torch.Tensor
    sample: torch.Tensor
    window_start: torch.Tensor
    window_stop: torch.Tensor
    restores: dict[str, torch.Tensor]  # site -> rows restoring that site's clean output
    freezes: dict[str, torch.Tensor]  # site -> rows holding that site at its corrupted output

    @classmethod
    def build(cls, rows: list[RestoredRow], window: int, n_layers: int, device: torch.device) -> _RowTable:
        def column(values) -> torch.Tensor:
            return torch.tensor(list(values), device=device)

        windows = [restore_window(row.layer, window, n_layers) for row in rows]
        return cls(
            layer=column(row.layer for row in rows),
            sample=column(row.sample for row in rows),
            window_start=column(w.start for w in windows),
            window_stop=column(w.stop for w in windows),
            restores={s: column(_SITE_OF_KIND.get(r.kind) == s for r in rows) for s in ("attention", "mlp")},
            freezes={s: column(_FROZEN_SITE_OF_KIND.get(r.kind) == s for r in rows) for s in ("attention", "mlp")},
        )

    def site_patch(self, n_active: int, block: int, site: str, token: int, clean: RecordedRun, corrupted: RecordedRun):
        """Replacement of ``site``'s output at the token in ``block`` for the first n_active rows, or None."""
        active = slice(0, n_active)
        in_window = (self.window_start[active] <= block) & (block < self.window_stop[active])
        restore = self.restores[site][active] & in_window
        freeze = self.freezes[site][active] & (self.layer[active] < block)
        if not bool(restore.any() or freeze.any()):
            return None
        clean_state = getattr(clean, site)[block, 0, token]
        frozen_states = getattr(corrupted, site)[block, self.sample[active][freeze], token]

        def patch(output_BxSxd: torch.Tensor) -> torch.Tensor:
            patched = output_BxSxd.clone()
            patched[restore, 0] = clean_state
            patched[freeze, 0] = frozen_states
            return patched

        return patch


def _entry_state(row: RestoredRow, token: int, clean: RecordedRun, corrupted: RecordedRun) -> torch.Tensor:
    """(T - token, d) stream entering block ``row.entry_layer`` for positions token.."""
    state = corrupted.residual[row.entry_layer, row.sample, token:]
    if row.kind in _SITE_OF_KIND:
        return state
    state = state.clone()
    state[0] = clean.residual[row.layer + 1, 0, token]
    return state


@torch.no_grad()
def restore_token(
    adapter: ArchitectureAdapter,
    rows: list[RestoredRow],
    token: int,
    clean: RecordedRun,
    corrupted: RecordedRun,
    answer_id: int,
    window: int,
) -> tuple[torch.Tensor, int]:
    """P(answer) of each restored run (len(rows),) and the token-layers computed.

    ``rows`` must be sorted by entry layer (as ``restored_rows`` returns them).
    """
    n_layers = adapter.n_layers
    entries = [row.entry_layer for row in rows]
    if entries != sorted(entries):
        raise ValueError("restore_token: rows must be sorted by entry_layer")
    hidden = torch.stack([_entry_state(row, token, clean, corrupted) for row in rows])
    n_positions = hidden.shape[1]
    table = _RowTable.build(rows, window, n_layers, hidden.device)
    samples = table.sample
    token_layers = 0
    for block in range(n_layers):
        n_active = sum(1 for entry in entries if entry <= block)
        if n_active == 0:
            continue
        prefix = None
        if token > 0:
            prefix = KeyValuePrefix(
                {block: corrupted.keys[block][samples[:n_active], :, :token]},
                {block: corrupted.values[block][samples[:n_active], :, :token]},
            )
        patches = {}
        for site, module in (("attention", adapter.attention(block)), ("mlp", adapter.mlp(block))):
            patch = table.site_patch(n_active, block, site, token, clean, corrupted)
            if patch is not None:
                patches[module] = patch
        with replace_outputs(patches):
            hidden[:n_active] = adapter.run_layers(
                hidden[:n_active], block, block + 1, first_position=token, key_values=prefix
            )
        token_layers += n_active * n_positions
    return answer_probabilities(adapter, hidden[:, -1], answer_id), token_layers
