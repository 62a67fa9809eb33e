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

import pandas as pd
import torch
from tqdm import tqdm

from backlens.analysis.attention_tables import attention_rank_rows, attention_target_rank_rows, attention_vjp_norm_rows
from backlens.analysis.capture import CapturedBatch, capture_gradient_factors
from backlens.analysis.gradient_tables import ff2_target_rank_rows, gradient_rank_rows, vjp_norm_rows
from backlens.analysis.logit_lens import is_zero_vector, target_ranks, top_and_bottom
from backlens.analysis.spanning_sets import neuron_update_rows, vjp_similarity_rows
from backlens.api.models import DEFAULT_MODEL, load
from backlens.data.segments import SegmentationError, first_target_token, place_subject, segment_prompt
from backlens.models.loading import LoadedModel

T = TypeVar("T")

# The backward_lens stage's five tables, then the logit-lens tables of the Fig 4 stage.
GRADIENT_TABLES = ("gradient_ranks", "vjp_norms", "target_ranks", "neuron_updates", "vjp_similarity")
LENS_TABLES = ("lens_cells", "lens_tokens")
# Beyond the paper (issue 16): the same views of the attention projections W_Q, W_K, W_V, W_O.
ATTENTION_TABLES = ("attention_ranks", "attention_vjp_norms", "attention_target_ranks")
ALL_TABLES = GRADIENT_TABLES + LENS_TABLES + ATTENTION_TABLES
DEFAULT_TABLES = ("gradient_ranks", "vjp_norms", "target_ranks", *LENS_TABLES)
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

    ``model``: a config name of conf/model/ (``smollm2-135m``, ``tiny-gpt2``, ...), a local folder,
    a Hugging Face id, or an already loaded ``LoadedModel``.
    """

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, *, device: str = "cpu", dtype: str = "float32",
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

    def lens_rows(self, batch: CapturedBatch, prompt: int, item: LensPrompt, settings: LensSettings,
                  excluded: Sequence[int]) -> tuple[list[dict], list[dict]]:
        """(cell rows, token rows) of one prompt of a batch: per layer and token, LL(x_i) of the FF1
        input and LL(delta_i) of the FF2 VJP. Exact-zero VJPs (last layer, before the last token)
        are marked and get no token rows."""
        adapter, tokenizer = self.adapter, self.tokenizer
        n_positions = batch.lengths[prompt]
        first_ff1 = adapter.ff1_sites(0)[0].matrix  # gated MLPs: gate and up share their input
        vectors, index = [], []
        for layer in range(adapter.n_layers):
            inputs, _ = batch.factors(prompt, (layer, first_ff1))
            _, vjps = batch.factors(prompt, (layer, "ff2"))
            for kind, block in (("ff1_input", inputs), ("ff2_vjp", vjps)):
                vectors.append(block)
                index.extend((layer, position, kind) for position in range(n_positions))
        stacked = torch.cat(vectors)
        target_id = item.target_id
        ranks = target_ranks(adapter, stacked, torch.full((len(stacked),), target_id),
                             normalized=settings.normalized).tolist()
        top_k = settings.top_k
        top_ids, top_logits, bottom_ids, bottom_logits = top_and_bottom(
            adapter, stacked, top_k, normalized=settings.normalized, exclude_ids=excluded
        )
        zero = is_zero_vector(stacked).tolist()
        norms = stacked.norm(dim=-1).tolist()
        example = item.case_id
        common = {"example": example, "prompt": item.prompt, "target_new": item.target_new,
                  "target_new_id": target_id, "target_true": item.target_true,
                  "vocab_size": int(adapter.unembedding.shape[0])}
        cells, tokens = [], []
        for row, (layer, position, kind) in enumerate(index):
            cells.append({**common, "layer": layer, "position": position, "token": item.tokens[position],
                          "segment": item.segments[position], "vector": kind, "norm": norms[row],
                          "is_zero": zero[row], "target_rank": ranks[row]})
            if zero[row]:
                continue
            for end, ids, logits in (("top", top_ids, top_logits), ("bottom", bottom_ids, bottom_logits)):
                for k in range(top_k):
                    token_id = int(ids[row, k])
                    tokens.append({"example": example, "layer": layer, "position": position, "vector": kind,
                                   "end": end, "k": k, "token_id": token_id, "token_text": tokenizer.decode([token_id]),
                                   "logit": float(logits[row, k])})
        return cells, tokens

    def _builders(self, tables: Sequence[str], settings: LensSettings) -> dict[str, Callable]:
        """name -> build(batch, prompts) -> {table: rows}, in the order the tables are asked for."""
        adapter = self.adapter
        excluded = special_token_ids(self.tokenizer) if settings.mask_special else []

        def ids(items: list[LensPrompt]) -> list[int]:
            return [item.case_id for item in items]

        def lens(batch: CapturedBatch, items: list[LensPrompt]) -> dict[str, list[dict]]:
            rows: dict[str, list[dict]] = {"lens_cells": [], "lens_tokens": []}
            for prompt, item in enumerate(items):
                cells, tokens = self.lens_rows(batch, prompt, item, settings, excluded)
                rows["lens_cells"].extend(cells)
                rows["lens_tokens"].extend(tokens)
            return rows

        available: dict[str, Callable] = {
            "gradient_ranks": lambda b, c: {"gradient_ranks": gradient_rank_rows(b, ids(c))},
            "vjp_norms": lambda b, c: {"vjp_norms": vjp_norm_rows(b, ids(c))},
            "target_ranks": lambda b, c: {
                "target_ranks": ff2_target_rank_rows(b, ids(c), adapter, normalized=settings.normalized)},
            "neuron_updates": lambda b, c: {
                "neuron_updates": neuron_update_rows(b, ids(c), adapter, top_k=settings.top_k_neurons)},
            "vjp_similarity": lambda b, c: {"vjp_similarity": vjp_similarity_rows(b, ids(c))},
            "lens": lens,
            "attention_ranks": lambda b, c: {"attention_ranks": attention_rank_rows(b, ids(c))},
            "attention_vjp_norms": lambda b, c: {"attention_vjp_norms": attention_vjp_norm_rows(b, ids(c))},
            "attention_target_ranks": lambda b, c: {
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
        rows: dict[str, list[dict]] = {name: [] for name in tables}
        seconds = {"capture": 0.0, **{name: 0.0 for name in builders}}
        started = time.perf_counter()
        batches = self.capture(items, batch_size, submodules=bool(SUBMODULE_TABLES & set(tables)),
                               attention=bool(set(ATTENTION_TABLES) & set(tables)), progress=progress)
        for chunk, batch in timed(batches, seconds, "capture"):
            for name, build in builders.items():
                tick = time.perf_counter()
                for table, table_rows in build(batch, chunk).items():
                    if table in rows:
                        rows[table].extend(table_rows)
                seconds[name] += time.perf_counter() - tick
        frames = {}
        for name, table_rows in rows.items():
            frame = pd.DataFrame(table_rows)
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
