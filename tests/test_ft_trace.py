"""The FT trace (issue 16): its first step is lr x the FF2 gradient, its recorded ranks and cosines agree
with an explicit loop of autograd gradients, Adam's first step is lr x sign, and the weights come back."""

import pytest
import torch

from backlens.analysis.factored_updates import FactoredUpdate
from backlens.analysis.beyond_summary import steps_to_top1
from backlens.analysis.ft_trace import TraceSettings, layers_from_fractions, trace_edit
from backlens.analysis.lemma import autograd_gradients
from tolerances import EPS32, assert_close_after_update

PROMPT, TARGET = "The mother tongue of Danielle Darrieux is", " English"
LAYER = 1


def encode(loaded):
    return loaded.tokenizer(PROMPT)["input_ids"], loaded.tokenizer(TARGET, add_special_tokens=False)["input_ids"][0]


def weights_per_step(loaded, settings):
    """Run a trace, keeping the FF2 weight after every step."""
    ids, target = encode(loaded)
    weights = []
    rows = trace_edit(loaded, ids, target, LAYER, settings,
                      on_step=lambda step, site: weights.append(site.weight.detach().clone()))
    return rows, weights


def test_first_gd_step_is_lr_times_the_ff2_gradient(tiny_model):
    ids, target = encode(tiny_model)
    site = tiny_model.adapter.ff2_site(LAYER)
    original = site.weight.detach().clone()
    gradient = autograd_gradients(tiny_model, ids, target)[(LAYER, "ff2")]
    settings = TraceSettings(steps=1, optimizer="sgd", lr=0.5)
    rows, weights = weights_per_step(tiny_model, settings)
    assert_close_after_update(weights[0], original, -settings.lr * gradient)
    assert torch.equal(site.weight, original), "the trace restores the weight"
    row = rows[0]
    assert row["step"] == 1 and row["cosine_first"] == 1.0 and row["rank_method"] == "factors"
    assert row["step_rank"] == row["accumulated_rank"] <= len(ids) == row["rank_bound"]
    relative = abs(row["step_update_norm"] - settings.lr * float(gradient.double().norm())) / row["step_update_norm"]
    assert relative < 1e-5


def test_recorded_ranks_and_cosines_match_an_explicit_loop(tiny_model):
    """The same K steps by hand: autograd's FF2 gradient at each step's weights, W -= lr G."""
    ids, target = encode(tiny_model)
    settings = TraceSettings(steps=4, optimizer="sgd", lr=2.0)
    rows, weights = weights_per_step(tiny_model, settings)
    site = tiny_model.adapter.ff2_site(LAYER)
    original = site.weight.detach().clone()
    gradients = []
    try:
        for step in range(settings.steps):
            gradient = autograd_gradients(tiny_model, ids, target)[(LAYER, "ff2")]
            gradients.append(site.as_out_in(gradient).double())
            with torch.no_grad():
                site.weight.add_(gradient, alpha=-settings.lr)
            assert_close_after_update(site.weight.detach(), weights[step], torch.zeros_like(gradient))
    finally:
        with torch.no_grad():
            site.weight.copy_(original)
    n_tokens = len(ids)
    accumulated = torch.zeros_like(gradients[0])
    for step, (row, gradient) in enumerate(zip(rows, gradients), start=1):
        accumulated = accumulated - settings.lr * gradient
        cosine = float((gradient * gradients[0]).sum() / (gradient.norm() * gradients[0].norm()))
        # Factors and autograd form the same float32 sums in another order: agreement to ~1e-6.
        assert row["cosine_first"] == pytest.approx(cosine, abs=1e-5)
        assert row["accumulated_norm"] == pytest.approx(float(accumulated.norm()), rel=1e-5)
        rtol = n_tokens * EPS32  # one input block: the edited matrix's input never changes
        assert row["accumulated_rank"] == int(torch.linalg.matrix_rank(accumulated, rtol=rtol))
        assert row["accumulated_rank"] <= n_tokens <= row["rank_bound"] == min(step * n_tokens, *accumulated.shape)


def test_factored_update_rank_equals_the_full_matrix_rank():
    generator = torch.Generator().manual_seed(0)
    update = FactoredUpdate()
    shared = torch.randn(5, 40, generator=generator)
    for scale in (-0.5, -0.25):  # two steps on the same inputs merge into one block
        update.add(shared, torch.randn(5, 24, generator=generator), scale)
    update.add(torch.randn(3, 40, generator=generator), torch.randn(3, 24, generator=generator), -1.0)
    assert update.n_rows == 8
    full = update.matrix()
    result = update.rank()
    assert result.rank == 8 == int(torch.linalg.matrix_rank(full, rtol=result.rtol))
    assert update.norm() == pytest.approx(float(full.norm()), rel=1e-12)
    x = torch.randn(2, 40, generator=generator)
    torch.testing.assert_close(update.apply(x), x.double() @ full.T)


def test_adam_first_step_is_lr_times_the_gradient_sign(tiny_llama):
    ids, target = encode(tiny_llama)
    site = tiny_llama.adapter.ff2_site(LAYER)
    original = site.weight.detach().clone()
    gradient = autograd_gradients(tiny_llama, ids, target)[(LAYER, "ff2")]
    settings = TraceSettings(steps=2, optimizer="adam", lr=1e-3)
    rows, weights = weights_per_step(tiny_llama, settings)
    # Adam's first step: m_hat = g, v_hat = g^2, so the change is -lr g / (|g| + eps).
    assert_close_after_update(weights[0], original, -settings.lr * gradient / (gradient.abs() + 1e-8))
    assert rows[0]["rank_method"] == "svd_float32_rule" and rows[0]["rank_bound"] is None
    assert torch.equal(site.weight, original)


def test_weights_come_back_when_a_step_fails(tiny_gpt2):
    ids, target = encode(tiny_gpt2)
    site = tiny_gpt2.adapter.ff2_site(LAYER)
    original = site.weight.detach().clone()

    def fail(step, site):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        trace_edit(tiny_gpt2, ids, target, LAYER, TraceSettings(steps=3, lr=10.0), on_step=fail)
    assert torch.equal(site.weight, original) and site.weight.grad is None


def test_settings_and_helpers():
    with pytest.raises(ValueError, match="optimizer"):
        TraceSettings(optimizer="lbfgs")
    assert layers_from_fractions([0.25, 0.5, 0.73], 30) == [8, 15, 22]
    assert layers_from_fractions([0.25, 0.5, 0.73], 3) == [1, 2]
    assert steps_to_top1([5, 3, 0, 1, 0]) == 3.0
    assert steps_to_top1([5, 3]) != steps_to_top1([5, 3])  # NaN: never top-1
