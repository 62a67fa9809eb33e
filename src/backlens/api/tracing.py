"""ROME's causal tracing of one fact, as the effect tables the ``trace_shard`` stage writes.

    with_effects = trace("smollm2-135m", "The Space Needle is in the city of", "The Space Needle")
    with_effects.grid("mlp")     # token x layer indirect effects of restoring MLP outputs

``trace_prepared`` is the per-fact step of the stage's loop; ``trace`` wraps it for one prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from omegaconf import OmegaConf

from backlens.api.lens import target_token
from backlens.api.models import DEFAULT_MODEL, loaded_model
from backlens.project import config_dir
from backlens.data.known_facts import KnownFact
from backlens.data.segments import SUBJECT_SLOT, place_subject, segment_prompt
from backlens.models.adapters import ArchitectureAdapter
from backlens.models.loading import LoadedModel
from backlens.tracing.facts import TracedPrompt
from backlens.tracing.runs import fact_generator, noise_std
from backlens.tracing.tables import effect_rows, fact_row, token_rows
from backlens.tracing.trace import FactTrace, TraceSettings, trace_fact

# The three maps of ROME's Fig 1: restored hidden state (one layer), MLP and attention outputs (a window).
MAP_KINDS = ("residual", "mlp", "attention")


def window_layers(tracing: Mapping, n_layers: int) -> int:
    """Layers restored around each MLP / attention centre: ``tracing.window`` if set, else
    ``tracing.window_fraction`` of the depth (ROME: 10 of GPT-2 XL's 48), rounded, at least 1."""
    if tracing.get("window") is not None:
        return int(tracing["window"])
    fraction = tracing.get("window_fraction")
    if fraction is None or not 0 < float(fraction) <= 1:
        raise ValueError(f"tracing.window_fraction={fraction}; set a fraction in (0, 1] or tracing.window=<layers>")
    return max(1, round(float(fraction) * n_layers))


def trace_settings(cfg, std: float, n_layers: int) -> TraceSettings:
    """TraceSettings from a config with a ``tracing`` group (backlens/conf/tracing/default.yaml)."""
    tracing = cfg.tracing
    return TraceSettings(
        kinds=tuple(tracing.kinds),
        severed_kinds=tuple(tracing.severed_kinds),
        noise_std=std,
        noise_samples=int(tracing.noise_samples),
        window=window_layers(tracing, n_layers),
        max_rows=int(tracing.max_rows),
        severed_at=str(tracing.severed_at),
    )


@dataclass
class TracedFact:
    """One fact's tables, as the stage writes them: ``fact`` (one row: p_clean, p_corrupted,
    total effect, ...), ``tokens`` (one row per token, ROME segments) and ``effects`` (one row per
    token, layer and kind: P(answer) restored and the indirect effect)."""

    fact: dict
    tokens: pd.DataFrame
    effects: pd.DataFrame
    trace: FactTrace
    settings: TraceSettings

    def grid(self, kind: str = "residual", value: str = "indirect_effect") -> pd.DataFrame:
        """token x layer table of one kind (rows labelled by position and token text)."""
        cells = self.effects[self.effects.kind == kind]
        if cells.empty:
            raise ValueError(f"kind {kind!r} was not traced; traced: {sorted(set(self.effects.kind))}")
        grid = cells.pivot(index="token_index", columns="layer", values=value).sort_index()
        labels = self.tokens.set_index("token_index").token
        grid.index = [f"{i} {labels[i]!r}" for i in grid.index]
        return grid


def trace_prepared(adapter: ArchitectureAdapter, prompt: TracedPrompt, settings: TraceSettings, seed: int,
                   *, progress: bool = False) -> TracedFact:
    """Trace one prepared fact (its noise seeded from (seed, known_id)) and build its tables."""
    segmented = prompt.segmented
    trace = trace_fact(
        adapter, segmented.input_ids, segmented.subject_start, segmented.subject_end, prompt.answer_id, settings,
        fact_generator(int(seed), prompt.fact.known_id), progress=progress,
    )
    return TracedFact(fact_row(prompt, trace), token_rows(prompt), effect_rows(prompt, trace), trace, settings)


def default_tracing() -> dict:
    """The tracing group's default.yaml (shipped in the package) as a dict."""
    return OmegaConf.to_container(OmegaConf.load(config_dir("tracing") / "default.yaml"))


@torch.no_grad()
def greedy_answer(loaded: LoadedModel, input_ids: tuple[int, ...]) -> int:
    logits = loaded.model(input_ids=torch.tensor([list(input_ids)], device=loaded.device)).logits
    return int(logits[0, -1].argmax())


def trace(model: str | LoadedModel = DEFAULT_MODEL, prompt: str = "", subject: str = "", target: str | None = None,
          *, noise_samples: int | None = None, noise_scale: float | None = None, window: int | None = None,
          severed: bool = False, seed: int = 0, progress: bool = True, device: str | None = None,
          dtype: str | None = None, **tracing: object) -> TracedFact:
    """Causal trace of ``prompt`` (``{}`` marks the subject's slot) with its ``subject`` noised.

    ``target``: the answer whose probability is traced (default: the model's greedy next token, as
    ROME traces the model's own answer). ``device``, ``dtype``: where a model given by name is loaded
    (default cpu, float32; ``load``). Defaults from backlens/conf/tracing/default.yaml; ``severed`` adds
    ROME's severed-path kinds at the last subject token. Tables carry the model in their first column.
    """
    loaded = loaded_model(model, device, dtype)
    cfg = {**default_tracing(), **tracing}
    for key, value in (("noise_samples", noise_samples), ("noise_scale", noise_scale), ("window", window)):
        if value is not None:
            cfg[key] = value
    if not severed:
        cfg["severed_kinds"] = []
    text, start = place_subject(prompt, subject)
    segmented = segment_prompt(loaded.tokenizer, text, subject, subject_char_start=start)
    loaded.check_fits(len(segmented), f"prompt {text!r}")
    answer_id = greedy_answer(loaded, segmented.input_ids) if target is None else target_token(
        loaded.tokenizer, text, target)
    answer = loaded.tokenizer.decode([answer_id])
    fact = KnownFact(0, subject, answer.strip() if target is None else target.strip(),
                     text[:start] + SUBJECT_SLOT + text[start + len(subject):], text, None, None)
    std = noise_std(loaded.adapter, float(cfg["noise_scale"]))
    settings = trace_settings(OmegaConf.create({"tracing": cfg}), std, loaded.adapter.n_layers)
    traced = trace_prepared(loaded.adapter, TracedPrompt(fact, segmented, answer_id, answer), settings, seed,
                            progress=progress)
    for table in (traced.tokens, traced.effects):
        table.insert(0, "model", loaded.name)
    traced.fact = {"model": loaded.name, **traced.fact}
    return traced
