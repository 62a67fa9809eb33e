"""Every method has layers for any model (per_model or defaults by relative depth); MEMIT refuses
models whose MLP output does not join the residual unchanged (Gemma 2/3)."""

from __future__ import annotations

import pandas as pd
import pytest

from backlens.editing.memit import check_mlp_output_joins_residual
from backlens.editing.base import NoEdit
from backlens.editing.run_config import other_method_hparams, statistics_layers
from backlens.stages import editing_covariance, editing_evaluate
from backlens.project import config_dir
from conftest import compose_config, require_shared

METHODS = sorted(p.stem for p in config_dir("method").glob("*.yaml"))


@pytest.mark.parametrize("model,n_layers", [("tiny-llama", 3), ("gemma3-270m", 18), ("smollm2-135m", 30), ("gpt2-xl", 48)])
def test_every_method_has_layers_inside_the_model(model, n_layers):
    cfg = compose_config(f"model={model}")
    for method in METHODS:
        hparams = other_method_hparams(cfg, method, n_layers)
        layers = [int(x) for x in hparams.get("layers", [])] + ([int(hparams["layer"])] if "layer" in hparams else [])
        if method in ("none",):
            continue
        assert layers and all(0 <= layer < n_layers for layer in layers), (method, hparams)
    assert other_method_hparams(cfg, "mend", n_layers)["layers"][-1] == n_layers - 1
    memit = other_method_hparams(cfg, "memit", n_layers)["layers"]
    assert memit == sorted(memit) and len(memit) == min(5, memit[-1] + 1)


def test_gpt2_xl_keeps_the_published_layers():
    cfg = compose_config("model=gpt2-xl")
    assert other_method_hparams(cfg, "rome", 48)["layer"] == 17
    assert other_method_hparams(cfg, "memit", 48)["layers"] == [13, 14, 15, 16, 17]
    assert other_method_hparams(cfg, "mend", 48)["layers"] == [45, 46, 47]
    assert other_method_hparams(cfg, "rome", 48)["layer"] == round(0.354 * 48)


def test_memit_stage_runs_on_a_model_without_per_model_values(tmp_path):
    # tiny-llama has no per_model entry in conf/method/memit.yaml or mend.yaml.
    require_shared("data", "counterfact")
    overrides = [f"paths.results={tmp_path}", "model=tiny-llama", "method=memit", "editing.n_cases=1",
                 "editing.n_generation_cases=0", "editing.n_perplexity_cases=0", "editing.corpus.n_blocks=8",
                 "editing.corpus.batch_size=8", "editing.corpus.block_tokens=16", "editing.corpus.n_heldout_blocks=1",
                 "++methods.memit.v_num_grad_steps=2", "++methods.memit.context_template_length_params=[[4,5]]"]
    cfg = compose_config(*overrides)
    # MEMIT's default layers 0-1 (ROME's 1 among them) and the whitened shift's layer 2 (round(0.73 x 3));
    # the shift sweep's layers (2 - 2, 2, 2 + 2 inside the model: 0 and 2) add none.
    assert statistics_layers(cfg, 3) == [0, 1, 2]
    editing_covariance.run(cfg)
    editing_evaluate.run(cfg)
    cases = pd.read_parquet(cfg.paths.editing_cases)
    assert len(cases) == 1


def test_memit_refuses_a_post_feed_forward_norm_in_one_line_naming_rome(tiny_llama, tiny_gemma3):
    check_mlp_output_joins_residual(NoEdit(tiny_llama, {}), 1)
    for layer in range(tiny_gemma3.adapter.n_layers):
        with pytest.raises(ValueError) as refusal:
            check_mlp_output_joins_residual(NoEdit(tiny_gemma3, {}), layer)
        message = str(refusal.value)
        assert "\n" not in message and "does not add its MLP output to the residual unchanged" in message
        assert "post-feed-forward norm" in message and "use ROME" in message
