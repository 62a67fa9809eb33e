"""Each editing method on every tiny model family: what it changes, and that it edits."""

from __future__ import annotations

import math

import pytest
import torch

from tolerances import assert_close_after_update
from backlens.data.counterfact import PromptWithAnswer
from backlens.data.segments import first_target_token
from backlens.editing.evaluation import evaluate_case
from backlens.editing.keys_values import context_templates, optimise_target, outputs_at_subject
from backlens.editing import memit
from backlens.editing.memit import MassEditingMemory
from backlens.editing.mend import MendEditor
from backlens.editing.requests import EditRequest
from backlens.editing.rome import RankOneModelEditing
from backlens.editing.scoring import score_answers
from backlens.editing.weights import restored_after
from backlens.editing.shift import ForwardPassShift
from backlens.editing.ft import ConstrainedFineTuning
from backlens.editing.mend_training import train_mend
from backlens.editing.base import NoEdit
from backlens.editing.covariance import accumulate_second_moments
from backlens.models.hooks import record_module_io
from conftest import compose_config

REQUEST = EditRequest(
    case_id=7,
    prompt="The mother tongue of Danielle Darrieux is",
    subject="Danielle Darrieux",
    target_new="English",
    target_true="French",
    paraphrase_prompts=("Where Danielle Darrieux is from, people speak the language of",),
    neighborhood_prompts=(PromptWithAnswer("Michel Rocard is a native speaker of", "French"),),
    generation_prompts=("The mother tongue of Danielle Darrieux is",),
    generation_source="edit_and_paraphrase_prompts",
)
EVALUATION = {"batch_size": 8, "seed": 0, "generation": {"max_new_tokens": 6, "top_k": 5},
              "free_generation": {"margin_tokens": 2}}
# ROME's GPT-2 XL value-optimisation settings (KL, weight decay and the norm clamp all active)
# with fixed context templates (sampling them is tested on its own below).
VALUE_HPARAMS = {
    "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 0.5, "v_loss_layer": None, "v_weight_decay": 0.5,
    "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "stop_below_loss": 5e-2, "mom2_adjustment": True, "seed": 0,
}
TEMPLATES = ["{}", "The first thing. {}", "I am not sure what. {}"]
MEMIT_TEMPLATES = [["{}"], ["The first thing. {}", "I am not sure what. {}"]]


# MEMIT's refusal of a block whose MLP output is normalised before the residual add (Gemma 3);
# test_memit_through_a_post_feed_forward_norm_misses_z_star shows why.
MEMIT_REFUSAL = "does not add its MLP output to the residual unchanged"


def refuses_memit(loaded) -> bool:
    return loaded.model.config.model_type == "gemma3_text"


def nll_new(loaded, request=REQUEST) -> float:
    return score_answers(loaded.model, loaded.tokenizer, [(request.prompt, request.target_new)])[0].mean_nll


def target_embeddings_agree(loaded, request=REQUEST) -> bool:
    """Whether the first target token's input embedding and unembedding row point the same way."""
    token = first_target_token(loaded.tokenizer, request.prompt, request.target_new)
    embedding, unembedding = loaded.adapter.input_embedding[token], loaded.adapter.unembedding[token]
    return float(embedding @ unembedding) > 0


def state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict, model) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())]


@pytest.fixture(scope="module")
def statistics(tiny_model, tmp_path_factory):
    """FF2 second moments of every layer of the tiny model, from its own samples."""
    path = tmp_path_factory.mktemp("stats") / f"{tiny_model.name}.pt"
    corpus = {"source": "model_samples", "path": None, "top_k": 40, "seed": 1, "block_tokens": 48, "batch_size": 8, "n_blocks": 16}
    layers = list(range(tiny_model.adapter.n_layers))
    sums = accumulate_second_moments(tiny_model, layers, corpus, path.with_suffix(".partial"))
    torch.save({"mom2": {l: s / sums["n_tokens"] for l, s in sums["sums"].items()}, "corpus": sums["corpus"]}, path)
    return path


