"""Model loading: the offline hub error, device/dtype resolution, and the embedded SmolLM2."""

import subprocess
import sys

import pytest
import torch

from backlens.models.loading import ModelUnavailableError, load_model, resolve_dtype
from conftest import PROJECT_ROOT, compose_config


def test_unreachable_hub_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as caught:
        load_model(compose_config("model=gpt2-xl").model)
    message = str(caught.value)
    assert "'gpt2-xl'" in message and "unreachable" in message and "model.path=" in message


def test_stage_prints_one_line_not_a_traceback(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           # This checkout's package, whichever checkout the interpreter has installed.
           "PYTHONPATH": str(PROJECT_ROOT / "src")}
    completed = subprocess.run(
        [sys.executable, "-m", "backlens.stage", "sample_prompts", "model=llama2-7b", f"paths.results={tmp_path}",
         f"hydra.run.dir={tmp_path}/hydra"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "meta-llama/Llama-2-7b-hf" in error_lines[0]
    assert not list(tmp_path.glob("*.parquet"))


def test_missing_local_path_is_reported():
    with pytest.raises(ModelUnavailableError, match="model.path=/nonexistent does not exist"):
        load_model(compose_config("model=gpt2", "model.path=/nonexistent").model)


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float64", torch.device("cpu")) == torch.float64
    with pytest.raises(ValueError, match="not a torch dtype"):
        resolve_dtype("float33", torch.device("cpu"))


def test_tiny_models_are_seeded(tiny_gpt2):
    again = load_model(compose_config("model=tiny-gpt2").model)
    for a, b in zip(tiny_gpt2.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_smollm2_knows_where_the_eiffel_tower_is():
    loaded = load_model(compose_config().model)
    assert loaded.adapter.n_layers == 30 and loaded.adapter.describe()["d_model"] == 576
    inputs = loaded.tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt")
    with torch.no_grad():
        top = loaded.model(**inputs).logits[0, -1].argmax().item()
    assert loaded.tokenizer.decode([top]) == " Paris"
