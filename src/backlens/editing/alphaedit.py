"""AlphaEdit (Fang et al., ICLR 2025, arXiv 2410.02355): MEMIT's update solved inside the null space
of the preserved keys, with a cache of the keys of earlier edits.

jianghoucheng/AlphaEdit (commit f5248d3), AlphaEdit/AlphaEdit_main.py ``apply_AlphaEdit_to_model``:
z*, the keys (template groups averaged) and the residual split over the layers are MEMIT's
(``MassEditingMemory``, unchanged), but per layer the update (in x out) is

    solve(P (K1 K1^T + cache) + L2 I,  P K1 R^T)

with P the projection of ``null_space.py`` (fixed, from the unedited model's statistics) and
``cache`` the sum of K_p K_p^T over the edits already made; after all layers are updated, the
request's keys are recomputed on the edited model and added to each layer's cache. There is no
w C term (MEMIT's ``mom2_update_weight`` is unused): P removes the preserved keys instead.
For one request K1 is one key k and the update is rank one, u = solve(., P k) times R^T; ``apply_batch``
solves for N requests at once (K1 with N columns, as AlphaEdit's batches) and caches all N keys.

Deviations: the solve runs in float64 (AlphaEdit: float32 on the GPU; MEMIT's port here already
solves in float64). The cache holds only the edits that are in the weights now: when the edited
weights are not those the last edit left (the evaluation loop restores them after every case, or
something else changed them), it starts again from zero. AlphaEdit's sequential script never
restores, so there the two agree; without this, Table 1's independent edits would protect the keys
of edits already undone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from backlens.editing.base import FactoredUpdate
from backlens.editing.covariance import load_second_moment
from backlens.editing.keys_values import TargetResult, grouped_mean_key
from backlens.editing.memit import MassEditingMemory
from backlens.editing.null_space import null_space_from_hparams
from backlens.editing.requests import EditRequest
from backlens.errors import ConfigError


class AlphaEditMemory(MassEditingMemory):
    """MEMIT's hyper-parameters plus ``nullspace_projection: true``, ``nullspace_threshold`` and ``L2``
    (AlphaEdit's names; its hparams files: 2e-2 and 10)."""

    def __init__(self, loaded, hparams, *, second_moments: dict[int, torch.Tensor] | None = None,
                 templates: list[list[str]] | None = None):
        super().__init__(loaded, hparams, second_moments=second_moments, templates=templates)
        if "L2" not in hparams:
            raise ConfigError("AlphaEdit (memit with nullspace_projection) needs L2 (AlphaEdit's hparams: 10)")
        self.l2 = float(hparams["L2"])
        moments = second_moments or {layer: load_second_moment(hparams["stats_path"], layer) for layer in self.layers}
        # AlphaEdit projects float32 statistics (get_cov), as MEMIT keeps them.
        self.null_spaces = {layer: null_space_from_hparams(hparams, moments[layer].float(), layer, self.device)
                            for layer in self.layers}
        # MEMIT's w C is not part of AlphaEdit's system; free it (a d_ff x d_ff float64 per layer).
        self.scaled_mom2 = {}
        self.cache = {layer: torch.zeros_like(self.null_spaces[layer].projection_InxIn) for layer in self.layers}
        self.n_cached = 0
        self._cache_signature: tuple[str, ...] | None = None

    def adjusted_keys(self, layer: int, keys_NxIn: torch.Tensor) -> torch.Tensor:
        """solve(P (K K^T + cache) + L2 I, P K) with K = keys^T (in, N), transposed to (N, in): AlphaEdit's
        update divided by the residuals."""
        projection = self.null_spaces[layer].projection_InxIn
        system = projection @ (keys_NxIn.T @ keys_NxIn + self.cache[layer])
        system += self.l2 * torch.eye(keys_NxIn.shape[1], dtype=system.dtype, device=system.device)
        return torch.linalg.solve(system, projection @ keys_NxIn.T).T

    def weights_signature(self) -> tuple[str, ...]:
        """A digest of every edited weight's bytes: whether the weights are still those the last edit left."""
        def digest(parameter: torch.Tensor) -> str:
            data = parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            return hashlib.blake2b(data, digest_size=16).hexdigest()

        return tuple(digest(p) for p in self.edited_parameters())

    def reset_cache(self) -> None:
        for layer in self.layers:
            self.cache[layer].zero_()
        self.n_cached = 0
        self._cache_signature = None

    def _start_update(self) -> int:
        """Drop the cache when the weights are not those the last edit left; the number of edits cached."""
        if self._cache_signature is not None and self.weights_signature() != self._cache_signature:
            self.reset_cache()
        return self.n_cached

    def _cache_keys(self, requests: Sequence[EditRequest]) -> None:
        """As AlphaEdit_main.py: the requests' keys on the edited model (every layer updated) join the cache."""
        for layer in self.layers:
            for request in requests:
                key_In = grouped_mean_key(self, layer, self.template_groups, request, self.fact_token).double()
                self.cache[layer] += torch.outer(key_In, key_In)
        self.n_cached += len(requests)
        self._cache_signature = self.weights_signature()

    def apply_with_update(self, request: EditRequest) -> tuple[dict[str, object], FactoredUpdate]:
        n_cached = self._start_update()
        facts, update = super().apply_with_update(request)
        self._cache_keys([request])
        facts.update(n_cached_edits=n_cached, null_space_dims=[self.null_spaces[layer].dim for layer in self.layers])
        return facts, update

    def apply_batch(self, requests: Sequence[EditRequest], values: Sequence[TargetResult] | None = None) -> dict[str, object]:
        """AlphaEdit's batch: one solve for all ``requests`` (K with N columns), then all their keys join the cache."""
        n_cached = self._start_update()
        facts = super().apply_batch(requests, values)
        self._cache_keys(requests)
        return {**facts, "n_cached_edits": n_cached, "null_space_dims": [self.null_spaces[layer].dim for layer in self.layers]}

    def sequential_state(self) -> dict[str, object]:
        """What a resumed sequential run needs besides the weights: the cache of the edits in them."""
        return {"cache": {layer: self.cache[layer].cpu() for layer in self.layers}, "n_cached": self.n_cached}

    def load_sequential_state(self, state: dict[str, object]) -> None:
        """Put back ``sequential_state``'s cache; the weights (loaded before) are those it belongs to."""
        for layer in self.layers:
            self.cache[layer].copy_(state["cache"][layer].to(self.cache[layer]))
        self.n_cached = int(state["n_cached"])
        self._cache_signature = self.weights_signature()