def test_shift_adds_exactly_eta_outer_activation_embedding(tiny_model):
    layer, eta = 1, 0.7
    editor = ForwardPassShift(tiny_model, {"layer": layer, "eta": eta, "skip_if_predicted": False})
    site = tiny_model.adapter.ff2_site(layer)
    with torch.no_grad(), record_module_io({"ff2": site.module}, outputs=False) as record:
        tiny_model.model(input_ids=editor.prompt_ids(REQUEST.prompt))
    activation = record.inputs["ff2"][0, -1]
    embedding = tiny_model.adapter.input_embedding[first_target_token(tiny_model.tokenizer, REQUEST.prompt, REQUEST.target_new)]
    expected = eta * (torch.outer(activation, embedding) if site.layout == "in_out" else torch.outer(embedding, activation))
    before = state(tiny_model.model)
    editor.apply(REQUEST)
    try:
        names = changed(before, tiny_model.model)
        # The adapter's FF2 matrix, by identity: its module name differs per family.
        assert len(names) == 1 and dict(tiny_model.model.named_parameters())[names[0]] is site.weight
        difference = site.weight.detach() - before[names[0]]
        # W + eta a e^T is rounded once to the weights' precision: half an ulp of W, not of the change.
        assert_close_after_update(site.weight.detach(), before[names[0]], expected)
        assert torch.linalg.matrix_rank(difference).item() == 1
    finally:
        with torch.no_grad():
            site.weight.copy_(before[names[0]])


@pytest.mark.parametrize("kind", ["shift", "ft", "rome", "memit", "mend"])
def test_edit_raises_target_probability_and_restores_bit_identically(tiny_model, statistics, tmp_path, kind):
    n = tiny_model.adapter.n_layers
    if kind == "shift":
        editor = ForwardPassShift(tiny_model, {"layer": n - 1, "eta": 50.0, "skip_if_predicted": True})
    elif kind == "ft":
        editor = ConstrainedFineTuning(tiny_model, {"layer": n - 1, "num_steps": 10, "lr": 1e-2, "norm_constraint": 0.05, "stop_below_loss": 0.0})
    elif kind == "rome":
        editor = RankOneModelEditing(tiny_model, {**VALUE_HPARAMS, "layer": 1, "stats_path": str(statistics)}, templates=TEMPLATES)
    elif kind == "memit":
        hparams = {**VALUE_HPARAMS, "clamp_norm_factor": 0.75, "layers": [0, 1], "mom2_update_weight": 1.0,
                   "stats_path": str(statistics)}
        if refuses_memit(tiny_model):
            with pytest.raises(ValueError, match=MEMIT_REFUSAL):
                MassEditingMemory(tiny_model, hparams, templates=MEMIT_TEMPLATES)
            return
        editor = MassEditingMemory(tiny_model, hparams, templates=MEMIT_TEMPLATES)
    else:
        checkpoint = tmp_path / "mend.pt"
        hparams = {"layers": [n - 1], "rank": 8, "log_lr_init": 0.0, "train_lr": 1e-3, "train_steps": 2, "n_norm_cases": 1,
                   "edit_weight": 1.0, "locality_weight": 1.0, "grad_clip": 10.0, "checkpoint_every": 1}
        train_mend(NoEdit(tiny_model, {}), [REQUEST], hparams, checkpoint, seed=0)
        editor = MendEditor(tiny_model, {"layers": [n - 1], "checkpoint": str(checkpoint)})
    before_state = state(tiny_model.model)
    before_nll = nll_new(tiny_model)
    editor.apply(REQUEST)
    try:
        # On the random tiny models the outputs barely move, and with ROME's knobs the weight decay
        # (|delta| / |v|^2, v small here) outweighs the NLL: measured, the target NLL does not fall
        # for MEMIT (tiny GPT-2 10.8385 -> 10.8395) nor for ROME on tiny Llama (10.63 -> 10.91,
        # the C^-1 k direction also moving other positions' FF2 outputs) and tiny NeoX
        # (10.84671 -> 10.84701). Their key/value constraint, z* and agreement with the original
        # code are tested below and in test_golden_rome_memit.py; their efficacy on SmolLM2 is in
        # results/<model>/tables/table1.md. Shift adds the target's *input* embedding to the
        # residual, which raises the target logit only where that embedding leans towards the
        # target's unembedding row: always when tied (tiny GPT-2, tiny Gemma 3), by chance on random untied
        # weights (cosine 0.14 on tiny Llama; -0.02 on tiny Qwen2 and -0.26 on tiny NeoX, where
        # the NLL rises 10.638 -> 10.642 and 10.847 -> 10.945). That it writes exactly
        # eta a e^T into FF2 is tested above for every family.
        if kind == "shift":
            expect_gain = target_embeddings_agree(tiny_model)
        else:
            expect_gain = not (kind == "memit" or (kind == "rome" and tiny_model.name in ("tiny-llama", "tiny-neox")))
        if expect_gain:
            assert nll_new(tiny_model) < before_nll
        touched = changed(before_state, tiny_model.model)
        edited = {id(p) for p in editor.edited_parameters()}
        assert touched and all(id(dict(tiny_model.model.named_parameters())[name]) in edited for name in touched)
    finally:
        with torch.no_grad():
            for name, p in tiny_model.model.named_parameters():
                p.copy_(before_state[name])
    row = evaluate_case(editor, REQUEST, EVALUATION, generate=True, perplexity_blocks=None)
    assert not changed(before_state, tiny_model.model), "evaluate_case must restore every weight bit for bit"
    assert row["generation_entropy"] is not None and row["efficacy"] in (0.0, 1.0)


