"""Tidy tables built from one captured batch: gradient ranks, VJP norms, target ranks.

Each table is computed as tensors on the batch's device over every (prompt, layer, position) at once,
copied to the CPU once, and laid out as columns (no Python loop over prompts, layers and tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from backlens.analysis.capture import CapturedBatch
from backlens.analysis.logit_lens import LensPass, lens_pass
from backlens.analysis.ranks import core_singular_values, factor_rtol, float32_rtol
from backlens.models.adapters import ArchitectureAdapter


def to_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host index on ``device``; non_blocking: a pageable host-to-device copy that the host need not wait for
    (no device synchronisation)."""
    return torch.from_numpy(np.ascontiguousarray(host)).to(device, non_blocking=True)


def packed_positions(lengths: Sequence[int], n_layers: int, n_padded: int) -> dict[str, np.ndarray]:
    """Host arrays over the real (prompt, layer, position) cells in that order, and ``flat``: each cell's
    row in a (B, L, T) tensor flattened."""
    prompt = np.repeat(np.arange(len(lengths)), np.asarray(lengths) * n_layers)
    layer = np.concatenate([np.repeat(np.arange(n_layers), length) for length in lengths]) if lengths else np.zeros(0)
    position = np.concatenate([np.tile(np.arange(length), n_layers) for length in lengths]) if lengths else np.zeros(0)
    layer, position = layer.astype(np.int64), position.astype(np.int64)
    return {"prompt": prompt, "layer": layer, "position": position,
            "flat": (prompt * n_layers + layer) * n_padded + position}


def stacked_layers(per_layer: dict, n_layers: int, matrix: str) -> torch.Tensor:
    """(B, L, T, d) from per-layer (B, T, d) tensors keyed (layer, matrix)."""
    return torch.stack([per_layer[(layer, matrix)] for layer in range(n_layers)], dim=1)


def gradient_rank_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> pd.DataFrame:
    """One row per (prompt, layer, matrix): the rank of dL/dW from its factors.

    ``rank`` uses ``rtol`` = P x eps of the factors' dtype (see ``backlens.analysis.ranks``);
    ``rank_float32_tol`` applies matrix_rank's float32 rule for the full matrix to the same
    singular values; ``sigma_min_ratio`` is the P-th singular value over the largest.
    Every layer and prompt of one matrix goes through one batched factorisation: the factors are padded
    with zero rows (zero rows add only zero singular values; the first P are the prompt's).
    """
    matrices = sorted({matrix for _, matrix in batch.sites})
    lengths = torch.as_tensor(batch.lengths)
    n_prompts, n_padded = len(batch.lengths), int(lengths.max())
    columns: dict[str, list] = {name: [] for name in ("layer", "matrix", "rank", "rank_float32_tol", "sigma_min_ratio",
                                                      "rtol", "prompt")}
    for matrix in matrices:
        layers = [layer for layer, m in batch.sites if m == matrix]
        inputs = torch.stack([batch.inputs[(layer, matrix)] for layer in layers])  # (L, B, T, d_in)
        vjps = torch.stack([batch.vjps[(layer, matrix)] for layer in layers])
        real = torch.arange(inputs.shape[2], device=inputs.device)[None, :] < lengths.to(inputs.device)[:, None]
        inputs = inputs * real[None, :, :, None]  # VJPs are exactly zero at padding; inputs are not
        sigmas = core_singular_values(inputs, vjps)  # (L, B, min(T, d))
        largest = sigmas[..., :1]
        ratios = torch.where(largest > 0, sigmas / largest.clamp_min(torch.finfo(sigmas.dtype).tiny), 0.0)
        site = batch.sites[(layers[0], matrix)]
        n_values = torch.clamp(lengths, max=min(site.in_features, site.out_features, n_padded))  # (B,)
        index = torch.arange(ratios.shape[-1])[None, :]
        counted = (index < n_values[:, None]).to(ratios.device)  # only the prompt's own min(P, d) values
        dtype = torch.promote_types(batch.inputs[(layers[0], matrix)].dtype, batch.vjps[(layers[0], matrix)].dtype)
        rtol = torch.tensor([factor_rtol(int(p), dtype) for p in batch.lengths], dtype=ratios.dtype)
        rank = ((ratios > rtol.to(ratios.device)[None, :, None]) & counted).sum(-1)
        rank_float32 = ((ratios > float32_rtol(site.out_features, site.in_features)) & counted).sum(-1)
        last = ratios.gather(-1, (n_values - 1).clamp_min(0).to(ratios.device)[None, :, None].expand(len(layers), -1, 1))
        rank, rank_float32, last = (t.cpu().numpy().T.reshape(-1) for t in (rank, rank_float32, last[..., 0]))
        columns["prompt"].append(np.repeat(np.arange(n_prompts), len(layers)))
        columns["layer"].append(np.tile(layers, n_prompts))
        columns["matrix"].append(np.full(n_prompts * len(layers), matrix, dtype=object))
        columns["rank"].append(rank)
        columns["rank_float32_tol"].append(rank_float32)
        columns["sigma_min_ratio"].append(last)
        columns["rtol"].append(np.repeat(rtol.numpy(), len(layers)))
    joined = {name: np.concatenate(parts) for name, parts in columns.items()}
    order = np.lexsort((joined["matrix"].astype(str), joined["prompt"]))  # prompt, then matrix, then layer
    prompt = joined["prompt"][order]
    return pd.DataFrame({
        "case_id": np.asarray(case_ids, dtype=np.int64)[prompt],
        "layer": joined["layer"][order].astype(np.int64),
        "matrix": joined["matrix"][order],
        "n_tokens": np.asarray(batch.lengths, dtype=np.int64)[prompt],
        "rank": joined["rank"][order].astype(np.int64),
        "rank_float32_tol": joined["rank_float32_tol"][order].astype(np.int64),
        "sigma_min_ratio": joined["sigma_min_ratio"][order].astype(np.float64),
        "rtol": joined["rtol"][order],
    })


