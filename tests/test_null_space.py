"""AlphaEdit's null-space projection (issue 26): P itself, the preserved keys' zero change under the
projected ROME / shift / AlphaEdit updates, AlphaEdit's solve against its paper's formula, its
cache of earlier edits, and that the projected edits still edit."""

from __future__ import annotations

import pytest
import torch

from backlens.api.editing import method_config
from backlens.editing.alphaedit import AlphaEditMemory
from backlens.editing.keys_values import outputs_at_subject
from backlens.editing.memit import MassEditingMemory
from backlens.editing.methods import build_editor, check_method_overrides, load_method_config
from backlens.editing.null_space import null_space_projection
from backlens.editing.requests import EditRequest
from backlens.editing.rome import RankOneModelEditing
from backlens.editing.shift import ForwardPassShift
from backlens.editing.weights import restored_after
from backlens.errors import ConfigError
from test_editing_methods import MEMIT_REFUSAL, MEMIT_TEMPLATES, REQUEST, TEMPLATES, VALUE_HPARAMS, nll_new, refuses_memit
from test_shift_variants import random_second_moment

EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
HPARAMS = {**VALUE_HPARAMS, "v_num_grad_steps": 5}
OTHER = EditRequest(case_id=8, prompt="The Eiffel Tower is located in", subject="Eiffel Tower", target_new="Rome",
                    target_true="Paris")


