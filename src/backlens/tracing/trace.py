"""Causal trace of one fact: clean, corrupted and all restored runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from backlens.models.adapters import ArchitectureAdapter
from backlens.tracing.restore import restore_token, restored_rows
from backlens.tracing.runs import corrupted_embeddings, recorded_run


SEVERED_AT = ("last_subject", "all")


@dataclass(frozen=True)
class TraceSettings:
    """``kinds`` are traced at every token; ``severed_kinds`` at the last subject token only
    (ROME's severed comparison, Fig. 3) unless ``severed_at="all"``."""

    kinds: tuple[str, ...]
    severed_kinds: tuple[str, ...]
    noise_std: float
    noise_samples: int
    window: int
    max_rows: int  # restored runs per batch; bounds memory, not results
    severed_at: str = "last_subject"

    def __post_init__(self) -> None:
        if self.severed_at not in SEVERED_AT:
            raise ValueError(f"tracing.severed_at={self.severed_at!r}; use one of {', '.join(SEVERED_AT)}")
        if self.noise_samples < 1:
            raise ValueError(f"tracing.noise_samples={self.noise_samples}; use at least 1")
        if self.window < 1:
            raise ValueError(f"tracing.window={self.window}; use at least 1")

    @property
    def all_kinds(self) -> tuple[str, ...]:
        return (*self.kinds, *self.severed_kinds)


@dataclass
class FactTrace:
    """``restored[k, t, l]``: P(answer) averaged over noise samples when kind k is restored at (t, l).

    NaN where a kind was not traced (severed kinds away from the last subject token).
    """

    kinds: tuple[str, ...]
    p_clean: float
    p_corrupted: float
    restored: np.ndarray
    token_layers_computed: int
    token_layers_full: int  # what one full forward per traced cell (prefix tokens included) would compute
    runs_computed: int  # restored runs (one per noise sample and cell) that were computed
    runs_full: int  # restored runs a full recomputation would compute (prefix tokens included)

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupted

    @property
    def indirect_effects(self) -> np.ndarray:
        return self.restored - self.p_corrupted


@torch.no_grad()
def trace_fact(
    adapter: ArchitectureAdapter,
    input_ids: list[int] | tuple[int, ...],
    subject_start: int,
    subject_end: int,
    answer_id: int,
    settings: TraceSettings,
    generator: torch.Generator,
    *,
    progress: bool = False,
) -> FactTrace:
    """Trace every (kind, token, layer) of one prompt whose subject is tokens [subject_start, subject_end);
    ``progress`` shows a bar over the traced tokens."""
    device = adapter.model.device
    ids = torch.tensor([list(input_ids)], device=device)
    clean_embeddings = adapter.token_embeddings(ids)
    clean = recorded_run(adapter, clean_embeddings, answer_id)
    noisy = corrupted_embeddings(
        clean_embeddings, subject_start, subject_end, settings.noise_samples, settings.noise_std, generator
    )
    corrupted = recorded_run(adapter, noisy, answer_id)
    n_layers, n_tokens = adapter.n_layers, ids.shape[1]
    p_corrupted = corrupted.mean_answer_prob
    kinds = settings.all_kinds
    every_token_rows = restored_rows(settings.kinds, n_layers, settings.noise_samples, settings.window)
    all_rows = restored_rows(kinds, n_layers, settings.noise_samples, settings.window)
    restored = np.full((len(kinds), n_tokens, n_layers), p_corrupted)
    severed = [kinds.index(kind) for kind in settings.severed_kinds]
    if settings.severed_at == "last_subject":
        restored[severed, :, :] = np.nan
        restored[severed, subject_end - 1, :] = p_corrupted
    kind_index = {kind: i for i, kind in enumerate(kinds)}
    sums = np.zeros_like(restored)
    token_layers = token_layers_full = runs = 0
    # Tokens before the subject see no noise, so restoring them changes nothing: they keep p_corrupted.
    for token in tqdm(range(subject_start, n_tokens), desc="trace", unit="token", disable=not progress):
        severed_here = settings.severed_at == "all" or token == subject_end - 1
        rows = all_rows if severed_here else every_token_rows
        token_layers_full += len(rows) * n_tokens * n_layers
        runs += len(rows)
        for chunk_start in range(0, len(rows), settings.max_rows):
            chunk = rows[chunk_start : chunk_start + settings.max_rows]
            probs, computed = restore_token(adapter, chunk, token, clean, corrupted, answer_id, settings.window)
            token_layers += computed
            for row, prob in zip(chunk, probs.tolist()):
                sums[kind_index[row.kind], token, row.layer] += prob
        traced_here = [kind_index[kind] for kind in (kinds if severed_here else settings.kinds)]
        restored[traced_here, token, :] = sums[traced_here, token, :] / settings.noise_samples
    prefix_rows = len(all_rows if settings.severed_at == "all" else every_token_rows) * subject_start
    return FactTrace(
        kinds=kinds,
        p_clean=clean.mean_answer_prob,
        p_corrupted=p_corrupted,
        restored=restored,
        token_layers_computed=token_layers,
        token_layers_full=token_layers_full + prefix_rows * n_tokens * n_layers,
        runs_computed=runs,
        runs_full=runs + prefix_rows,
    )


def model_flops(adapter: ArchitectureAdapter, token_layers: int, runs: int) -> float:
    """Matrix-multiply FLOPs: 2 x weights per token per block, plus one unembedding per run.

    Attention scores (2 x positions x d per token per layer) are left out: under 1% here.
    """
    block_weights = sum(p.numel() for p in adapter.blocks[0].parameters() if p.dim() == 2)
    vocab_size, d_model = adapter.unembedding.shape
    return 2.0 * (token_layers * block_weights + runs * vocab_size * d_model)
