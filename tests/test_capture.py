"""VJP capture: Lemma 4.1 reconstruction, padding, and gradient ranks from factors."""

import dataclasses

import pytest
import torch

from backlens.analysis import lemma
from backlens.analysis.capture import capture_gradient_factors
from backlens.analysis.lemma import autograd_gradients, lemma_rows
from backlens.analysis.ranks import factor_rtol, gradient_rank
from tolerances import assert_close_float32, vocab_chain

PROMPTS = ["Obama grew up in", "The mother tongue of Danielle Darrieux is", "Jack Dorsey founded"]
TARGETS = [" Paris", " English", " IBM"]


def encode(loaded):
    ids = [loaded.tokenizer(p)["input_ids"] for p in PROMPTS]
    targets = [loaded.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in TARGETS]
    return ids, targets


def capture(loaded, ids, targets):
    return capture_gradient_factors(loaded.model, loaded.adapter, ids, targets, pad_id=loaded.tokenizer.pad_token_id)


def test_lemma_4_1_reconstructs_every_ff_gradient(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    single_ff1 = tiny_model.model.config.model_type in ("gpt2", "gpt_neox")
    expected_matrices = {"ff1", "ff2"} if single_ff1 else {"ff1_gate", "ff1_up", "ff2"}
    assert {matrix for _, matrix in batch.sites} == expected_matrices
    for prompt in range(len(PROMPTS)):
        reference = autograd_gradients(tiny_model, ids[prompt], targets[prompt])
        for key, grad in reference.items():
            rebuilt = batch.gradient(prompt, key)
            assert rebuilt.shape == grad.shape
            relative = (rebuilt - grad).norm() / grad.norm()
            assert relative < 1e-5, (prompt, key, float(relative))


def test_parameter_grads_stay_untouched(tiny_model):
    ids, targets = encode(tiny_model)
    capture(tiny_model, ids, targets)
    assert all(p.grad is None for p in tiny_model.model.parameters())


def test_weight_gradients_of_the_capture_pass_are_autograds(tiny_model):
    """lemma_check's reference: the capture pass's backward into the weights gives the same dL/dW as a
    plain backward pass of the prompt, leaves the VJPs as they were and parameter .grad untouched."""
    ids, targets = encode(tiny_model)
    pad_id = tiny_model.tokenizer.pad_token_id
    for prompt in range(len(PROMPTS)):
        both = capture_gradient_factors(tiny_model.model, tiny_model.adapter, [ids[prompt]], [targets[prompt]],
                                        pad_id=pad_id, submodules=False, weight_gradients=True)
        plain = capture(tiny_model, [ids[prompt]], [targets[prompt]])
        reference = autograd_gradients(tiny_model, ids[prompt], targets[prompt])
        assert both.weight_gradients.keys() == reference.keys() == both.sites.keys()
        for key, grad in reference.items():
            torch.testing.assert_close(both.weight_gradients[key], grad, rtol=0, atol=0)
            torch.testing.assert_close(both.vjps[key], plain.vjps[key], rtol=0, atol=0)
    assert not capture(tiny_model, ids, targets).weight_gradients
    assert all(p.grad is None for p in tiny_model.model.parameters())


def corrupt(batch, how):
    """The same captured batch with a Lemma-breaking mistake in its factors."""
    if how == "shifted_positions":  # delta_i paired with x_(i+1)
        return dataclasses.replace(batch, vjps={key: vjps.roll(1, dims=1) for key, vjps in batch.vjps.items()})
    if how == "neighbouring_layer":  # inputs of the next layer's matrix
        n_layers = batch.n_layers
        return dataclasses.replace(batch, inputs={(layer, matrix): batch.inputs[((layer + 1) % n_layers, matrix)]
                                                  for layer, matrix in batch.inputs})
    if how == "negated_vjps":
        return dataclasses.replace(batch, vjps={key: -vjps for key, vjps in batch.vjps.items()})
    raise ValueError(how)


@pytest.mark.parametrize("how", ["shifted_positions", "neighbouring_layer", "negated_vjps"])
def test_lemma_check_reports_a_broken_lemma(tiny_model, how, monkeypatch):
    """The check can fail: wrong factors, in the batch or in the single-prompt pass, give errors of order 1."""
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    sound = lemma_rows(tiny_model, batch, 1, 0, ids[1], targets[1], crosscheck=False)
    assert max(row["relative_error"] for row in sound) < 1e-5
    assert max(row["relative_error_batched"] for row in sound) < 1e-4

    broken_batched = lemma_rows(tiny_model, corrupt(batch, how), 1, 0, ids[1], targets[1], crosscheck=False)
    assert min(row["relative_error_batched"] for row in broken_batched) > 0.1
    assert max(row["relative_error"] for row in broken_batched) < 1e-5  # the single-prompt pass is still sound

    def broken_capture(*args, **kwargs):
        return corrupt(capture_gradient_factors(*args, **kwargs), how)

    monkeypatch.setattr(lemma, "capture_gradient_factors", broken_capture)
    broken_alone = lemma_rows(tiny_model, batch, 1, 0, ids[1], targets[1], crosscheck=False)
    assert min(row["relative_error"] for row in broken_alone) > 0.1
    assert max(row["relative_error_batched"] for row in broken_alone) < 1e-4


def test_batched_capture_equals_one_prompt_at_a_time(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    for prompt in range(len(PROMPTS)):
        alone = capture(tiny_model, [ids[prompt]], [targets[prompt]])
        for key in batch.sites:
            for got, want in zip(batch.factors(prompt, key), alone.factors(0, key)):
                # Batching changes the summation order of every reduction, the deepest being the
                # unembedding's backward over the vocabulary, once per layer.
                assert_close_float32(got, want, **vocab_chain(tiny_model))
        assert_close_float32(batch.losses[prompt], alone.losses[0], **vocab_chain(tiny_model))


def test_padding_rows_have_zero_vjps(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    shortest = min(range(len(ids)), key=lambda i: len(ids[i]))
    for key in batch.sites:
        assert not batch.vjps[key][shortest, len(ids[shortest]) :].any()


def test_mlp_output_vjp_is_the_ff2_vjp(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    for layer in range(batch.n_layers):
        torch.testing.assert_close(batch.submodule_vjps[(layer, "mlp")], batch.vjps[(layer, "ff2")])


def test_last_layer_gradient_has_rank_one(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    last = batch.n_layers - 1
    for prompt in range(len(PROMPTS)):
        inputs, vjps = batch.factors(prompt, (last, "ff2"))
        assert not vjps[:-1].any(), "positions before the last reach no loss term in the last layer"
        assert gradient_rank(inputs, vjps).rank == 1
        for _, matrix in [k for k in batch.sites if k[0] == last]:
            assert gradient_rank(*batch.factors(prompt, (last, matrix))).rank == 1


def full_matrix_rank(inputs, vjps):
    """The cross-check: SVD of the full d_out x d_in gradient (in float64), same tolerance."""
    full = vjps.double().T @ inputs.double()
    return int(torch.linalg.matrix_rank(full, rtol=factor_rtol(inputs.shape[0], inputs.dtype)))


def test_rank_from_factors_equals_full_rank_on_real_gradients(tiny_model):
    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    for prompt in range(len(PROMPTS)):
        for key in batch.sites:
            inputs, vjps = batch.factors(prompt, key)
            assert gradient_rank(inputs, vjps).rank == full_matrix_rank(inputs, vjps), (prompt, key)


@pytest.mark.parametrize("n_tokens, d_in, d_out, true_rank", [(6, 40, 24, 6), (12, 40, 8, 8), (7, 30, 50, 3), (5, 16, 16, 1)])
def test_rank_from_factors_on_constructed_factors(n_tokens, d_in, d_out, true_rank):
    generator = torch.Generator().manual_seed(n_tokens * 100 + true_rank)
    # Inputs spanning only `true_rank` directions, as repeated tokens would give.
    basis = torch.randn(true_rank, d_in, generator=generator)
    inputs = torch.randn(n_tokens, true_rank, generator=generator) @ basis
    vjps = torch.randn(n_tokens, d_out, generator=generator)
    assert gradient_rank(inputs, vjps).rank == min(true_rank, d_out)
    assert gradient_rank(inputs, vjps).rank == full_matrix_rank(inputs, vjps)


def test_repeated_identical_rows_are_rank_deficient():
    generator = torch.Generator().manual_seed(3)
    row = torch.randn(1, 32, generator=generator)
    inputs = torch.cat([row, row, row, torch.randn(2, 32, generator=generator)])
    vjps = torch.randn(5, 32, generator=generator)
    assert gradient_rank(inputs, vjps).rank == 3 == full_matrix_rank(inputs, vjps)


def test_zero_gradient_has_rank_zero():
    assert gradient_rank(torch.randn(4, 8), torch.zeros(4, 6)).rank == 0


def test_neuron_change_norms_match_the_explicit_update(tiny_model):
    from backlens.analysis.spanning_sets import change_norms, neuron_change_factors

    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    for layer, matrix in batch.sites:
        coefficients, spanning = neuron_change_factors(batch, 1, layer, matrix)
        explicit = -(coefficients.T @ spanning)
        # One SGD step changes the weight by -gradient; neurons are its d_ff-indexed rows/columns.
        gradient = batch.gradient(1, (layer, matrix))
        site = batch.sites[(layer, matrix)]
        neuron_axis = gradient.T if (site.layout == "out_in") == (matrix == "ff2") else gradient
        # Both are sums over the prompt's P tokens, in another order (and the norm over d more).
        n_tokens = coefficients.shape[0]
        assert_close_float32(explicit, -neuron_axis, reduction=n_tokens)
        assert_close_float32(change_norms(coefficients, spanning), explicit.norm(dim=1), reduction=n_tokens * spanning.shape[1])


def test_stacked_ranks_equal_one_at_a_time(tiny_model):
    from backlens.analysis.ranks import gradient_ranks_stacked

    ids, targets = encode(tiny_model)
    batch = capture(tiny_model, ids, targets)
    layers = range(batch.n_layers)
    inputs = torch.stack([batch.factors(0, (layer, "ff2"))[0] for layer in layers])
    vjps = torch.stack([batch.factors(0, (layer, "ff2"))[1] for layer in layers])
    stacked = gradient_ranks_stacked(inputs, vjps)
    for layer, result in zip(layers, stacked):
        single = gradient_rank(*batch.factors(0, (layer, "ff2")))
        assert (result.rank, result.rtol) == (single.rank, single.rtol)
        assert result.sigma_ratios == pytest.approx(single.sigma_ratios, rel=1e-9, abs=1e-15)