def spectrum_moment(d: int) -> tuple[torch.Tensor, float]:
    """A second moment with a spread spectrum and the threshold at its median eigenvalue (half the
    space preserved, half null)."""
    mom2 = random_second_moment(d)
    eigenvalues = torch.linalg.eigvalsh(mom2)
    return mom2, float(eigenvalues[d // 2 - 1] + eigenvalues[d // 2]) / 2


def preserved_basis(mom2: torch.Tensor, threshold: float) -> torch.Tensor:
    """(d, m) eigenvectors with eigenvalues >= threshold: the keys AlphaEdit preserves."""
    eigenvalues, eigenvectors = torch.linalg.eigh(mom2.double())
    return eigenvectors[:, eigenvalues >= threshold]


def preserved_leak(direction_In: torch.Tensor, basis: torch.Tensor) -> float:
    """max over preserved unit eigenvectors e of |u . e| / |u|: the update u v^T changes e's FF2
    output by |u . e| |v|, this fraction of what it writes along its own direction."""
    u = direction_In.double()
    return float((basis.T @ u).abs().max() / u.norm())


def test_projection_is_symmetric_idempotent_and_spans_the_small_eigenvalues():
    mom2, threshold = spectrum_moment(40)
    space = null_space_projection(mom2, threshold)
    eigenvalues, eigenvectors = torch.linalg.eigh(mom2)
    small = eigenvalues < threshold
    assert space.dim == int(small.sum()) == 20
    P = space.projection_InxIn
    # B B^T of an orthonormal float64 basis: symmetric and idempotent to float64 round-off.
    assert float((P - P.T).abs().max()) <= 8 * EPS64
    assert float((P @ P - P).abs().max()) <= 40 * 8 * EPS64
    assert abs(float(P.trace()) - space.dim) <= 40 * 8 * EPS64
    assert float((P @ eigenvectors[:, ~small]).abs().max()) <= 40 * 8 * EPS64  # preserved keys: P e = 0
    torch.testing.assert_close(P @ eigenvectors[:, small], eigenvectors[:, small], rtol=0, atol=40 * 8 * EPS64)


def test_an_empty_null_space_is_a_config_error():
    mom2, _ = spectrum_moment(8)
    with pytest.raises(ConfigError, match="null space is\\s+empty|null space is empty"):
        null_space_projection(mom2, float(torch.linalg.eigvalsh(mom2)[0]) / 2, layer=3)


@pytest.mark.parametrize("energy", [0.01, 0.05, 0.2, 0.5])
def test_energy_null_space_holds_at_most_that_share_of_the_trace_and_is_the_threshold_space_at_its_bound(energy):
    mom2, _ = spectrum_moment(40)
    eigenvalues = torch.linalg.eigvalsh(mom2.double())
    space = null_space_projection(mom2, energy=energy)
    trace = float(eigenvalues.sum())
    # The smallest dim eigenvalues hold at most `energy` of the trace; one more would exceed it.
    assert float(eigenvalues[: space.dim].sum()) <= energy * trace
    assert float(eigenvalues[: space.dim + 1].sum()) > energy * trace
    # P's own energy share, trace(P C) / trace(C), is the same sum.
    share = float((space.projection_InxIn @ mom2.double()).trace()) / trace
    assert abs(share - float(eigenvalues[: space.dim].sum()) / trace) <= 1e-12
    # Its reported threshold is the first eigenvalue outside it, so the absolute form gives the same P.
    same = null_space_projection(mom2, space.threshold)
    assert same.dim == space.dim
    torch.testing.assert_close(same.projection_InxIn, space.projection_InxIn, rtol=0, atol=0)


def test_the_null_space_takes_exactly_one_of_threshold_and_energy(tiny_gpt2):
    mom2, threshold = spectrum_moment(8)
    for threshold_arg, energy in ((None, None), (threshold, 0.1)):
        with pytest.raises(ConfigError, match="exactly one of nullspace_threshold"):
            null_space_projection(mom2, threshold_arg, energy=energy)
    with pytest.raises(ConfigError, match="smallest eigenvalue alone holds"):
        null_space_projection(mom2, energy=1e-9)
    layer = tiny_gpt2.adapter.n_layers - 1
    hparams = {"layer": layer, "eta": 1.0, "direction": "centered", "key": "activation", "nullspace_projection": True,
               "nullspace_threshold": threshold, "nullspace_energy": 0.1}
    with pytest.raises(ConfigError, match="set exactly one of nullspace_threshold"):
        ForwardPassShift(tiny_gpt2, hparams, second_moment=random_second_moment(tiny_gpt2.adapter.ff2_site(layer).in_features))


def rome_editor(loaded, mom2, threshold, **extra):
    return RankOneModelEditing(loaded, {**HPARAMS, "layer": 1, "nullspace_threshold": threshold, **extra},
                               second_moment=mom2, templates=TEMPLATES)


@pytest.mark.parametrize("update_key", ["edit_prompt", "template_mean"])
def test_projected_rome_leaves_preserved_keys_unchanged_and_keeps_its_constraint(tiny_model, update_key):
    site = tiny_model.adapter.ff2_site(1)
    mom2, threshold = spectrum_moment(site.in_features)
    basis = preserved_basis(mom2, threshold)
    plain_u, _, _ = rome_editor(tiny_model, mom2, threshold, update_key=update_key).rank_one_factors(REQUEST)
    u, v, info = rome_editor(tiny_model, mom2, threshold, update_key=update_key, nullspace_projection=True).rank_one_factors(REQUEST)
    # u = P u0 / |P u0| in float32: its preserved components are the casts' and the division's
    # round-off, at most eps32 |u| each; bound 4 eps32. Unprojected, ROME's u leans on them.
    assert preserved_leak(u, basis) <= 4 * EPS32
    assert preserved_leak(plain_u, basis) > 1e-2
    assert info["null_space_dim"] == site.in_features // 2 and 0 < info["key_null_space_energy"] < 1
    # v is solved with the projected u, so the edited FF2 still maps the update's key to v*.
    before = site.weight.detach().clone()
    try:
        with torch.no_grad():
            site.weight.add_(site.gradient_from_factors(u[None], v[None]))
            reached = site.module(info["key"][None])[0]
        scale = float(info["target_value"].abs().max())
        torch.testing.assert_close(reached, info["target_value"], rtol=1e-4, atol=1e-5 * scale)
    finally:
        with torch.no_grad():
            site.weight.copy_(before)


@pytest.mark.parametrize("key", ["activation", "whitened"])
def test_projected_shift_key_leaves_preserved_keys_unchanged_and_writes_as_much_on_the_prompt(tiny_model, key):
    layer = tiny_model.adapter.n_layers - 1
    mom2, threshold = spectrum_moment(tiny_model.adapter.ff2_site(layer).in_features)
    basis = preserved_basis(mom2, threshold)
    hparams = {"layer": layer, "eta": 1.0, "skip_if_predicted": False, "direction": "centered", "key": key,
               "nullspace_threshold": threshold}
    plain_key, _, _, _ = ForwardPassShift(tiny_model, hparams, second_moment=mom2).shift_factors(REQUEST)
    editor = ForwardPassShift(tiny_model, {**hparams, "nullspace_projection": True}, second_moment=mom2)
    projected, _, _, _ = editor.shift_factors(REQUEST)
    assert preserved_leak(projected, basis) <= 4 * EPS32
    assert preserved_leak(plain_key, basis) > 1e-2
    # Rescaled: k' . a_n = k . a_n (|a_n|^2 for either key), so eta keeps its meaning at the prompt.
    activation = ForwardPassShift(tiny_model, {**hparams, "key": "activation"}).shift_factors(REQUEST)[0]
    torch.testing.assert_close(projected @ activation, plain_key @ activation, rtol=1e-5, atol=0)


def alphaedit(loaded, mom2, threshold, l2, layers=(0, 1), **extra):
    hparams = {**HPARAMS, "clamp_norm_factor": 0.75, "layers": list(layers), "mom2_update_weight": 1.0,
               "nullspace_projection": True, "nullspace_threshold": threshold, "L2": l2, **extra}
    return AlphaEditMemory(loaded, hparams, second_moments={layer: mom2 for layer in layers}, templates=MEMIT_TEMPLATES)


def test_alphaedit_solve_is_the_papers_formula(tiny_gpt2):
    d = tiny_gpt2.adapter.ff2_site(1).in_features
    mom2, threshold = spectrum_moment(d)
    editor = alphaedit(tiny_gpt2, mom2, threshold, l2=0.5)
    P = editor.null_spaces[1].projection_InxIn
    generator = torch.Generator().manual_seed(3)
    key = torch.randn(d, generator=generator, dtype=torch.float64)
    earlier = torch.randn(d, 4, generator=generator, dtype=torch.float64)
    # One key, no cache (Sherman-Morrison): u = P k / (L2 + k^T P k).
    torch.testing.assert_close(editor.adjusted_key(1, key), P @ key / (0.5 + key @ P @ key), rtol=1e-10, atol=0)
    # With earlier keys K_p in the cache, the paper's closed form Delta = R K1^T P (K_p K_p^T P + K1 K1^T P + I)^-1
    # (arXiv 2410.02355; AlphaEdit_main.py weighs the identity by L2) is r u^T with:
    editor.cache[1] += earlier @ earlier.T
    system = earlier @ earlier.T @ P + torch.outer(key, key) @ P + 0.5 * torch.eye(d, dtype=torch.float64)
    row = key @ P @ torch.linalg.inv(system)
    torch.testing.assert_close(editor.adjusted_key(1, key), row, rtol=1e-8, atol=1e-12 * float(row.abs().max()))


def test_alphaedit_leaves_preserved_keys_unchanged_and_reaches_z_star_inside_the_null_space(tiny_model):
    mom2, threshold = spectrum_moment(tiny_model.adapter.ff2_site(0).in_features)
    basis = preserved_basis(mom2, threshold)
    if refuses_memit(tiny_model):  # AlphaEdit is MEMIT's solve: refused where MEMIT is (Gemma 3)
        with pytest.raises(ValueError, match=MEMIT_REFUSAL):
            alphaedit(tiny_model, mom2, threshold, l2=1e-9)
        return
    # A negligible L2 (AlphaEdit's 10 is an absolute ridge: the tiny models' keys have k^T P k ~ 1e-3,
    # so it would shrink the update to nothing) and the bare prompt as the only template: each layer
    # then writes its share of the residual exactly, and the last closes it, as MEMIT's test shows.
    editor = alphaedit(tiny_model, mom2, threshold, l2=1e-9)
    editor.template_groups = [["{}"]]
    with restored_after(editor.edited_parameters()):
        factors, info = editor.update_factors(REQUEST)
        reached = outputs_at_subject(editor, 1, REQUEST)["block_out"]
    for adjusted_key, _ in factors:
        # The float64 solve of A u = P k (A = P k k^T + L2 I) is backward stable, (A + dA) u = P k, and
        # (I - P) A = L2 (I - P), so (I - P) u = -(I - P) dA u / L2: float64 round-off amplified by
        # |A| / L2 (about 1e6 here). Measured 2e-8 to 1.3e-7 on the four families; the bound, 1e-6,
        # is five orders below what MEMIT's own key puts there (> 1e-2, asserted below).
        assert preserved_leak(adjusted_key, basis) <= 1e-6
    assert float((reached - info["target"]).norm()) <= 1e-4 * float(info["target"].norm())
    with restored_after(editor.edited_parameters()):
        memit_factors, _ = MassEditingMemory(tiny_model, {**editor.hparams, "nullspace_projection": False}, templates=[["{}"]],
                                             second_moments={0: mom2, 1: mom2}).update_factors(REQUEST)
    assert max(preserved_leak(key, basis) for key, _ in memit_factors) > 1e-2


def test_alphaedit_caches_the_keys_of_edits_in_the_weights_and_forgets_restored_ones(tiny_gpt2):
    mom2, threshold = spectrum_moment(tiny_gpt2.adapter.ff2_site(0).in_features)
    editor = alphaedit(tiny_gpt2, mom2, threshold, l2=1e-4)
    with restored_after(editor.edited_parameters()):
        first, _ = editor.apply_with_update(REQUEST)
        assert first["n_cached_edits"] == 0 and editor.n_cached == 1
        cached = {layer: editor.cache[layer].clone() for layer in editor.layers}
        keys = {layer: torch.linalg.eigh(cached[layer])[1][:, -1] for layer in editor.layers}  # the first edit's key directions
        with_cache = [key for key, _ in editor.update_factors(OTHER)[0]]
    # Sequential: the second edit saw the first's keys, and its update moves them less than without the cache.
    with restored_after(editor.edited_parameters()):
        editor.apply_with_update(REQUEST)
        for layer in editor.layers:
            editor.cache[layer].zero_()
        without_cache = [key for key, _ in editor.update_factors(OTHER)[0]]
    for layer, a, b in zip(editor.layers, with_cache, without_cache):
        assert float(torch.linalg.matrix_rank(cached[layer], rtol=1e-6)) == 1
        # Measured on tiny GPT-2 (L2 1e-4): |u . k1| / |u| 9e-5 and 1.6e-4 with the cache, 0.07 and 0.17 without.
        assert abs(float(a @ keys[layer])) < 0.1 * abs(float(b @ keys[layer]))
    # The evaluation loop restored the weights: the next edit starts from an empty cache.
    with restored_after(editor.edited_parameters()):
        editor.apply_with_update(REQUEST)
        again, _ = editor.apply_with_update(OTHER)
        assert again["n_cached_edits"] == 1
    with restored_after(editor.edited_parameters()):
        fresh, _ = editor.apply_with_update(OTHER)
    assert fresh["n_cached_edits"] == 0 and fresh["null_space_dims"] == [len(mom2) // 2] * 2


@pytest.mark.parametrize("method", ["r_rome_nullspace", "alphaedit", "shift_centered_nullspace"])
def test_projected_edits_still_raise_the_target_probability(tiny_gpt2, tiny_neox, method):
    # Random tiny models barely respond to the value optimisation (ROME itself raises the target's
    # NLL on tiny Llama and Qwen2, test_editing_methods.py), so each method runs where its
    # unprojected form gains: the shift on tied tiny GPT-2, ROME and MEMIT on tiny NeoX, with the
    # weight decay and KL off and AlphaEdit's L2 small against the tiny keys' k^T P k.
    loaded = tiny_gpt2 if method.startswith("shift") else tiny_neox
    n = loaded.adapter.n_layers
    mom2, threshold = spectrum_moment(loaded.adapter.ff2_site(0).in_features)
    overrides = {"nullspace_threshold": threshold}
    if method.startswith("shift"):
        # The shift variants set their null space by nullspace_energy: the share of the trace held
        # by the eigenvalues below the threshold gives the same half of the space.
        eigenvalues = torch.linalg.eigvalsh(mom2.double())
        overrides = {"nullspace_energy": float(eigenvalues[eigenvalues < threshold].sum() / eigenvalues.sum())}
        overrides.update(layer=n - 1, eta=50.0, skip_if_predicted=False)
    else:
        overrides.update(context_template_length_params=[[4, 2]], v_weight_decay=0.0, kl_factor=0.0,
                         clamp_norm_factor=100.0, v_lr=2.0, v_num_grad_steps=10)
        overrides.update({"layers": [0, 1], "L2": 1e-6} if method == "alphaedit" else {"layer": 1})
    cfg = method_config(method, loaded.name)
    check_method_overrides(method, overrides, load_method_config(method))
    editor, _ = build_editor(loaded, cfg, overrides, covariance={layer: mom2 for layer in range(n)})
    expected = {"alphaedit": AlphaEditMemory, "r_rome_nullspace": RankOneModelEditing}.get(method, ForwardPassShift)
    assert type(editor) is expected
    before = nll_new(loaded)
    with restored_after(editor.edited_parameters()):
        editor.apply(REQUEST)
        after = nll_new(loaded)
    assert after < before
