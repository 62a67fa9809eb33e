"""``BackwardLens``: the paper's analysis of any prompt, as tidy tables.

One loop, used by the pipeline's ``backward_lens``, ``lemma_check`` and ``logit_lens_examples``
stages as well as by ``backlens explain``: prompts are captured in right-padded batches of
``batch_size`` (one forward and one backward pass of the paper's loss per batch), and each
requested table is built from every batch. The pipeline batches the sampled prompts by
``analysis.batch_size`` and the Fig 4 examples one at a time; pass the same ``batch_size`` to get
its numbers bit for bit (float32 results depend on the batch's padding at round-off level).

    lens = BackwardLens("smollm2-135m")
    result = lens.run(["Obama grew up in"], [" Paris"])
    result.summary()        # layer x token: most / least probable tokens of LL(x_i) and LL(delta_i)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from backlens.analysis.attention_tables import attention_rank_rows, attention_target_rank_rows, attention_vjp_norm_rows
from backlens.analysis.capture import CapturedBatch, capture_gradient_factors
from backlens.analysis.gradient_tables import (
    ff2_target_rank_rows, ff2_vjp_pass, gradient_rank_rows, packed_positions, vjp_norm_rows,
)
from backlens.analysis.logit_lens import LensPass, is_zero_vector
from backlens.analysis.spanning_sets import neuron_update_rows, vjp_similarity_rows
from backlens.api.models import DEFAULT_MODEL, load
from backlens.data.segments import SegmentationError, first_target_token, place_subject, segment_prompt
from backlens.models.loading import LoadedModel
from backlens.table_names import ALL_TABLES, ATTENTION_TABLES, DEFAULT_TABLES, GRADIENT_TABLES, LENS_TABLES  # noqa: F401

T = TypeVar("T")

# The table names live in backlens.table_names (the workflow reads them too); re-exported here.
# Tables that read the attention / MLP output VJPs (captured only when one of them is asked for).
SUBMODULE_TABLES = frozenset({"vjp_norms"})


@dataclass(frozen=True)
class LensPrompt:
    """One prompt as the model sees it: token ids and the first token of the target.

    ``case_id`` is the prompt's id in the tables (``case_id`` / ``example`` columns); the text
    fields fill the logit-lens tables. ``segments``: ROME segment of each token (None without a subject).
    """

    case_id: int
    input_ids: tuple[int, ...]
    target_id: int
    prompt: str | None = None
    target_new: str | None = None
    target_true: str | None = None
    tokens: tuple[str, ...] = ()
    segments: tuple[str | None, ...] = ()
    label: str | None = None  # how errors name it (default "prompt <case_id>")


@dataclass(frozen=True)
class LensSettings:
    """``normalized``: rescale every vector to RMS 1 before the lens (target ranks and lens tokens);
    ``top_k``: most / least probable tokens kept per lens; ``mask_special``: leave special tokens
    out of them; ``top_k_neurons``: neurons per gradient in ``neuron_updates``."""

    normalized: bool = False
    top_k: int = 3
    mask_special: bool = True
    top_k_neurons: int = 3


@dataclass
class LensTables:
    """The tables of one run (each with the model in its first column) and seconds per step."""

    model: str
    tables: dict[str, pd.DataFrame]
    seconds: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(f"no table {name!r}; this run has {sorted(tables)}")

    def summary(self, example: int | None = None) -> pd.DataFrame:
        """One row per (prompt, position, layer): the most / least probable token of LL(x_i) and
        LL(delta_i), the target's rank in each (0 = most probable, V-1 = least, -1 = zero vector)
        and the vectors' norms. Needs the lens tables."""
        from backlens.api.summary import lens_summary

        return lens_summary(self.tables["lens_cells"], self.tables["lens_tokens"], example)


def timed(iterable: Iterable[T], seconds: dict[str, float], key: str) -> Iterator[T]:
    """Iterate, adding the time spent producing each item to ``seconds[key]``."""
    iterator = iter(iterable)
    while True:
        tick = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            seconds[key] += time.perf_counter() - tick
        yield item


