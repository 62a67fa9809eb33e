"""De-quantized GGUF models kept in the cache folder, so only the first start parses the GGUF.

Parsing the embedded SmolLM2 GGUF costs ~6 s for the tokenizer, ~6 s for the config and ~15-25 s
to de-quantize the weights on 2 busy cores; reading the same back from a saved folder (safetensors
weights, config.json, tokenizer.json) takes about a second. An entry is a folder
``<cache>/gguf/<gguf stem>-<part>-<key>``, where the key hashes everything that changes its
content: the GGUF file's sha256, the part (``tokenizer`` or ``model-<dtype>``), and the versions of
the code that converts it (transformers, gguf, torch or tokenizers). An entry is written into a
temporary folder beside it and renamed into place, so a reader sees a complete entry or none, and
two jobs that build the same entry at once both succeed (the second rename loses and is dropped).
An entry that fails to load, or whose stamp differs, is ignored with one warning and rebuilt.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from backlens.cache import cache_folder

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of an entry changes
STAMP = "backlens-entry.json"  # written last: its presence marks a complete entry
T = TypeVar("T")


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Memoised per (path, size, mtime): the tokenizer and the model of one load hash the file once.
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    status = path.stat()
    return _sha256(str(path.resolve()), status.st_size, status.st_mtime_ns)


def entry_for(gguf: Path, part: str, versions: dict[str, str]) -> tuple[Path, dict] | None:
    """The entry folder of ``part`` of ``gguf`` and the stamp it must carry; None when caching is off."""
    root = cache_folder()
    if root is None:
        return None
    stamp = {"format": FORMAT, "gguf": gguf.name, "gguf_sha256": file_sha256(gguf), "part": part, **versions}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    return root / "gguf" / f"{gguf.stem}-{part}-{key}", stamp


def _discard(folder: Path) -> None:
    # Renamed away first (atomic), so no reader ever sees a half-deleted entry.
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return  # another job discarded or replaced it first
    shutil.rmtree(trash, ignore_errors=True)


def _read(folder: Path, stamp: dict, load: Callable[[Path], T]) -> T | None:
    if not folder.is_dir():
        return None
    try:
        found = json.loads((folder / STAMP).read_text())
        if found != stamp:
            raise ValueError(f"its stamp {found} is not the expected {stamp}")
        return load(folder)
    except Exception as error:  # noqa: BLE001 (any damage to an entry: rebuild it, never fail the load)
        log.warning("ignoring the damaged cache entry %s (%s); rebuilding it from the GGUF", folder, error)
        _discard(folder)
        return None


def _write(folder: Path, stamp: dict, save: Callable[[Path], None]) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache from other users
    except OSError as error:
        log.warning("cannot write the cache entry %s (%s); set BACKLENS_CACHE to a writable folder or off", folder, error)
        return
    try:
        save(staging)
        for file in staging.iterdir():
            os.chmod(file, 0o666 & ~umask)
        (staging / STAMP).write_text(json.dumps(stamp, sort_keys=True))
        os.replace(staging, folder)
    except OSError as error:
        if not (folder / STAMP).exists():  # else another job wrote the same entry first: nothing lost
            log.warning("cannot write the cache entry %s (%s)", folder, error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cached(
    gguf: Path, part: str, versions: dict[str, str], build: Callable[[], T],
    load: Callable[[Path], T], save: Callable[[T, Path], None],
) -> T:
    """``load`` of the entry when it is there and sound; else ``build`` (from the GGUF), saved."""
    entry = entry_for(gguf, part, versions)
    if entry is None:
        return build()
    folder, stamp = entry
    found = _read(folder, stamp, load)
    if found is not None:
        log.info("loaded %s of %s from the cache %s", part, gguf.name, folder)
        return found
    built = build()
    _write(folder, stamp, lambda staging: save(built, staging))
    return built


def load_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    return cached(
        gguf, "tokenizer", {"transformers": transformers.__version__, "tokenizers": version("tokenizers")},
        build=lambda: AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
        load=lambda folder: AutoTokenizer.from_pretrained(str(folder)),
        save=lambda tokenizer, folder: tokenizer.save_pretrained(str(folder)),
    )


def _load_saved_model(folder: Path, dtype: torch.dtype) -> PreTrainedModel:
    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    # A missing tensor would be silently initialised at random: treat it as damage.
    problems = {name: value for name, value in info.items() if value}
    if problems:
        raise ValueError(f"weights do not match the model: {problems}")
    return model


def _save_model(model: PreTrainedModel, folder: Path) -> None:
    # save_pretrained refuses a model loaded from a GGUF (its "quantizer" is not serializable), but the
    # de-quantized weights are plain tensors: the config without the GGUF marker, and the tensors
    # (shared ones, tied embeddings, once) are all ``from_pretrained`` needs.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(folder))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(folder))
    safetensors.torch.save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_model(gguf: Path, dtype: torch.dtype) -> PreTrainedModel:
    """The causal LM de-quantized from ``gguf`` to ``dtype``, bit-identical whether built or cached."""
    part = f"model-{str(dtype).removeprefix('torch.')}"
    return cached(
        gguf, part,
        {"transformers": transformers.__version__, "gguf_package": version("gguf"), "torch": torch.__version__},
        build=lambda: AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype),
        load=lambda folder: _load_saved_model(folder, dtype),
        save=_save_model,
    )
