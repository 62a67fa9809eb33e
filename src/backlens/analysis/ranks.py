"""Rank of a gradient sum_i delta_i x_i^T from its P x d factors, never from the full matrix.

With thin QR factorisations X^T = Q_x R_x and Delta^T = Q_d R_d (Q orthonormal), the
gradient Delta^T X = Q_d (R_d R_x^T) Q_x^T has the singular values of the P x P core
R_d R_x^T. The core is computed in float64 from the factors, free of the round-off of a
d_out x d_in SVD.

Tolerance. The factors themselves carry round-off of relative size eps(dtype), so a
singular value below about P * eps(dtype) * sigma_max cannot be told from rounding noise
(an exactly rank-deficient input rebuilt in float32 shows ratios near 1e-8), while the
smallest real ones of float32 model gradients sit above 1e-5. The default
``rtol = P * eps(factor dtype)`` separates the two; matrix_rank's own float32 rule for the
full matrix, max(d_out, d_in) * eps32 (about 1.8e-4 for 576 x 1536), cuts some real ones
and is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RankResult:
    """``rank`` counts singular values above ``rtol`` x the largest.

    ``sigma_ratios`` are all P core singular values divided by the largest (descending), so
    any other tolerance can be applied later (see ``rank_at``).
    """

    rank: int
    rtol: float
    sigma_ratios: tuple[float, ...]

    def rank_at(self, rtol: float) -> int:
        return sum(ratio > rtol for ratio in self.sigma_ratios)


def factor_rtol(n_tokens: int, dtype: torch.dtype) -> float:
    """The default tolerance: P times the machine epsilon of the factors' dtype."""
    return max(n_tokens, 1) * torch.finfo(dtype).eps


def float32_rtol(d_out: int, d_in: int) -> float:
    """The tolerance ``torch.linalg.matrix_rank`` applies to the same matrix in float32."""
    return max(d_out, d_in) * torch.finfo(torch.float32).eps


def core_singular_values(inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of sum_i delta_i x_i^T, from the factors.

    Leading batch dimensions are allowed ((..., P, d) factors give (..., min(P, d)) values),
    so all layers of a prompt go through one batched QR and SVD.
    """
    inputs = inputs_PxIn.to(torch.float64)
    vjps = vjps_PxOut.to(torch.float64)
    r_inputs = torch.linalg.qr(inputs.mT, mode="r").R  # (..., min(P, d_in), P)
    r_vjps = torch.linalg.qr(vjps.mT, mode="r").R  # (..., min(P, d_out), P)
    return torch.linalg.svdvals(r_vjps @ r_inputs.mT)


def result_from_singular_values(sigmas: torch.Tensor, rtol: float) -> RankResult:
    """Rank at ``rtol`` from descending singular values (one gradient)."""
    values = sigmas.tolist()
    largest = values[0] if values else 0.0
    if largest == 0.0:
        return RankResult(0, rtol, tuple(0.0 for _ in values))
    ratios = tuple(value / largest for value in values)
    return RankResult(sum(ratio > rtol for ratio in ratios), rtol, ratios)


def gradient_ranks_stacked(inputs_LxPxIn: torch.Tensor, vjps_LxPxOut: torch.Tensor) -> list[RankResult]:
    """``gradient_rank`` of L gradients of the same shape (e.g. one matrix in every layer) at once."""
    rtol = factor_rtol(inputs_LxPxIn.shape[-2], torch.promote_types(inputs_LxPxIn.dtype, vjps_LxPxOut.dtype))
    sigmas = core_singular_values(inputs_LxPxIn, vjps_LxPxOut).cpu()
    return [result_from_singular_values(row, rtol) for row in sigmas]


def gradient_rank(inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor, rtol: float | None = None) -> RankResult:
    """Rank of the gradient; ``rtol`` (relative to the largest singular value) defaults to
    ``factor_rtol(P, dtype of the factors)``."""
    if rtol is None:
        rtol = factor_rtol(inputs_PxIn.shape[0], torch.promote_types(inputs_PxIn.dtype, vjps_PxOut.dtype))
    return result_from_singular_values(core_singular_values(inputs_PxIn, vjps_PxOut).cpu(), rtol)