def test_rome_update_is_rank_one_and_maps_the_key_to_the_target_value(tiny_model, statistics):
    editor = RankOneModelEditing(tiny_model, {**VALUE_HPARAMS, "layer": 1, "stats_path": str(statistics)}, templates=TEMPLATES)
    site = tiny_model.adapter.ff2_site(1)
    before = site.weight.detach().clone()
    left, right, info = editor.rank_one_factors(REQUEST)
    with torch.no_grad():
        site.weight.add_(site.gradient_from_factors(left[None], right[None]))
    try:
        assert torch.linalg.matrix_rank(site.weight.detach() - before).item() == 1
        after = outputs_at_subject(editor, 1, REQUEST)
        torch.testing.assert_close(after["ff2_out"], info["target_value"], rtol=1e-4, atol=1e-5)
    finally:
        with torch.no_grad():
            site.weight.copy_(before)


def test_memit_spreads_the_update_over_all_its_layers_and_reaches_z_star(tiny_model, statistics):
    # With the bare prompt as the only template, MEMIT's key is the prompt's own key; with a
    # negligible covariance weight k . (w C + k k^T)^-1 k -> 1, so each layer writes its share of
    # the residual exactly and the last one closes it: the block output at the subject becomes z*.
    layers = [0, 1]
    hparams = {**VALUE_HPARAMS, "clamp_norm_factor": 0.75, "layers": layers, "mom2_update_weight": 1e-9,
               "stats_path": str(statistics)}
    if refuses_memit(tiny_model):
        with pytest.raises(ValueError, match=MEMIT_REFUSAL):
            MassEditingMemory(tiny_model, hparams, templates=[["{}"]])
        return
    editor = MassEditingMemory(tiny_model, hparams, templates=[["{}"]])
    before = state(tiny_model.model)
    weights = [tiny_model.adapter.ff2_site(layer).weight.detach().clone() for layer in layers]
    start = outputs_at_subject(editor, layers[-1], REQUEST)["block_out"]
    try:
        factors, info = editor.update_factors(REQUEST)
        assert len(changed(before, tiny_model.model)) == len(layers)
        for layer, weight in zip(layers, weights):
            difference = (tiny_model.adapter.ff2_site(layer).weight.detach() - weight).double()
            assert torch.linalg.matrix_rank(difference, rtol=1e-4).item() == 1
        reached = outputs_at_subject(editor, layers[-1], REQUEST)["block_out"]
        scale = float(info["target"].norm())
        assert float((reached - info["target"]).norm()) <= 1e-4 * scale
        assert float((start - info["target"]).norm()) > 1e-2 * scale
    finally:
        with torch.no_grad():
            for name, p in tiny_model.model.named_parameters():
                p.copy_(before[name])


