"""Second-moment statistics E[k k^T] of FF2 inputs over a text corpus (ROME/MEMIT's mom2).

Computed once per (model, layers, corpus, n_samples) by the ``edit_covariance`` rule; the
accumulation is check-pointed after every batch so a killed run resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from backlens.editing.generation import sample_token_ids_by_case
from backlens.errors import UserError
from backlens.io import write_torch
from backlens.models.hooks import record_module_io
from backlens.models.loading import LoadedModel

log = logging.getLogger(__name__)

_SAMPLE_STARTS = ["The", "In", "A", "It", "This", "When", "He", "She", "On", "After", "Many", "There"]


def corpus_description(corpus: Mapping) -> str:
    source = str(corpus["source"])
    if source == "text_file":
        return f"text_file:{corpus['path']}"
    if source == "model_samples":
        return f"model_samples(top_k={corpus['top_k']},seed={corpus['seed']})"
    return source


def text_file_blocks(tokenizer, path: str | Path, n_blocks: int, block_tokens: int, offset_blocks: int = 0) -> torch.Tensor:
    """(n_blocks, block_tokens) consecutive token blocks from a local text file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"corpus file {path} does not exist: set editing.corpus.path to a UTF-8 text file, "
            "or editing.corpus.source=model_samples to sample text from the model itself"
        )
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    needed = (offset_blocks + n_blocks) * block_tokens
    if len(ids) < needed:
        raise ValueError(f"{path}: {len(ids)} tokens, need {needed} for {n_blocks} blocks of {block_tokens}; use a longer file")
    start = offset_blocks * block_tokens
    return torch.tensor(ids[start : start + n_blocks * block_tokens]).view(n_blocks, block_tokens)


_WIKITEXT_IDS: dict[tuple[str, int], list[int]] = {}


OFFLINE_CORPORA = "editing.corpus.source=model_samples or editing.corpus.source=text_file editing.corpus.path=<file>"


class WikiTextUnavailableError(UserError, RuntimeError):
    """WikiText cannot be read: the ``datasets`` package is missing, or the dataset is not reachable."""


def _wikitext_rows():
    """WikiText-103's train split through ``datasets`` (an extra: ``pip install .[paper]``)."""
    try:
        import datasets  # noqa: PLC0415 (the paper extra, only for the online corpus)
    except ImportError as error:
        raise WikiTextUnavailableError(
            f"editing.corpus.source=wikitext needs the Python module 'datasets', which is not installed ({error}): "
            f"pip install '.[paper]' (or pip install datasets); or use {OFFLINE_CORPORA}"
        ) from error
    try:
        return datasets.load_dataset("wikitext", "wikitext-103-raw-v1", split="train")
    except Exception as error:  # noqa: BLE001 (any failure of the download or the cache: not reachable from here)
        raise WikiTextUnavailableError(
            f"WikiText is not reachable through datasets.load_dataset ({type(error).__name__}: {error}); "
            f"check the network or the Hugging Face cache, or offline use {OFFLINE_CORPORA}"
        ) from error


def wikitext_blocks(tokenizer, n_blocks: int, block_tokens: int, offset_blocks: int = 0) -> torch.Tensor:
    """Consecutive token blocks of WikiText-103's train split, tokenized once per process (as many
    rows as the blocks need: ROME's 100,000 samples of up to 1024 tokens take most of it)."""
    needed = (offset_blocks + n_blocks) * block_tokens
    key = (getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__, id(tokenizer))
    ids = _WIKITEXT_IDS.get(key, [])
    if len(ids) < needed:
        rows = _wikitext_rows()
        ids, chunk = [], 20_000
        for start in range(0, len(rows), chunk):
            text = "\n".join(rows.select(range(start, min(len(rows), start + chunk)))["text"])
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids) >= needed:
                break
        _WIKITEXT_IDS[key] = ids
    if len(ids) < needed:
        raise ValueError(f"WikiText-103 has {len(ids)} tokens, {needed} needed for {offset_blocks + n_blocks} blocks of "
                         f"{block_tokens}; lower editing.corpus.n_blocks or block_tokens")
    start = offset_blocks * block_tokens
    return torch.tensor(ids[start : start + n_blocks * block_tokens]).view(n_blocks, block_tokens)


def corpus_batch(loaded: LoadedModel, corpus: Mapping, batch_index: int, *, held_out: bool = False) -> torch.Tensor:
    """(batch_size, block_tokens) token ids of one corpus batch; deterministic in ``batch_index``."""
    return corpus_batches(loaded, corpus, [batch_index], held_out=held_out)[0]


