"""Weight updates kept as factors: sums of c_k Delta_k^T X_k, never materialised as d_out x d_in.

A gradient-descent step on one linear map changes W (viewed (out, in)) by -lr sum_i delta_i x_i^T
(Lemma 4.1), so K steps add up to a matrix of rank <= K x P held exactly by K stacked P x d factor
pairs. Its rank, norm, inner products with other updates and its action on a vector all follow
from those factors (QR cores and P x P Gram matrices, in float64).
"""

from __future__ import annotations

import torch

from backlens.analysis.ranks import RankResult, gradient_rank


def factored_inner(inputs_a_PxIn: torch.Tensor, vjps_a_PxOut: torch.Tensor,
                   inputs_b_QxIn: torch.Tensor, vjps_b_QxOut: torch.Tensor) -> float:
    """Frobenius inner product <A, B> of A = Delta_a^T X_a and B = Delta_b^T X_b (both (out, in)):
    tr(X_a^T Delta_a Delta_b^T X_b) = sum((Delta_a Delta_b^T) * (X_a X_b^T)), P x Q work only."""
    vjp_gram_PxQ = vjps_a_PxOut.double() @ vjps_b_QxOut.double().T
    input_gram_PxQ = inputs_a_PxIn.double() @ inputs_b_QxIn.double().T
    return float((vjp_gram_PxQ * input_gram_PxQ).sum())


def factored_cosine(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Cosine (Frobenius) between two factored matrices given as (inputs, vjps); NaN if either is 0."""
    norm_a = factored_inner(*a, *a) ** 0.5
    norm_b = factored_inner(*b, *b) ** 0.5
    if norm_a == 0.0 or norm_b == 0.0:
        return float("nan")
    return factored_inner(*a, *b) / (norm_a * norm_b)


class FactoredUpdate:
    """sum_k scale_k Delta_k^T X_k as blocks of (inputs P x d_in, scaled VJPs P x d_out).

    A block whose inputs are bit-identical to an earlier block's is merged into it (its VJPs
    added): for one prompt the input of the edited matrix does not depend on that matrix, so
    every step shares X and the stack stays P rows high instead of K x P. Nothing is lost by
    merging: Delta_1^T X + Delta_2^T X = (Delta_1 + Delta_2)^T X exactly.
    """

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.vjps: list[torch.Tensor] = []

    def add(self, inputs_PxIn: torch.Tensor, vjps_PxOut: torch.Tensor, scale: float) -> None:
        scaled = scale * vjps_PxOut.double()
        for index, known in enumerate(self.inputs):
            if known.shape == inputs_PxIn.shape and torch.equal(known, inputs_PxIn.double()):
                self.vjps[index] = self.vjps[index] + scaled
                return
        self.inputs.append(inputs_PxIn.double())
        self.vjps.append(scaled)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs N x d_in, vjps N x d_out), N = the rows of all blocks (<= K x P)."""
        return torch.cat(self.inputs), torch.cat(self.vjps)

    @property
    def n_rows(self) -> int:
        return sum(block.shape[0] for block in self.inputs)

    def rank(self) -> RankResult:
        """Rank from the stacked factors' P x P-sized core. The tolerance is that of the float32
        factors the blocks were captured in (N x eps32), not float64's: the sum is exact, its
        inputs are not."""
        inputs, vjps = self.factors()
        return gradient_rank(inputs, vjps, rtol=max(self.n_rows, 1) * torch.finfo(torch.float32).eps)

    def norm(self) -> float:
        inputs, vjps = self.factors()
        return factored_inner(inputs, vjps, inputs, vjps) ** 0.5

    def apply(self, x_Nxd_in: torch.Tensor) -> torch.Tensor:
        """The update's action (N, d_out) on vectors x: sum over blocks of (x X^T) Delta."""
        inputs, vjps = self.factors()
        return (x_Nxd_in.double() @ inputs.T) @ vjps

    def matrix(self) -> torch.Tensor:
        """The full (out, in) float64 matrix (for tests and small models only)."""
        inputs, vjps = self.factors()
        return vjps.T @ inputs
