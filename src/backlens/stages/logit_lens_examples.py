"""Rule ``logit_lens_examples``: logit-lens tables of FF1 inputs and FF2 VJPs (Fig 4, Figs 11-15).

For each configured edit (prompt -> target_new) one forward and backward pass of the
paper's loss; per layer and prompt token, the most and least probable tokens of LL(x_i)
(FF1 input) and LL(delta_i) (FF2 VJP) and the rank of target_new's first token. Exact-zero
VJPs (last layer, before the last token) are marked and get no token rows.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig

from backlens.analysis.capture import capture_gradient_factors
from backlens.analysis.logit_lens import is_zero_vector, target_ranks, top_and_bottom
from backlens.data.segments import first_target_token, segment_prompt
from backlens.io import write_table
from backlens.models.loading import LoadedModel, load_model

log = logging.getLogger(__name__)


def special_token_ids(tokenizer) -> list[int]:
    """Special and added control tokens (SmolLM2's <filename>, <gh_stars>, ...): they fill the
    ends of the lens of early hidden states but are no words an edit could target."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted(set(tokenizer.all_special_ids) | {int(i) for i, token in added.items() if token.special})


def example_tables(
    loaded: LoadedModel, example_index: int, example, *, top_k: int, normalized: bool, mask_special: bool = True
) -> tuple[list[dict], list[dict]]:
    """(cell rows, token rows) of one example."""
    tokenizer, adapter = loaded.tokenizer, loaded.adapter
    segmented = segment_prompt(tokenizer, example.prompt, example.subject)
    target_id = first_target_token(tokenizer, example.prompt, example.target_new)
    batch = capture_gradient_factors(
        loaded.model, adapter, [list(segmented.input_ids)], [target_id],
        pad_id=tokenizer.pad_token_id, submodules=False,
    )
    first_ff1 = adapter.ff1_sites(0)[0].matrix  # gated MLPs: gate and up share their input
    vectors, index = [], []
    for layer in range(adapter.n_layers):
        inputs, _ = batch.factors(0, (layer, first_ff1))
        _, vjps = batch.factors(0, (layer, "ff2"))
        for kind, block in (("ff1_input", inputs), ("ff2_vjp", vjps)):
            vectors.append(block)
            index.extend((layer, position, kind) for position in range(len(segmented)))
    stacked = torch.cat(vectors)
    ranks = target_ranks(adapter, stacked, torch.full((len(stacked),), target_id), normalized=normalized).tolist()
    excluded = special_token_ids(tokenizer) if mask_special else []
    top_ids, top_logits, bottom_ids, bottom_logits = top_and_bottom(
        adapter, stacked, top_k, normalized=normalized, exclude_ids=excluded
    )
    zero = is_zero_vector(stacked).tolist()
    norms = stacked.norm(dim=-1).tolist()
    common = {"example": example_index, "prompt": example.prompt, "target_new": example.target_new,
              "target_new_id": target_id, "target_true": example.get("target_true"),
              "vocab_size": int(adapter.unembedding.shape[0])}
    cells, tokens = [], []
    for row, (layer, position, kind) in enumerate(index):
        cells.append({**common, "layer": layer, "position": position, "token": segmented.tokens[position],
                      "segment": segmented.primary[position], "vector": kind, "norm": norms[row],
                      "is_zero": zero[row], "target_rank": ranks[row]})
        if zero[row]:
            continue
        for end, ids, logits in (("top", top_ids, top_logits), ("bottom", bottom_ids, bottom_logits)):
            for k in range(top_k):
                token_id = int(ids[row, k])
                tokens.append({"example": example_index, "layer": layer, "position": position, "vector": kind,
                               "end": end, "k": k, "token_id": token_id, "token_text": tokenizer.decode([token_id]),
                               "logit": float(logits[row, k])})
    return cells, tokens


def run(cfg: DictConfig) -> None:
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    settings = cfg.analysis.logit_lens
    cells, tokens = [], []
    for example_index, example in enumerate(settings.examples):
        example_cells, example_tokens = example_tables(
            loaded, example_index, example, top_k=int(settings.top_k), normalized=bool(settings.normalized),
            mask_special=bool(settings.get("mask_special_tokens", True)),
        )
        cells.extend(example_cells)
        tokens.extend(example_tokens)
        last = [c for c in example_cells if c["vector"] == "ff2_vjp" and c["segment"] == "last"]
        log.info("%r -> %r: target rank in LL(delta) at the last token per layer: %s",
                 example.prompt, example.target_new, [c["target_rank"] for c in last])
    for rows, path in ((cells, cfg.paths.logit_lens_cells), (tokens, cfg.paths.logit_lens_tokens)):
        table = pd.DataFrame(rows)
        table.insert(0, "model", cfg.model.name)
        table["normalized"] = bool(settings.normalized)
        write_table(table, path)