def _batch_offset(corpus: Mapping, batch_index: int, held_out: bool) -> int:
    # Held-out blocks (perplexity) come after every statistics block, so the two never overlap.
    return batch_index * int(corpus["batch_size"]) + (int(corpus["n_blocks"]) if held_out else 0)


def corpus_batches(loaded: LoadedModel, corpus: Mapping, batch_indices: Sequence[int], *,
                   held_out: bool = False) -> list[torch.Tensor]:
    """``corpus_batch`` of each index. Sampled text (model_samples) decodes ``sampling_group`` batches'
    rows together, so each step's forward serves them all. A batch's rows still draw from the batch's
    own generator, so its tokens are those of the batch sampled alone wherever the batched logits equal
    the lone ones (they do on the tiny models, tests/test_statistics.py, and on SmolLM2's default blocks
    with one torch thread, as the rule's job runs; with two they do not: src/backlens/editing/README.md)."""
    size, length = int(corpus["batch_size"]), int(corpus["block_tokens"])
    offsets = [_batch_offset(corpus, index, held_out) for index in batch_indices]
    source = str(corpus["source"])
    if source == "text_file":
        return [text_file_blocks(loaded.tokenizer, corpus["path"], size, length, offset) for offset in offsets]
    if source == "wikitext":
        return [wikitext_blocks(loaded.tokenizer, size, length, offset) for offset in offsets]
    if source != "model_samples":
        raise ValueError(f"editing.corpus.source={source!r}: use model_samples, text_file or wikitext")
    starts = [[_SAMPLE_STARTS[(offset + i) % len(_SAMPLE_STARTS)] for i in range(size)] for offset in offsets]
    group = sampling_group(corpus)
    new_ids = [ids for first in range(0, len(offsets), group) for ids in sample_token_ids_by_case(
        loaded.model, loaded.tokenizer, starts[first : first + group], max_new_tokens=length - 1,
        top_k=int(corpus["top_k"]), seeds=[int(corpus["seed"]) + offset for offset in offsets[first : first + group]],
    )]
    first_ids = {s: loaded.tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in _SAMPLE_STARTS}
    return [torch.cat([torch.tensor([first_ids[s] for s in batch_starts])[:, None], ids], dim=1)
            for batch_starts, ids in zip(starts, new_ids)]