def special_token_ids(tokenizer) -> list[int]:
    """Special and added control tokens (SmolLM2's <filename>, <gh_stars>, ...): they fill the
    ends of the lens of early hidden states but are no words an edit could target."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted(set(tokenizer.all_special_ids) | {int(i) for i, token in added.items() if token.special})


def target_token(tokenizer, prompt: str, target: str) -> int:
    """First token of `` target`` after ``prompt``; a one-line error for an empty target."""
    if not target.strip():
        raise SegmentationError(f"target {target!r} tokenizes to nothing; give the word to predict, e.g. ' Paris'")
    return first_target_token(tokenizer, prompt, target)


class BackwardLens:
    """Gradients of the paper's loss (-log p(target | prompt) at the last token) through the vocabulary.

    ``model``: a model config name (backlens/conf/model/: ``smollm2-135m``, ``tiny-gpt2``, ...), a local folder,
    a Hugging Face id, or an already loaded ``LoadedModel``.
    """

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None,
                 verbose: bool = False):
        self.loaded = load(model, device=device, dtype=dtype, verbose=verbose)
        self.tokenizer = self.loaded.tokenizer
        self.adapter = self.loaded.adapter

    @property
    def name(self) -> str:
        return self.loaded.name

    def prepare(self, prompts: Sequence[str], targets: Sequence[str], subjects: Sequence[str | None] | None = None,
                *, target_trues: Sequence[str | None] | None = None,
                case_ids: Sequence[int] | None = None) -> list[LensPrompt]:
        """Tokenize prompts (``{}`` in a prompt is the subject's slot) and their targets' first tokens."""
        n = len(prompts)
        if len(targets) != n:
            raise ValueError(f"{n} prompts but {len(targets)} targets")
        subjects = list(subjects) if subjects is not None else [None] * n
        target_trues = list(target_trues) if target_trues is not None else [None] * n
        case_ids = list(case_ids) if case_ids is not None else list(range(n))
        items = []
        for case_id, prompt, target, subject, true in zip(case_ids, prompts, targets, subjects, target_trues):
            text, start = place_subject(prompt, subject)
            if subject is not None:
                segmented = segment_prompt(self.tokenizer, text, subject, subject_char_start=start)
                ids, tokens, segments = segmented.input_ids, segmented.tokens, segmented.primary
            else:
                ids = tuple(int(i) for i in self.tokenizer(text)["input_ids"])
                tokens = tuple(self.tokenizer.decode([i]) for i in ids)
                segments = tuple("last" if i == len(ids) - 1 else None for i in range(len(ids)))
            items.append(LensPrompt(int(case_id), tuple(ids), target_token(self.tokenizer, text, target), text,
                                    target, true, tuple(tokens), tuple(segments)))
        return items

    def capture(self, items: Sequence[LensPrompt], batch_size: int, *, submodules: bool = True,
                attention: bool = False, progress: bool = True) -> Iterator[tuple[list[LensPrompt], CapturedBatch]]:
        """Yield (prompts, CapturedBatch) per right-padded batch of ``batch_size`` prompts
        (``attention``: the attention projections' factors too, from the same pass)."""
        pad_id = self.tokenizer.pad_token_id
        with tqdm(total=len(items), desc="capture", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(items), batch_size):
                chunk = list(items[start : start + batch_size])
                for item in chunk:
                    self.loaded.check_fits(len(item.input_ids), item.label or f"prompt {item.case_id}")
                batch = capture_gradient_factors(
                    self.loaded.model, self.adapter, [list(i.input_ids) for i in chunk], [i.target_id for i in chunk],
                    pad_id=pad_id, submodules=submodules, attention=attention,
                )
                yield chunk, batch
                bar.update(len(chunk))

    def lens_rows(self, batch: CapturedBatch, items: Sequence[LensPrompt], settings: LensSettings,
                  excluded_ids: torch.Tensor | None, lens: LensPass | None = None,
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(cell rows, token rows) of a batch: per prompt, layer and token, LL(x_i) of the FF1 input and
        LL(delta_i) of the FF2 VJP. Exact-zero vectors (last-layer VJPs before the last token) are marked and
        get no token rows. ``lens``: ``ff2_vjp_pass(..., ff1_input=...)`` when already made for this batch."""
        adapter = self.adapter
        if lens is None:
            lens = self._vocabulary_pass(batch, settings, excluded_ids, lens_tables=True)
        n_cells = len(lens.ranks) // 2
        host = {name: getattr(lens, name).cpu().numpy() for name in
                ("ranks", "top_ids", "top_logits", "bottom_ids", "bottom_logits", "norms", "zero")}
        packed = packed_positions(batch.lengths, batch.n_layers, 0)
        # Cells per prompt and layer: the FF1 inputs' positions, then the FF2 VJPs' (rows n_cells.. and 0..).
        prompt = np.concatenate([packed["prompt"]] * 2)
        layer = np.concatenate([packed["layer"]] * 2)
        position = np.concatenate([packed["position"]] * 2)
        kind = np.repeat(np.array([1, 0]), n_cells)  # row blocks: ff2 first in the pass, shown second
        order = np.lexsort((position, kind, layer, prompt))  # prompt, layer, ff1_input before ff2_vjp, position
        prompt, layer, position, kind = prompt[order], layer[order], position[order], kind[order]
        vector = np.where(kind == 1, "ff2_vjp", "ff1_input").astype(object)
        # Flatten the texts of every prompt once (per-token columns by offset).
        offsets = np.concatenate([[0], np.cumsum([len(item.input_ids) for item in items])])[:-1]
        token_text = np.array([token for item in items for token in item.tokens], dtype=object)
        segment = np.array([seg for item in items for seg in item.segments], dtype=object)
        per_prompt = {
            "example": np.array([item.case_id for item in items], dtype=np.int64),
            "prompt": np.array([item.prompt for item in items], dtype=object),
            "target_new": np.array([item.target_new for item in items], dtype=object),
            "target_new_id": np.array([item.target_id for item in items], dtype=np.int64),
            "target_true": np.array([item.target_true for item in items], dtype=object),
        }
        cells = pd.DataFrame({
            **{name: values[prompt] for name, values in per_prompt.items()},
            "vocab_size": int(adapter.unembedding.shape[0]),
            "layer": layer, "position": position,
            "token": token_text[offsets[prompt] + position], "segment": segment[offsets[prompt] + position],
            "vector": vector, "norm": host["norms"][order].astype(np.float64), "is_zero": host["zero"][order],
            "target_rank": host["ranks"][order].astype(np.int64),
        })
        keep = ~host["zero"][order]
        k = settings.top_k
        cell = np.repeat(np.flatnonzero(keep), 2 * k)  # per kept cell: top 0..k-1, then bottom 0..k-1
        end = np.tile(np.repeat(np.array(["top", "bottom"], dtype=object), k), int(keep.sum()))
        rank_k = np.tile(np.arange(k), 2 * int(keep.sum()))
        source = order[cell]
        ids = np.where(end == "top", host["top_ids"][source, rank_k], host["bottom_ids"][source, rank_k])
        logits = np.where(end == "top", host["top_logits"][source, rank_k], host["bottom_logits"][source, rank_k])
        distinct = np.unique(ids)  # decoded once per distinct token
        texts = np.array([self.tokenizer.decode([int(i)]) for i in distinct], dtype=object)
        tokens = pd.DataFrame({
            "example": per_prompt["example"][prompt[cell]], "layer": layer[cell], "position": position[cell],
            "vector": vector[cell], "end": end, "k": rank_k.astype(np.int64), "token_id": ids.astype(np.int64),
            "token_text": texts[np.searchsorted(distinct, ids)] if len(ids) else np.array([], dtype=object),
            "logit": logits.astype(np.float64),
        })
        return cells, tokens

    def _vocabulary_pass(self, batch: CapturedBatch, settings: LensSettings, excluded_ids: torch.Tensor | None,
                         *, lens_tables: bool) -> LensPass:
        """One projection of the batch's FF2 VJPs (and, for the lens tables, the FF1 inputs) onto the vocabulary,
        with the vectors' norms and zero flags: the target_ranks and lens tables share it."""
        first_ff1 = self.adapter.ff1_sites(0)[0].matrix  # gated MLPs: gate and up share their input
        lens, vectors = ff2_vjp_pass(batch, self.adapter, normalized=settings.normalized,
                                     k=settings.top_k if lens_tables else 0, excluded_ids=excluded_ids,
                                     ff1_input=first_ff1 if lens_tables else None)
        lens.norms = vectors.norm(dim=-1)
        lens.zero = is_zero_vector(vectors)
        return lens

    def _builders(self, tables: Sequence[str], settings: LensSettings) -> dict[str, Callable]:
        """name -> build(batch, prompts, shared) -> {table: rows}, in the order the tables are asked for;
        ``shared`` (one dict per batch) carries the batch's one vocabulary pass between tables."""
        adapter = self.adapter
        excluded = special_token_ids(self.tokenizer) if settings.mask_special else []
        # Built once per run (a host-to-device copy), not per batch.
        excluded_ids = torch.tensor(excluded, dtype=torch.long, device=self.loaded.device)
        lens_tables = bool(set(tables) & set(LENS_TABLES))

        def ids(items: list[LensPrompt]) -> list[int]:
            return [item.case_id for item in items]

        def vocabulary(batch: CapturedBatch, shared: dict) -> LensPass:
            if "lens" not in shared:
                shared["lens"] = self._vocabulary_pass(batch, settings, excluded_ids, lens_tables=lens_tables)
            return shared["lens"]

        def lens(batch: CapturedBatch, items: list[LensPrompt], shared: dict) -> dict[str, pd.DataFrame]:
            cells, tokens = self.lens_rows(batch, items, settings, excluded_ids, vocabulary(batch, shared))
            return {"lens_cells": cells, "lens_tokens": tokens}

        available: dict[str, Callable] = {
            "gradient_ranks": lambda b, c, s: {"gradient_ranks": gradient_rank_rows(b, ids(c))},
            "vjp_norms": lambda b, c, s: {"vjp_norms": vjp_norm_rows(b, ids(c))},
            "target_ranks": lambda b, c, s: {
                "target_ranks": ff2_target_rank_rows(b, ids(c), adapter, lens=vocabulary(b, s))},
            "neuron_updates": lambda b, c, s: {
                "neuron_updates": neuron_update_rows(b, ids(c), adapter, top_k=settings.top_k_neurons)},
            "vjp_similarity": lambda b, c, s: {"vjp_similarity": vjp_similarity_rows(b, ids(c))},
            "lens": lens,
            "attention_ranks": lambda b, c, s: {"attention_ranks": attention_rank_rows(b, ids(c))},
            "attention_vjp_norms": lambda b, c, s: {"attention_vjp_norms": attention_vjp_norm_rows(b, ids(c))},
            "attention_target_ranks": lambda b, c, s: {
                "attention_target_ranks": attention_target_rank_rows(
                    b, ids(c), adapter, normalized=settings.normalized)},
        }
        unknown = sorted(set(tables) - set(ALL_TABLES))
        if unknown:
            raise ValueError(f"unknown table {unknown[0]!r}; choose from {', '.join(ALL_TABLES)}")
        names = list(dict.fromkeys("lens" if name in LENS_TABLES else name for name in tables))
        return {name: available[name] for name in names}

    def run_prepared(self, items: Sequence[LensPrompt], *, batch_size: int = 20,
                     tables: Sequence[str] = DEFAULT_TABLES, settings: LensSettings = LensSettings(),
                     progress: bool = True) -> LensTables:
        """The loop: capture each batch once, build every requested table from it."""
        builders = self._builders(tables, settings)
        rows: dict[str, list[pd.DataFrame]] = {name: [] for name in tables}
        seconds = {"capture": 0.0, **{name: 0.0 for name in builders}}
        started = time.perf_counter()
        batches = self.capture(items, batch_size, submodules=bool(SUBMODULE_TABLES & set(tables)),
                               attention=bool(set(ATTENTION_TABLES) & set(tables)), progress=progress)
        for chunk, batch in timed(batches, seconds, "capture"):
            shared: dict = {}
            for name, build in builders.items():
                tick = time.perf_counter()
                for table, table_rows in build(batch, chunk, shared).items():
                    if table in rows:
                        rows[table].append(pd.DataFrame(table_rows))
                seconds[name] += time.perf_counter() - tick
        frames = {}
        for name, parts in rows.items():
            frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            frame.insert(0, "model", self.name)
            if name in LENS_TABLES:
                frame["normalized"] = bool(settings.normalized)
            frames[name] = frame
        return LensTables(self.name, frames, {**seconds, "total": time.perf_counter() - started})

    def run(self, prompts: str | Sequence[str], targets: str | Sequence[str],
            subjects: str | Sequence[str | None] | None = None, *, batch_size: int = 20,
            tables: Sequence[str] = DEFAULT_TABLES, normalized: bool = False, top_k: int = 3,
            mask_special: bool = True, top_k_neurons: int = 3, target_trues: Sequence[str | None] | None = None,
            case_ids: Sequence[int] | None = None, progress: bool = True) -> LensTables:
        """Tables for prompt -> target pairs (``tables``: any of ``ALL_TABLES``; ``subjects`` only
        label the tokens' ROME segments). Prompts are numbered 0.. in the ``case_id`` / ``example``
        columns unless ``case_ids`` are given."""
        as_list = (lambda v: [v] if isinstance(v, str) or v is None else list(v))
        prompts, targets = as_list(prompts), as_list(targets)
        subject_list = None if subjects is None else as_list(subjects)
        items = self.prepare(prompts, targets, subject_list, target_trues=target_trues, case_ids=case_ids)
        settings = LensSettings(normalized=normalized, top_k=top_k, mask_special=mask_special,
                                top_k_neurons=top_k_neurons)
        return self.run_prepared(items, batch_size=batch_size, tables=tables, settings=settings, progress=progress)