def vjp_norm_rows(batch: CapturedBatch, case_ids: Sequence[int]) -> pd.DataFrame:
    """One row per (prompt, layer, module, position): ||VJP|| of that module's output.

    Modules: the FF1 matrices and FF2 (whose output is the MLP's output, so its VJP is
    the MLP-output VJP delta_i of the paper), and the attention output.
    """
    per_module = dict(batch.vjps)
    per_module.update({key: vjps for key, vjps in batch.submodule_vjps.items() if key[1] == "attention"})
    keys = list(per_module)
    norms = torch.stack([per_module[key].norm(dim=-1) for key in keys], dim=1).cpu().numpy()  # (B, modules, T)
    packed = packed_positions(batch.lengths, len(keys), norms.shape[-1])  # "layer" here: the module's index
    module_layer = np.array([layer for layer, _ in keys], dtype=np.int64)
    module_name = np.array([module for _, module in keys], dtype=object)
    return pd.DataFrame({
        "case_id": np.asarray(case_ids, dtype=np.int64)[packed["prompt"]],
        "layer": module_layer[packed["layer"]],
        "module": module_name[packed["layer"]],
        "position": packed["position"],
        "norm": norms.reshape(-1)[packed["flat"]].astype(np.float64),
    })


def ff2_target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter, *, normalized: bool = False,
    lens: LensPass | None = None,
) -> pd.DataFrame:
    """One row per (prompt, layer, position): rank of target_new's first token in LL(delta_i).

    ``rank`` counts tokens with a higher logit (0 = most probable, V-1 = least probable);
    -1 marks exact-zero VJPs (last layer, positions before the last), left out of averages.
    ``lens``: the pass of ``ff2_vjp_pass`` when another table already made it (one projection per VJP).
    """
    if lens is None:
        lens, _ = ff2_vjp_pass(batch, adapter, normalized=normalized)
    packed = packed_positions(batch.lengths, batch.n_layers, 0)
    return _rank_frame(case_ids, packed, lens.ranks[: len(packed["prompt"])].cpu().numpy(), adapter)


def ff2_vjp_pass(batch: CapturedBatch, adapter: ArchitectureAdapter, *, normalized: bool = False, k: int = 0,
                 excluded_ids: torch.Tensor | None = None, ff1_input: str | None = None,
                 ) -> tuple[LensPass, torch.Tensor]:
    """(lens, vectors) of every real (prompt, layer, position) FF2 VJP of the batch, in ``packed_positions``
    order, followed (``ff1_input``: an FF1 matrix name) by the inputs of that FF1 matrix in the same order:
    one projection per vector for every table that needs its lens."""
    blocks = [stacked_layers(batch.vjps, batch.n_layers, "ff2")]  # (B, L, T, d)
    if ff1_input is not None:
        blocks.append(stacked_layers(batch.inputs, batch.n_layers, ff1_input))
    packed = packed_positions(batch.lengths, batch.n_layers, blocks[0].shape[2])
    rows = to_device(packed["flat"], blocks[0].device)
    vectors = torch.cat([block.reshape(-1, block.shape[-1]).index_select(0, rows) for block in blocks])
    targets = batch.target_ids.index_select(0, to_device(packed["prompt"], vectors.device)).repeat(len(blocks))
    return lens_pass(adapter, vectors, targets, normalized=normalized, k=k, excluded_ids=excluded_ids), vectors


def _rank_frame(case_ids: Sequence[int], packed: dict[str, np.ndarray], ranks: np.ndarray,
                adapter: ArchitectureAdapter) -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": np.asarray(case_ids, dtype=np.int64)[packed["prompt"]],
        "layer": packed["layer"], "position": packed["position"], "rank": ranks.astype(np.int64),
        "vocab_size": int(adapter.unembedding.shape[0]),
    })


def target_rank_rows(
    batch: CapturedBatch, case_ids: Sequence[int], adapter: ArchitectureAdapter,
    vectors_at: Callable[[int, int, int], torch.Tensor], *, normalized: bool = False,
) -> pd.DataFrame:
    """Rank of target_new's first token in the logit lens of ``vectors_at(prompt, layer, length)``
    ((P, d_model) per prompt and layer), one row per (prompt, layer, position)."""
    packed = packed_positions(batch.lengths, batch.n_layers, 0)
    vectors = torch.cat([vectors_at(prompt, layer, length) for prompt, length in enumerate(batch.lengths)
                         for layer in range(batch.n_layers)])
    targets = batch.target_ids.index_select(0, to_device(packed["prompt"], vectors.device))
    ranks = lens_pass(adapter, vectors, targets, normalized=normalized).ranks.cpu().numpy()
    return _rank_frame(case_ids, packed, ranks, adapter)
