"""Rule ``backward_lens``: one capture pass over the sampled prompts (or a shard of them), five tidy
tables; ``backward_lens_merge`` (its own module, no torch) joins the shards."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from backlens import sharding
from backlens.api.lens import GRADIENT_TABLES, BackwardLens, LensSettings, LensTables
from backlens.api.sampled_prompts import PromptBatchSource, read_prompts
from backlens.io import write_json, write_table
from backlens.models.loading import LoadedModel, load_model

log = logging.getLogger(__name__)


TABLES = list(GRADIENT_TABLES)


def shard_range(cfg: DictConfig, n_prompts: int) -> tuple[int, int]:
    """[start, stop) of the sampled prompts this job analyses (analysis.shard, or all).

    Shards must cut at batch boundaries: a prompt's numbers then come from the same padded batch
    whatever the shard size (float32 results depend on the batch's padding at round-off level).
    """
    start, stop = sharding.shard_range(cfg.analysis.get("shard"), n_prompts, "analysis.shard", "sampled prompts")
    batch_size = int(cfg.analysis.batch_size)
    if start % batch_size or (stop % batch_size and stop != n_prompts):
        raise ValueError(
            f"analysis.shard=[{start},{stop}]: shards must cut at multiples of analysis.batch_size={batch_size}; "
            "make the workflow's analysis_shard_size a multiple of it"
        )
    return start, stop


def build_tables(loaded: LoadedModel, prompts: PromptBatchSource, analysis: DictConfig, *,
                 progress: bool = True) -> LensTables:
    """The rule's five tables for ``prompts`` (settings ``analysis``: cfg.analysis), with seconds per
    step (capture apart from each table): what the rule writes and what benchmarks/analysis_speed.py times."""
    return BackwardLens(loaded).run_prepared(
        prompts.items(), batch_size=int(analysis.batch_size), tables=TABLES, progress=progress,
        settings=LensSettings(normalized=bool(analysis.normalized), top_k_neurons=int(analysis.top_k_neurons)),
    )


def run(cfg: DictConfig) -> None:
    """The five tables for the sampled prompts, or for the analysis.shard part of them (then the
    ``merge`` stage joins the shards into the same tables a single job writes)."""
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    all_prompts = read_prompts(cfg.paths.prompts, cfg.model.name)
    start, stop = shard_range(cfg, len(all_prompts.case_ids))
    prompts = all_prompts.sliced(start, stop)
    result = build_tables(loaded, prompts, cfg.analysis)
    for name in TABLES:
        table = result.tables[name]
        write_table(table, cfg.paths[name])
        log.info("wrote %s (%d rows)", cfg.paths[name], len(table))
    write_json(
        {
            "model": cfg.model.name,
            "model_source": loaded.source,
            "architecture": loaded.adapter.describe(),
            "dtype": str(loaded.dtype),
            "n_prompts": len(prompts.case_ids),
            "prompts": [start, stop],
            "loss": cfg.paper.loss,
            "rank_tolerance": "singular values of the P x P factor core above P * eps(float32) x the largest",
            "seconds": result.seconds,
        },
        cfg.paths.analysis_meta,
    )