def test_memit_through_a_post_feed_forward_norm_misses_z_star(tiny_gemma3, monkeypatch):
    """Why MEMIT refuses Gemma 3: with the refusal bypassed, the setting that reaches z* within 1e-4
    above (bare prompt, negligible covariance weight) leaves the block output far from it. The FF2
    update places its share of z* - z in the MLP output, but the post-feed-forward RMSNorm then
    rescales that output to a fixed RMS (src/backlens/editing/README.md: no exact solve in general).
    Measured: 0.41 of |z*| away (0.87 before the edit)."""
    monkeypatch.setattr(memit, "check_mlp_output_joins_residual", lambda editor, layer: None)
    layers = [0, 1]
    d_ff = tiny_gemma3.adapter.ff2_site(0).weight.shape[1]
    editor = MassEditingMemory(
        tiny_gemma3, {**VALUE_HPARAMS, "clamp_norm_factor": 0.75, "layers": layers, "mom2_update_weight": 1e-9},
        second_moments={layer: torch.eye(d_ff) for layer in layers}, templates=[["{}"]],
    )
    before = state(tiny_gemma3.model)
    try:
        start = outputs_at_subject(editor, layers[-1], REQUEST)["block_out"]
        _, info = editor.update_factors(REQUEST)
        reached = outputs_at_subject(editor, layers[-1], REQUEST)["block_out"]
        scale = float(info["target"].norm())
        assert float((reached - info["target"]).norm()) > 0.1 * scale
        assert float((reached - info["target"]).norm()) < float((start - info["target"]).norm())  # it moved, not enough
    finally:
        with torch.no_grad():
            for name, p in tiny_gemma3.model.named_parameters():
                p.copy_(before[name])


def test_a_mend_checkpoint_of_another_data_file_is_not_resumed(tmp_path):
    from backlens.editing.mend_training import resumable_state
    from backlens.io import write_torch

    inputs = {"dataset": {"path": "/data/a.json", "sha256": "aa"}, "hparams": {"rank": 8}, "seed": 0, "case_ids": [1, 2]}
    partial = write_torch({"inputs": inputs, "step": 3}, tmp_path / "mend.pt.partial")
    assert resumable_state(partial, inputs)["step"] == 3
    assert resumable_state(partial, {**inputs, "dataset": {"path": "/data/a.json", "sha256": "bb"}}) is None
    assert resumable_state(tmp_path / "absent.partial", inputs) is None


def test_torch_files_have_the_same_bytes_for_the_same_object(tmp_path):
    from backlens.io import write_torch

    state = {"mom2": {3: torch.eye(4, dtype=torch.float64)}, "n_tokens": 10}
    first, second = write_torch(state, tmp_path / "a.pt"), write_torch(state, tmp_path / "b" / "c.pt")
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.load(second)["mom2"][3], state["mom2"][3])


def test_value_optimisation_runs_n_forwards_and_n_minus_1_steps(tiny_model, statistics):
    # ROME's compute_v stops before the update on the last forward and whenever the total loss
    # is below the threshold: a threshold above the first loss leaves delta at zero after one forward.
    editor = RankOneModelEditing(tiny_model, {**VALUE_HPARAMS, "v_num_grad_steps": 1, "layer": 1, "stats_path": str(statistics)},
                                 templates=TEMPLATES)
    assert torch.count_nonzero(optimise_target(editor, REQUEST, TEMPLATES, 1, "mlp", editor.hparams).delta) == 0
    stopped = optimise_target(editor, REQUEST, TEMPLATES, 1, "mlp", {**editor.hparams, "v_num_grad_steps": 5, "stop_below_loss": 1e9})
    assert stopped.steps == 1 and torch.count_nonzero(stopped.delta) == 0
    moved = optimise_target(editor, REQUEST, TEMPLATES, 1, "mlp", {**editor.hparams, "v_num_grad_steps": 3})
    assert moved.steps == 3 and float(moved.delta.norm()) <= 4.0 * float(moved.initial.norm()) * (1 + 1e-6)


