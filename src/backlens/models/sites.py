"""Linear maps inside a block, named by role: the weight layout is stated once, here.

``LinearSite`` is one matrix applied at every prompt position (an MLP matrix, an attention
projection or a fused Q/K/V matrix); ``Projection`` is one attention projection as the output
units it owns of a site. Which module of which family is which site is the adapters' business
(``backlens.models.adapters``), never this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

WeightLayout = Literal["in_out", "out_in"]


@dataclass(frozen=True)
class LinearSite:
    """One linear map y_i = W x_i applied at every prompt position.

    ``matrix`` names its role: ``ff1`` (GPT-2, GPT-NeoX), ``ff1_gate`` / ``ff1_up`` (gated MLPs)
    or ``ff2``; in attention ``attn_q`` / ``attn_k`` / ``attn_v`` / ``attn_o``, or ``attn_qkv`` for a
    fused Q/K/V matrix. ``layout`` says how ``module.weight`` stores W: GPT-2's Conv1D keeps
    (in, out), ``nn.Linear`` keeps (out, in).
    """

    layer: int
    matrix: str
    module: nn.Module
    layout: WeightLayout

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def in_features(self) -> int:
        return self.weight.shape[0 if self.layout == "in_out" else 1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1 if self.layout == "in_out" else 0]

    def gradient_from_factors(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> torch.Tensor:
        """Lemma 4.1: dL/dW = sum_i delta_i x_i^T, returned in the module's weight layout."""
        if self.layout == "in_out":
            return inputs_PxIn.T @ vjps_PxOut
        return vjps_PxOut.T @ inputs_PxIn

    def as_out_in(self, weight_like: torch.Tensor) -> torch.Tensor:
        """A tensor in the module's weight layout, viewed as (out, in)."""
        return weight_like.T if self.layout == "in_out" else weight_like

    def map_inputs(self, inputs_xIn: torch.Tensor, weight_like: torch.Tensor) -> torch.Tensor:
        """(..., d_out): inputs mapped through a matrix in the module's weight layout (a weight change,
        no bias), i.e. what the module's output gains when its weight gains ``weight_like``."""
        return inputs_xIn @ self.as_out_in(weight_like).T


@dataclass(frozen=True)
class Projection:
    """One attention projection (``q``, ``k``, ``v`` or ``o``) as the output units it owns of a site.

    A fused matrix (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``) is one LinearSite shared by
    Q, K and V; each owns the output units in ``out_ranges`` ([start, stop) pairs; None: all of them).
    Its gradient is Lemma 4.1 with the VJP restricted to those units, i.e. those rows (out, in) or
    columns (in, out) of the fused weight's gradient.
    """

    name: str
    site: LinearSite
    out_ranges: tuple[tuple[int, int], ...] | None = None

    @property
    def layer(self) -> int:
        return self.site.layer

    def out_index(self, device: torch.device | None = None) -> torch.Tensor | None:
        if self.out_ranges is None:
            return None
        return torch.cat([torch.arange(start, stop, device=device) for start, stop in self.out_ranges])

    @property
    def out_features(self) -> int:
        if self.out_ranges is None:
            return self.site.out_features
        return sum(stop - start for start, stop in self.out_ranges)

    def select_outputs(self, outputs_xOut: torch.Tensor) -> torch.Tensor:
        """This projection's units of a site output or VJP (last dimension)."""
        index = self.out_index(outputs_xOut.device)
        return outputs_xOut if index is None else outputs_xOut.index_select(-1, index)

    def select_weight(self, weight_like: torch.Tensor) -> torch.Tensor:
        """This projection's part of a tensor in the site's weight layout (the weight, its gradient)."""
        index = self.out_index(weight_like.device)
        if index is None:
            return weight_like
        return weight_like.index_select(1 if self.site.layout == "in_out" else 0, index)

    def gradient_from_factors(self, inputs_PxIn: torch.Tensor, site_vjps_PxOut: torch.Tensor) -> torch.Tensor:
        """Lemma 4.1 for this projection, from the site's inputs and (whole-site) VJPs."""
        return self.site.gradient_from_factors(inputs_PxIn, self.select_outputs(site_vjps_PxOut))


def head_interleaved_ranges(n_heads: int, head_size: int, part: int, n_parts: int = 3) -> tuple[tuple[int, int], ...]:
    """Units of part ``part`` of a per-head interleaved fused projection: head h owns units
    [h * n_parts * head_size, (h + 1) * n_parts * head_size), split into n_parts blocks (GPT-NeoX: q, k, v)."""
    stride = n_parts * head_size
    return tuple((h * stride + part * head_size, h * stride + (part + 1) * head_size) for h in range(n_heads))


PROJECTIONS = ("q", "k", "v", "o")
