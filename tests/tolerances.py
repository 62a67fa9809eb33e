"""Float32 tolerances derived from the arithmetic, not from what passed once.

Two float32 computations of the same quantity that differ only in summation order (batched
against one prompt, 1 against 2 torch threads, a fused against a plain kernel) differ by the
rounding of their reductions. A sum of n float32 terms carries an error of about sqrt(n) * eps
times the magnitude of the *terms* (random-walk bound, Higham ch. 3), and `chain` reductions in
sequence (layers, forward then backward) add up. Elements near zero come from cancelling terms of
the tensor's full magnitude, so the absolute part scales with the largest reference element, not
with the element itself. The margin factor covers the gap between the typical (sqrt n) and a
pessimistic draw; it is the same for every test.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps
MARGIN = 4.0


def float32_tolerance(reference: torch.Tensor, *, reduction: int, chain: int = 1) -> tuple[float, float]:
    """(rtol, atol) for results of `chain` successive float32 reductions of length `reduction`."""
    relative = MARGIN * chain * math.sqrt(reduction) * EPS32
    return relative, relative * float(torch.as_tensor(reference).abs().max())


def assert_close_float32(actual, expected, *, reduction: int, chain: int = 1) -> None:
    expected = torch.as_tensor(expected)
    rtol, atol = float32_tolerance(expected, reduction=reduction, chain=chain)
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=rtol, atol=atol)


def assert_close_after_update(updated, original, expected_change) -> None:
    """``updated - original == expected_change`` where ``updated = original + change`` was
    rounded once to float32: the error is half an ulp of the *weights*, not of the change (plus
    one rounding of the change itself, computed in another order: 2 eps relative)."""
    rounding = EPS32 * float(torch.maximum(updated.abs(), original.abs()).max())
    torch.testing.assert_close(updated - original, expected_change, rtol=2 * EPS32, atol=rounding)


def vocab_chain(loaded) -> dict:
    """Tolerance arguments for a gradient captured through the whole model: the longest reduction
    is the unembedding's backward over the vocabulary, repeated through every layer."""
    return {"reduction": loaded.adapter.unembedding.shape[0], "chain": loaded.adapter.n_layers + 1}
