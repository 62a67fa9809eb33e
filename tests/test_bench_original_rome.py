"""benchmarks/editing_latency.py --original-rome: our ROME hyper-parameters as kmeng01/rome's, the
checkout check, and (only where ROME_ORIGINAL points to a kmeng01/rome checkout; CI skips it) the
original execute_rome against ours on the tiny models through benchmarks/support/original_rome.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, compose_config

from backlens.editing.methods import build_editor, method_hparams
from backlens.editing.requests import EditRequest

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from support.original_rome import (  # noqa: E402
    OriginalRome,
    OriginalRomeError,
    check_checkout,
    checkout_commit,
    module_templates,
    request_dict,
    rome_hparams,
    time_beside,
)

# The fields of ROMEHyperParams at kmeng01/rome 0874014 (rome/rome_hparams.py).
ROME_FIELDS = ["layers", "fact_token", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "clamp_norm_factor",
               "kl_factor", "mom2_adjustment", "context_template_length_params", "rewrite_module_tmp", "layer_module_tmp",
               "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module", "mom2_dataset", "mom2_n_samples",
               "mom2_dtype"]
LLAMA = {"rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
         "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
         "ln_f_module": "model.norm", "lm_head_module": "lm_head"}
GPT2 = {"rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f", "lm_head_module": "lm_head"}
ROME_ORIGINAL = os.environ.get("ROME_ORIGINAL")


def test_smollm2_rome_hparams_map_to_the_original_fields():
    cfg = compose_config("model=smollm2-135m", "method=rome")
    ours = method_hparams(cfg.method, "smollm2-135m", 30)
    mapped = rome_hparams(ours, LLAMA, 30)
    assert list(mapped) == ROME_FIELDS
    assert mapped["layers"] == [10] and mapped["v_loss_layer"] == 29 and mapped["mom2_dtype"] == "float32"
    for key in ("fact_token", "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "mom2_adjustment"):
        assert mapped[key] == ours[key], key
    assert mapped["context_template_length_params"] == [[5, 10], [10, 10]]
    assert {k: mapped[k] for k in LLAMA} == LLAMA
    with pytest.raises(OriginalRomeError, match="stop_below_loss"):
        rome_hparams({**ours, "stop_below_loss": 0.1}, LLAMA, 30)


def test_module_templates_are_read_off_the_model(tiny_llama, tiny_gpt2):
    assert module_templates(tiny_llama, 1) == LLAMA
    assert module_templates(tiny_gpt2, 1) == GPT2


def test_request_becomes_a_template_at_the_subject_slot():
    request = EditRequest(7, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")
    assert request_dict(request) == {"case_id": 7, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                     "target_new": {"str": "English"}}


def test_checkout_and_commit_checks(tmp_path):
    with pytest.raises(OriginalRomeError, match=r"not a kmeng01/rome checkout \(no rome/rome_main.py\)"):
        check_checkout(tmp_path)
    with pytest.raises(OriginalRomeError, match="--original-rome-commit"):
        checkout_commit(tmp_path)
    (tmp_path / "COMMIT").write_text("0874014cd9837e4365f3e6f3c71400ef11509e04\n")
    assert checkout_commit(tmp_path) == "0874014cd9837e4365f3e6f3c71400ef11509e04"
    assert checkout_commit(tmp_path, "abc") == "abc"


def test_benchmark_rejects_a_path_that_is_no_checkout_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    completed = subprocess.run([sys.executable, "benchmarks/editing_latency.py", "--original-rome", str(tmp_path)],
                               cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"editing_latency.py: --original-rome {tmp_path}: not a kmeng01/rome checkout (no rome/rome_main.py); pass the "
        "root of a clone of https://github.com/kmeng01/rome kept outside this repository"]


@pytest.mark.skipif(not ROME_ORIGINAL, reason="ROME_ORIGINAL (a kmeng01/rome checkout outside this repository) is unset")
@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_llama"])
def test_original_execute_rome_computes_our_update(model, request):
    """Needs the original code: ROME_ORIGINAL=/path/to/kmeng01-rome pytest tests/test_bench_original_rome.py.
    Same bound as the golden tests (relative Frobenius 2e-2); measured ~1e-5 on one thread."""
    loaded = request.getfixturevalue(model)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_config(f"model={loaded.name}", "method=rome")
        d_ff = loaded.adapter.ff2_site(1).in_features
        g = torch.randn(d_ff, 4 * d_ff, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        covariance = g @ g.T / (4 * d_ff) + 0.1 * torch.eye(d_ff, dtype=torch.float64)
        templates = ["{}", "The city of Paris. {}", "I think that. {}"]
        editor, _ = build_editor(loaded, cfg.method, extra={"layer": 1, "v_num_grad_steps": 6}, covariance=covariance,
                                 templates=templates)
        runner = OriginalRome(ROME_ORIGINAL, editor, covariance)
        requests = [EditRequest(0, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French"),
                    EditRequest(1, "Toko Yasuda plays the", "Toko Yasuda", "piano", "guitar")]
        out = time_beside(editor, runner, requests)
    finally:
        torch.set_num_threads(previous)
    assert out["ours_forwards"] == out["original_forwards"]
    assert max(out["rel_diff"]) <= 2e-2, out["rel_diff"]
    assert all(s > 0 for s in out["ours_s"] + out["original_s"])
