"""Shared fixtures: project paths, Hydra composition, tiny random GPT-2, Llama, Qwen2, GPT-NeoX and Gemma 3 models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from backlens.models.loading import load_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(os.environ.get("BACKLENS_SHARED", PROJECT_ROOT.parent / "shared"))
# Every `backlens` subprocess of the suite runs in its own process and leaves no resident server
# behind (backlens.commands.resident); tests/test_resident.py turns it on for its own commands.
os.environ["BACKLENS_SERVER"] = "off"


@pytest.fixture(autouse=True, scope="session")
def _run_from_project_root():
    """Configs use paths relative to the project root, as the pipeline does."""
    previous = os.getcwd()
    os.chdir(PROJECT_ROOT)
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True, scope="session")
def _hermetic_cache(tmp_path_factory):
    """De-quantized models are cached in a folder of this session, never in the user's ~/.cache;
    subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("backlens-cache")
    previous = os.environ.get("BACKLENS_CACHE")
    os.environ["BACKLENS_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("BACKLENS_CACHE", None)
    else:
        os.environ["BACKLENS_CACHE"] = previous
    shutil.rmtree(folder, ignore_errors=True)  # ~0.5 GB once SmolLM2 has been loaded


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared(*relative: str) -> Path:
    """Path inside ../shared. Absent: a failure in CI (CI=true), where ../shared is part of the
    set-up and a skip would hide half the suite; elsewhere a skip that says what is missing."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        message = f"{path} is absent: this test reads the shared data beside the project (set BACKLENS_SHARED)"
        if IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2():
    require_shared("assets", "gpt2_tokenizer")
    return load_model(compose_config("model=tiny-gpt2").model)


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model(compose_config("model=tiny-llama").model)


@pytest.fixture(scope="session")
def tiny_qwen2():
    return load_model(compose_config("model=tiny-qwen2").model)


@pytest.fixture(scope="session")
def tiny_neox():
    require_shared("assets", "gpt2_tokenizer")
    return load_model(compose_config("model=tiny-neox").model)


@pytest.fixture(scope="session")
def tiny_gemma3():
    require_shared("assets", "gpt2_tokenizer")
    return load_model(compose_config("model=tiny-gemma3").model)


# Every family an adapter serves: GPT-2 (Conv1D), Llama and Qwen2 (gated MLP; Qwen2 with biased
# q/k/v), GPT-NeoX (parallel attention and MLP, partial rotary), Gemma 3 (sliding-window layers,
# per-type rotary, post-feed-forward norms, embeddings scaled inside the embedding).
@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "tiny_qwen2", "tiny_neox", "tiny_gemma3"], scope="session")
def tiny_model(request):
    return request.getfixturevalue(request.param)
