"""AlphaEdit's null-space projection (Fang et al., ICLR 2025, arXiv 2410.02355), from the cached FF2
second moments.

jianghoucheng/AlphaEdit (commit f5248d3), experiments/evaluate.py ``get_project``: the SVD of
the FF2 input second moment K0 K0^T (ROME's ``mom2``, E[k k^T] over the statistics corpus), the
singular vectors U_hat whose singular values are below ``nullspace_threshold`` (2e-2 in all its
hparams files), P = U_hat U_hat^T. An update whose input direction lies in P's range leaves every
key of the preserved span (the large-eigenvalue directions) unchanged.

``nullspace_energy`` (ours, instead of the threshold): the null space is the smallest eigenvectors
whose eigenvalues sum to at most that fraction of the trace (the share of the expected key energy
E|k|^2 left unprotected). AlphaEdit's absolute 2e-2 depends on the activations' scale: on SmolLM2-135M's
layer-24 FF2 input (SiLU-gated, 1536 wide) only 5 of 1536 eigenvalues lie below it (smallest 0.017,
median 0.11), so every projected update would be confined to 5 directions.

Here: ``torch.linalg.eigh`` of the float64 matrix instead of the SVD of the float32 one; for a
symmetric positive semi-definite matrix the singular vectors are the eigenvectors and the singular
values the eigenvalues (round-off negatives have |lambda| below any threshold in both), so the
subspace is the same except for eigenvalues within float32 round-off of the threshold.

How each method uses P (``nullspace_projection: true``; hyper-parameter names as AlphaEdit's):
- MEMIT (``editing/alphaedit.py``): AlphaEdit's own solve, with its cache of earlier edits' keys.
- ROME, r-ROME: u becomes P u / |P u|; the right vector v = (v* - W k) / (k . u) is computed with
  the projected u, so the update still maps the key to v* exactly (ROME's equality constraint,
  solved inside P's range). AlphaEdit has no ROME variant; this is ours.
- the forward pass shift: the key becomes P key, rescaled so that its dot product with a_n is the
  unprojected key's (the edit prompt receives the same write, so eta keeps its meaning, as for the
  whitened key). Ours as well.
Neither the ROME nor the shift form protects earlier edits' keys (AlphaEdit's cache term exists
only in its MEMIT solve).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from backlens.errors import ConfigError


@dataclass(frozen=True)
class NullSpace:
    """``projection_InxIn``: P = U_hat U_hat^T (float64); ``dim``: the number of eigenvalues below
    ``threshold``; ``eigenvalues``: all of them, ascending (for reports)."""

    projection_InxIn: torch.Tensor
    dim: int
    threshold: float
    eigenvalues: torch.Tensor

    def project(self, vector_In: torch.Tensor) -> torch.Tensor:
        """P x in ``vector_In``'s dtype (P applied in float64)."""
        return (self.projection_InxIn @ vector_In.to(self.projection_InxIn)).to(vector_In.dtype)

    def energy_fraction(self, key_In: torch.Tensor) -> float:
        """k^T P k / |k|^2: how much of the key lies in the null space (0: all preserved, 1: none)."""
        key = key_In.to(self.projection_InxIn)
        return float(key @ self.projection_InxIn @ key / (key @ key))


def null_space_projection(mom2_InxIn: torch.Tensor, threshold: float | None = None, *, energy: float | None = None,
                          layer: int | None = None) -> NullSpace:
    """P onto the eigenvectors of the second moment whose eigenvalues are below ``threshold``, or
    (``energy``) the smallest ones whose eigenvalues sum to at most that fraction of the trace; the
    NullSpace's ``threshold`` is then the eigenvalue at which the null space ends. An empty null
    space is an error: P = 0 would make every projected update zero (AlphaEdit would then silently
    edit nothing)."""
    if (threshold is None) == (energy is None):
        raise ConfigError("set exactly one of nullspace_threshold (AlphaEdit's absolute eigenvalue bound, 2e-2) and "
                          f"nullspace_energy (a share of the trace); got {threshold=}, {energy=}")
    eigenvalues, eigenvectors = torch.linalg.eigh(mom2_InxIn.double())
    if energy is not None:
        share_below = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
        small = share_below <= float(energy)
        threshold = float(eigenvalues[min(int(small.sum()), len(eigenvalues) - 1)])
        setting = f"nullspace_energy={energy}: the smallest eigenvalue alone holds {float(share_below[0]):.3g} of the trace"
    else:
        small = eigenvalues < float(threshold)
        setting = f"nullspace_threshold={threshold}: no eigenvalue is below it"
    dim = int(small.sum())
    if dim == 0:
        where = f" of layer {layer}" if layer is not None else ""
        raise ConfigError(
            f"{setting} (FF2 second moment{where}: smallest {float(eigenvalues[0]):.3g}, median "
            f"{float(eigenvalues.median()):.3g}), so the null space is empty and every projected update would be zero; raise it"
        )
    basis = eigenvectors[:, small]
    return NullSpace(basis @ basis.T, dim, float(threshold), eigenvalues)


def projection_enabled(hparams: Mapping) -> bool:
    """``nullspace_projection`` (absent: off, so the configs of the methods without it, and the
    fingerprints of their results, stay as they were)."""
    return bool(hparams.get("nullspace_projection", False))


def null_space_from_hparams(hparams: Mapping, mom2_InxIn: torch.Tensor, layer: int, device) -> NullSpace | None:
    """The method's NullSpace at ``layer`` (on ``device``), or None when the projection is off."""
    if not projection_enabled(hparams):
        return None
    threshold, energy = hparams.get("nullspace_threshold"), hparams.get("nullspace_energy")
    space = null_space_projection(mom2_InxIn, None if threshold is None else float(threshold),
                                  energy=None if energy is None else float(energy), layer=layer)
    return NullSpace(space.projection_InxIn.to(device), space.dim, space.threshold, space.eigenvalues)


def projected_key(space: NullSpace, key_In: torch.Tensor, activation_In: torch.Tensor) -> torch.Tensor:
    """P key scaled so that its dot product with ``activation_In`` is the unprojected key's: the
    edit prompt gets the same write, the preserved span none."""
    projected = space.project(key_In)
    return projected * (key_In @ activation_In) / (projected @ activation_In)
