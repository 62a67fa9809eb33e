"""Which model a name stands for: a model config (``backlens/conf/model/``), a local folder, or a Hugging Face id."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from backlens.errors import UserError
from backlens.conf import DEFAULT_MODEL
from backlens.project import config_dir, in_checkout, project_root
from backlens.models.loading import LoadedModel, ModelUnavailableError, load_model, resolve_device, resolve_dtype

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _check_same_placement(loaded: LoadedModel, device: str | None, dtype: str | None) -> None:
    """A device or dtype given with an already loaded model must be the one it has."""
    asked_device = resolve_device(device) if device is not None else loaded.device
    asked_dtype = resolve_dtype(dtype, asked_device) if dtype is not None else loaded.dtype
    # torch.device("cuda") and the loaded "cuda:0" are the same place.
    same_device = asked_device.type == loaded.device.type and asked_device.index in (None, loaded.device.index)
    if not same_device or asked_dtype != loaded.dtype:
        raise UserError(f"model {loaded.name} is loaded on {loaded.device} in {loaded.dtype}, not {asked_device} in "
                        f"{asked_dtype}; pass the model's name to load it there, or leave device and dtype out")


class UnknownModelError(UserError, ValueError):
    """The model name is neither a config, a folder nor a Hugging Face id."""


def config_names() -> list[str]:
    folder = config_dir("model")
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _absolute(path: str | None) -> str | None:
    """Config paths are relative to the project root (where the pipeline runs); outside a checkout,
    to the working directory (an installed backlens has no root to be relative to)."""
    if not path or Path(path).is_absolute():
        return path
    return str((project_root() if in_checkout() else Path.cwd()) / path)


def model_config(spec: str) -> dict:
    """The ``conf/model/*.yaml``-style mapping for ``spec``: a config name, a local folder or a hub id."""
    config_file = config_dir("model") / f"{spec}.yaml"
    if re.fullmatch(r"[\w.-]+", spec) and config_file.exists():
        cfg = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        cfg["path"] = _absolute(cfg.get("path"))
        if isinstance(cfg.get("tokenizer"), dict):
            cfg["tokenizer"]["path"] = _absolute(cfg["tokenizer"].get("path"))
        return cfg
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise UnknownModelError(f"model folder {folder} has no config.json: not a Hugging Face model folder")
        return {"name": folder.resolve().name, "source": "hub", "hub_id": str(folder), "path": str(folder.resolve())}
    if HUB_ID.fullmatch(spec) and not spec.startswith((".", "/")):
        return {"name": spec, "source": "hub", "hub_id": spec, "path": None}
    raise UnknownModelError(
        f"unknown model {spec!r}: not a model config ({', '.join(config_names()) or 'none found'}), "
        "not a local folder and not a Hugging Face id (owner/name)"
    )


def load(model: str | LoadedModel = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None,
         verbose: bool = False) -> LoadedModel:
    """Load ``model`` (config name, folder or hub id) on ``device`` in ``dtype`` (default cpu, float32;
    device "auto": CUDA when there is one). A LoadedModel is returned as it is: it carries its device
    and dtype, the one place the code below reads them from, so a different device or dtype asked
    for it is an error rather than a silent copy."""
    if isinstance(model, LoadedModel):
        _check_same_placement(model, device, dtype)
        return model
    device, dtype = device or "cpu", dtype or "float32"
    cfg = model_config(model)
    try:
        return load_model(cfg, device=device, dtype=dtype, quiet=not verbose)
    except ModelUnavailableError as error:
        raise ModelUnavailableError(f"{error} (here: pass the folder as the model, e.g. --model /path/to/it)") from error
    except ValueError as error:
        if "no architecture adapter" in str(error):
            raise UserError(f"model {model!r}: {error}") from error
        raise


def loaded_model(model, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """What every API entry point runs on: ``model`` as ``load`` takes it, or an object that holds one
    (``BackwardLens``, an editor handle: its ``.loaded``); None stands for the default model."""
    held = getattr(model, "loaded", None)
    return load(held if held is not None else (DEFAULT_MODEL if model is None else model), device=device, dtype=dtype)