def test_context_templates_follow_rome_and_memit(tiny_model):
    editor = NoEdit(tiny_model, {})
    rome = context_templates(editor, [[3, 2], [5, 3]], None, seed=0)
    assert rome[0] == ["{}"] and len(rome[1]) == 5
    memit = context_templates(editor, [[6, 5]], ["The", "Therefore", "Because", "I", "You"], seed=0)
    assert [t.startswith(s) for t, s in zip(memit[1], ["The", "Therefore", "Because", "I", "You"])] == [True] * 5
    for template in rome[1] + memit[1]:
        assert template.endswith(". {}") and template.count("{") == 1 and template.count("}") == 1
        assert "<|endoftext|>" not in template
    # Lengths count the start token: 3 tokens in all are the start and two sampled tokens.
    assert all(len(tiny_model.tokenizer(t[: -len(". {}")], add_special_tokens=False)["input_ids"]) <= 4 for t in rome[1][:2])
    assert context_templates(editor, [[3, 2]], None, seed=0) == context_templates(editor, [[3, 2]], None, seed=0)


def test_trained_mend_editor_edits_better_than_the_untrained_one(tiny_model, tmp_path):
    n = tiny_model.adapter.n_layers
    hparams = {"layers": [n - 1], "rank": 8, "log_lr_init": -2.0, "train_lr": 1e-2, "n_norm_cases": 1,
               "edit_weight": 1.0, "locality_weight": 1.0, "grad_clip": 10.0, "checkpoint_every": 100}
    after = {}
    for steps in (0, 40):
        checkpoint = tmp_path / f"mend{steps}.pt"
        train_mend(NoEdit(tiny_model, {}), [REQUEST], {**hparams, "train_steps": steps}, checkpoint, seed=0)
        editor = MendEditor(tiny_model, {"layers": [n - 1], "checkpoint": str(checkpoint)})
        with restored_after(editor.edited_parameters()):
            editor.apply(REQUEST)
            after[steps] = nll_new(tiny_model)
    assert after[40] < after[0]


def test_mend_training_gives_identical_weights_whatever_the_caller_set(tiny_gpt2, tmp_path):
    """Seeded, deterministic kernels, a fixed thread count: the caller's RNG state and thread count
    do not reach the trained editor, and both are set back afterwards."""
    n = tiny_gpt2.adapter.n_layers
    hparams = {"layers": [n - 1], "rank": 8, "log_lr_init": -2.0, "train_lr": 1e-2, "train_steps": 4, "n_norm_cases": 1,
               "edit_weight": 1.0, "locality_weight": 1.0, "grad_clip": 10.0, "checkpoint_every": 100, "train_threads": 1}
    previous = torch.get_num_threads()
    trained = []
    for caller_seed, caller_threads in ((1, 1), (2, 2)):
        torch.manual_seed(caller_seed)
        torch.set_num_threads(caller_threads)
        try:
            state = train_mend(NoEdit(tiny_gpt2, {}), [REQUEST], hparams, tmp_path / f"mend{caller_seed}.pt", seed=0)
            assert torch.get_num_threads() == caller_threads and not torch.are_deterministic_algorithms_enabled()
        finally:
            torch.set_num_threads(previous)
        trained.append(state["networks"])
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])
    assert not torch.equal(trained[0][f"{n - 1}.down.weight"], torch.zeros_like(trained[0][f"{n - 1}.down.weight"]))
