"""The de-quantized GGUF cache (models/gguf_cache.py) on a tiny Q8_0 Llama GGUF written here
(tests/tiny_gguf.py): the cached model is bit-identical to the one de-quantized from the file,
damaged entries are rebuilt with one warning, and the cache folder is where it is said to be."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny_gguf import write_tiny_llama_gguf

from backlens.cache import cache_folder
from backlens.models import gguf_cache
from backlens.models.loading import load_model

PROMPTS = ["The Eiffel Tower is located in the city of", "Obama grew up in"]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BACKLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _direct(gguf: Path, monkeypatch, dtype=torch.float32):
    """The model de-quantized from the file itself (the cache switched off)."""
    with monkeypatch.context() as patch:
        patch.setenv("BACKLENS_CACHE", "off")
        return gguf_cache.load_model(gguf, dtype)


def _assert_identical(a, b) -> None:
    for named in ("named_parameters", "named_buffers"):
        tensors_a, tensors_b = dict(getattr(a, named)()), dict(getattr(b, named)())
        assert tensors_a.keys() == tensors_b.keys() and tensors_a
        for name, tensor in tensors_a.items():
            assert tensor.dtype == tensors_b[name].dtype and torch.equal(tensor, tensors_b[name]), name
    ids_BP = torch.arange(40).reshape(2, 20) * 7 % a.config.vocab_size
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids_BP).logits, b(input_ids=ids_BP).logits)


def _entry(cache: Path, part: str) -> Path:
    (entry,) = (cache / "gguf").glob(f"*-{part}-*")
    return entry


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_model_is_bit_identical_to_the_dequantized_one(tiny_gguf, cache, monkeypatch, dtype):
    direct = _direct(tiny_gguf, monkeypatch, dtype)
    assert not cache.exists()
    built = gguf_cache.load_model(tiny_gguf, dtype)  # cold: de-quantized, then written
    entry = _entry(cache, f"model-{str(dtype).removeprefix('torch.')}")
    cached = gguf_cache.load_model(tiny_gguf, dtype)  # warm: read back from the entry
    assert Path(cached.config._name_or_path) == entry and Path(direct.config._name_or_path) != entry
    assert cached.lm_head.weight is cached.model.embed_tokens.weight  # still tied, as in the GGUF
    _assert_identical(direct, built)
    _assert_identical(direct, cached)
    assert not list((cache / "gguf").glob(".*")), "no temporary or discarded folders left behind"


def test_cached_tokenizer_encodes_as_the_gguf_one(tiny_gguf, cache, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv("BACKLENS_CACHE", "off")
        direct = gguf_cache.load_tokenizer(tiny_gguf)
    gguf_cache.load_tokenizer(tiny_gguf)
    cached = gguf_cache.load_tokenizer(tiny_gguf)
    assert Path(cached.name_or_path) == _entry(cache, "tokenizer")
    assert cached(PROMPTS)["input_ids"] == direct(PROMPTS)["input_ids"]
    assert cached.get_vocab() == direct.get_vocab() and len(cached) == len(direct)
    assert (cached.bos_token, cached.eos_token, cached.pad_token) == (direct.bos_token, direct.eos_token, direct.pad_token)


def test_load_model_goes_through_the_cache(tiny_gguf, cache, monkeypatch):
    """loading.load_model of a GGUF source (an ``assembled_gguf`` package faked here) fills the
    cache on the first load and reads it on the second, with the same numbers."""
    monkeypatch.setitem(sys.modules, "fake_assembler", types.SimpleNamespace(assemble=lambda: tiny_gguf))
    cfg = {"name": "tiny-gguf", "source": "assembled_gguf", "package": "fake_assembler"}
    first = load_model(cfg)
    second = load_model(cfg)
    assert Path(second.model.config._name_or_path) == _entry(cache, "model-float32")
    assert Path(second.tokenizer.name_or_path) == _entry(cache, "tokenizer")
    _assert_identical(first.model, second.model)
    assert second.tokenizer(PROMPTS, padding=True)["input_ids"] == first.tokenizer(PROMPTS, padding=True)["input_ids"]


def _damage_weights(entry: Path) -> None:
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _drop_a_tensor(entry: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(entry / "model.safetensors")
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, entry / "model.safetensors", metadata={"format": "pt"})


def _change_stamp(entry: Path) -> None:
    stamp = json.loads((entry / gguf_cache.STAMP).read_text())
    (entry / gguf_cache.STAMP).write_text(json.dumps({**stamp, "transformers": "0.0.0"}))


def _remove_stamp(entry: Path) -> None:
    (entry / gguf_cache.STAMP).unlink()


@pytest.mark.parametrize("damage", [_damage_weights, _drop_a_tensor, _change_stamp, _remove_stamp])
def test_a_damaged_entry_is_rebuilt_with_one_warning(tiny_gguf, cache, monkeypatch, caplog, damage):
    direct = _direct(tiny_gguf, monkeypatch)
    gguf_cache.load_model(tiny_gguf, torch.float32)
    damage(_entry(cache, "model-float32"))
    with caplog.at_level(logging.WARNING, logger="backlens.models.gguf_cache"):
        rebuilt = gguf_cache.load_model(tiny_gguf, torch.float32)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("backlens")]
    assert len(warnings) == 1 and "rebuilding it from the GGUF" in warnings[0], warnings
    _assert_identical(direct, rebuilt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="backlens.models.gguf_cache"):
        again = gguf_cache.load_model(tiny_gguf, torch.float32)  # the rebuilt entry is sound
    assert not caplog.records and Path(again.config._name_or_path) == _entry(cache, "model-float32")
    _assert_identical(direct, again)


def test_a_second_writer_of_the_same_entry_loses_quietly(tiny_gguf, cache, caplog):
    """Two jobs that build the same entry at once: the second rename finds the entry complete and
    drops its copy, without a warning and without touching the first one's files."""
    folder, stamp = gguf_cache.entry_for(tiny_gguf, "note", {})

    def save(text):
        return lambda staging: (staging / "note.txt").write_text(text)

    gguf_cache._write(folder, stamp, save("first"))
    with caplog.at_level(logging.WARNING, logger="backlens.models.gguf_cache"):
        gguf_cache._write(folder, stamp, save("second"))
    assert not caplog.records
    assert (folder / "note.txt").read_text() == "first"
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [folder.name]


