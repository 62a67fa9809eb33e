"""Clean and corrupted runs that keep every state a restored run may need.

A run goes block by block through ``adapter.run_layers`` and records, per layer, the
residual stream entering the block, the attention and MLP outputs, and the attention
keys/values, so restored runs can start at any (token, layer) from these states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backlens.models.adapters import ArchitectureAdapter
from backlens.models.hooks import record_module_io


class KeyValueRecorder:
    """Cache stand-in that stores each layer's keys/values (B, heads, T, head_dim) and returns them."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states


class KeyValuePrefix:
    """Cache stand-in that puts fixed earlier positions' keys/values before the new ones.

    ``keys[layer]`` / ``values[layer]``: (B, heads, first_position, head_dim), one row per
    batch row of the restored run.
    """

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys = torch.cat([self.keys[layer_idx], key_states], dim=2)
        values = torch.cat([self.values[layer_idx], value_states], dim=2)
        return keys, values


@dataclass
class RecordedRun:
    """Every state of one batched run over the whole prompt.

    ``residual``: (L + 1, B, T, d); entry l is the stream entering block l, entry L the
    last block's output. ``attention`` / ``mlp``: (L, B, T, d) the attention and MLP modules'
    outputs (Gemma 3 normalises each before adding it to the stream; restoring the module's
    output restores what it adds).
    ``keys`` / ``values``: per layer (B, heads, T, head_dim). ``answer_probs``: (B,).
    """

    residual: torch.Tensor
    attention: torch.Tensor
    mlp: torch.Tensor
    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    answer_probs: torch.Tensor

    @property
    def mean_answer_prob(self) -> float:
        return float(self.answer_probs.mean())


def answer_probabilities(adapter: ArchitectureAdapter, last_hidden_Bxd: torch.Tensor, answer_id: int) -> torch.Tensor:
    """(B,) probability of ``answer_id`` from the last position's final residual stream."""
    logits = adapter.logit_lens(last_hidden_Bxd).float()
    return torch.softmax(logits, dim=-1)[:, answer_id]


@torch.no_grad()
def recorded_run(adapter: ArchitectureAdapter, token_embeddings_BxTxd: torch.Tensor, answer_id: int) -> RecordedRun:
    """Run the whole prompt block by block and keep every state a restoration may reuse."""
    n_layers = adapter.n_layers
    modules = {f"attention.{i}": adapter.attention(i) for i in range(n_layers)}
    modules |= {f"mlp.{i}": adapter.mlp(i) for i in range(n_layers)}
    recorder = KeyValueRecorder()
    residual = [adapter.residual_input(token_embeddings_BxTxd)]
    with record_module_io(modules, inputs=False) as record:
        for layer in range(n_layers):
            residual.append(adapter.run_layers(residual[-1], layer, layer + 1, key_values=recorder))
    return RecordedRun(
        residual=torch.stack(residual),
        attention=torch.stack([record.outputs[f"attention.{i}"] for i in range(n_layers)]),
        mlp=torch.stack([record.outputs[f"mlp.{i}"] for i in range(n_layers)]),
        keys=recorder.keys,
        values=recorder.values,
        answer_probs=answer_probabilities(adapter, residual[-1][:, -1], answer_id),
    )


def noise_std(adapter: ArchitectureAdapter, noise_scale: float) -> float:
    """ROME's corruption level: ``noise_scale`` x the std of the input-embedding entries, as the
    embedding module hands them to the blocks (Gemma 3 scales its rows by sqrt(d) there, and the
    noise is added to ``token_embeddings``, after that scale)."""
    std = float(adapter.input_embedding.detach().float().std()) * adapter.input_embedding_scale
    return float(noise_scale) * std


def fact_generator(seed: int, fact_id: int) -> torch.Generator:
    """A generator seeded from (seed, fact id), so a fact's noise does not depend on the others."""
    state = np.random.SeedSequence([int(seed), int(fact_id)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def corrupted_embeddings(
    clean_1xTxd: torch.Tensor,
    subject_start: int,
    subject_end: int,
    n_samples: int,
    std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n_samples, T, d): the clean token embeddings with Gaussian noise on the subject tokens."""
    n_tokens, d_model = clean_1xTxd.shape[1:]
    if not 0 <= subject_start < subject_end <= n_tokens:
        raise ValueError(f"subject tokens [{subject_start}, {subject_end}) outside a prompt of {n_tokens} tokens")
    noise = torch.randn((n_samples, subject_end - subject_start, d_model), generator=generator) * std
    corrupted = clean_1xTxd.expand(n_samples, -1, -1).clone()
    corrupted[:, subject_start:subject_end] += noise.to(corrupted.device, corrupted.dtype)
    return corrupted