def sampling_group(corpus: Mapping) -> int:
    """How many corpus batches one sampling decode serves: ``sample_rows`` (rows decoded together;
    bounds the KV cache) over ``batch_size``, at least one."""
    return max(1, int(corpus.get("sample_rows") or 0) // int(corpus["batch_size"]))


@torch.no_grad()
def accumulate_second_moments(
    loaded: LoadedModel, layers: Sequence[int], corpus: Mapping, checkpoint: str | Path
) -> dict[str, object]:
    """Sum of k k^T (float64) over every corpus token for each layer's FF2 input; resumes from ``checkpoint``."""
    checkpoint = Path(checkpoint)
    n_blocks, size = int(corpus["n_blocks"]), int(corpus["batch_size"])
    n_batches = -(-n_blocks // size)
    # Batches sampled in one decode: with more than one torch thread a decode's rows can depend on
    # how many there are, so a sampled corpus's checkpoint resumes only under the grouping it was
    # written with (read text does not depend on it).
    group_size = sampling_group(corpus)
    grouping = group_size if str(corpus["source"]) == "model_samples" else None
    state = torch.load(checkpoint) if checkpoint.exists() else None
    if state is not None and (state["layers"] != list(layers) or state["corpus"] != corpus_description(corpus)
                              or state.get("sampling_group") != grouping):
        log.warning("checkpoint %s is for other layers, corpus or editing.corpus.sample_rows; starting over", checkpoint)
        state = None
    if state is None:
        sums = {}
        for layer in layers:
            d_ff = loaded.adapter.ff2_site(layer).in_features
            sums[layer] = torch.zeros(d_ff, d_ff, dtype=torch.float64)
        state = {"layers": list(layers), "corpus": corpus_description(corpus), "sampling_group": grouping,
                 "batches_done": 0, "n_tokens": 0, "sums": sums}
    modules = {str(layer): loaded.adapter.ff2_site(layer).module for layer in layers}
    # Sums stay on the model's device (a 6400 x 6400 float64 product per batch is GPU work for
    # GPT-2 XL); the checkpoint (CPU copies) is written every checkpoint_every batches and at the end.
    every = int(corpus.get("checkpoint_every", 1))
    sums = {layer: total.to(loaded.device) for layer, total in state["sums"].items()}
    # One forward per batch feeds every layer's sum (hooks on all of them), unlike ROME's
    # layer_stats, which makes a pass over the corpus per layer.
    started, tokens_before = time.perf_counter(), state["n_tokens"]
    progress = tqdm(range(state["batches_done"], n_batches), desc="FF2 second moments", unit="batch",
                    initial=state["batches_done"], total=n_batches)
    sampled: dict[int, torch.Tensor] = {}
    for batch_index in progress:
        if batch_index not in sampled:
            # Groups start at multiples of the group size, so a run resumed inside a group decodes
            # that whole group again (the rows of the uninterrupted run) and skips its done batches.
            start = batch_index - batch_index % group_size
            group = range(start, min(n_batches, start + group_size))
            if grouping is not None:  # a sampled corpus: one decode for the group, no bar movement meanwhile
                progress.set_postfix_str(f"sampling batches {group.start}-{group.stop - 1} in one decode")
            sampled = {index: ids for index, ids in zip(group, corpus_batches(loaded, corpus, group)) if index >= batch_index}
        # A last partial batch keeps only its first blocks: the held-out blocks start at n_blocks.
        ids = sampled.pop(batch_index)[: n_blocks - batch_index * size].to(loaded.device)
        with record_module_io(modules, outputs=False) as record:
            if loaded.adapter.supports_layer_ranges:
                # Only the blocks up to the highest layer read: no unembedding, nothing above.
                loaded.adapter.residual_entering(ids, max(layers) + 1)
            else:
                loaded.model(input_ids=ids)
        for layer in layers:
            keys_NxIn = record.inputs[str(layer)].reshape(-1, record.inputs[str(layer)].shape[-1]).double()
            sums[layer] += keys_NxIn.T @ keys_NxIn
        state["n_tokens"] += ids.numel()
        state["batches_done"] = batch_index + 1
        progress.set_postfix(tokens_per_s=f"{(state['n_tokens'] - tokens_before) / (time.perf_counter() - started):.0f}")
        if state["batches_done"] % every == 0 or state["batches_done"] == n_batches:
            state["sums"] = {layer: total.cpu() for layer, total in sums.items()}
            write_torch(state, checkpoint)
    state["sums"] = {layer: total.cpu() for layer, total in sums.items()}
    seconds, new_tokens = time.perf_counter() - started, state["n_tokens"] - tokens_before
    # Sampled corpora (model_samples) include the sampling in this rate.
    log.info("FF2 second moments of %d layers in one pass: %d tokens in %.1f s, %.0f tokens/s", len(layers),
             new_tokens, seconds, new_tokens / seconds if seconds > 0 else float("nan"))
    return state


def blocks_for(corpus: Mapping, d_ff: int) -> int:
    """The number of statistics blocks: ``n_blocks``, or with ``n_tokens_per_d_ff`` set (the small
    setting; Gupta et al. 2025 find a small fraction of ROME's 100,000 samples enough) as many
    blocks as hold that many tokens per FF2 input dimension, rounded up to whole corpus batches:
    the statistics read whole batches, and the held-out blocks start at ``n_blocks``, so a count
    that is not a multiple of the batch size would let the two overlap."""
    per_d_ff = corpus.get("n_tokens_per_d_ff")
    if per_d_ff is None:
        return int(corpus["n_blocks"])
    per_batch = int(corpus["block_tokens"]) * int(corpus["batch_size"])
    return -(-int(float(per_d_ff) * d_ff) // per_batch) * int(corpus["batch_size"])


def load_second_moment(path: str | Path, layer: int, expected_corpus: str | None = None) -> torch.Tensor:
    """(d_ff, d_ff) float64 E[k k^T] of layer ``layer`` from a statistics file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no FF2 statistics at {path}: run `snakemake {path}` (rule edit_covariance) first")
    stats = torch.load(path)
    if layer not in stats["mom2"]:
        raise ValueError(
            f"{path} holds FF2 statistics for layers {sorted(stats['mom2'])}, not layer {layer}; add it to "
            "editing.covariance.layers (or the method's layer) and rerun the edit_covariance rule"
        )
    if expected_corpus is not None and stats["corpus"] != expected_corpus:
        raise ValueError(f"{path} was computed on {stats['corpus']}, the config asks for {expected_corpus}; rerun edit_covariance")
    return stats["mom2"][layer]