def test_an_unwritable_cache_still_loads(tiny_gguf, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BACKLENS_CACHE", str(blocker / "cache"))
    direct = _direct(tiny_gguf, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="backlens.models.gguf_cache"):
        model = gguf_cache.load_model(tiny_gguf, torch.float32)
    assert len(caplog.records) == 1 and "BACKLENS_CACHE" in caplog.records[0].getMessage()
    _assert_identical(direct, model)


def test_the_cache_off_writes_nothing(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("BACKLENS_CACHE", "off")
    assert cache_folder() is None
    gguf_cache.load_model(tiny_gguf, torch.float32)
    gguf_cache.load_tokenizer(tiny_gguf)
    assert not list(tmp_path.iterdir())


def test_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BACKLENS_CACHE", str(tmp_path / "mine"))
    assert cache_folder() == tmp_path / "mine"
    monkeypatch.delenv("BACKLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "backlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_folder() == tmp_path / ".cache" / "backlens"


def test_the_tests_cache_is_a_folder_of_the_session(tmp_path_factory):
    """conftest points BACKLENS_CACHE into this session's temporary folder, never ~/.cache."""
    assert tmp_path_factory.getbasetemp() in cache_folder().parents


DIGEST = """
import hashlib, sys
from pathlib import Path
import torch
from backlens.models import gguf_cache
model = gguf_cache.load_model(Path(sys.argv[1]), torch.float32)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.contiguous().view(torch.uint8).numpy().tobytes())
print(digest.hexdigest(), model.config._name_or_path)
"""


def test_jobs_that_start_at_once_all_load_the_same_weights(tiny_gguf, cache):
    """Four processes fill the same empty entry at once (as Snakemake jobs do): all succeed with
    the same bytes, one entry remains and no temporary folder; a fifth reads that entry."""
    env = {**os.environ, "BACKLENS_CACHE": str(cache)}

    def spawn():
        return subprocess.Popen([sys.executable, "-c", DIGEST, str(tiny_gguf)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    outputs = [job.communicate(timeout=300) for job in [spawn() for _ in range(4)]]
    assert all("Traceback" not in err and "cache entry" not in err for _, err in outputs), outputs  # no warning of ours
    digests = {out.split()[0] for out, _ in outputs}
    assert len(digests) == 1
    assert [p.name for p in (cache / "gguf").iterdir()] == [_entry(cache, "model-float32").name]
    out, _ = spawn().communicate(timeout=300)
    assert out.split() == [*digests, str(_entry(cache, "model-float32"))]
