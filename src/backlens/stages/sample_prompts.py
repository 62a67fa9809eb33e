"""Rule ``sample_prompts``: a seeded CounterFact sample, tokenized and segmented per model."""

from __future__ import annotations

import logging
from dataclasses import asdict

from omegaconf import DictConfig

from backlens.data.counterfact import load_counterfact_from_config
from backlens.data.prompt_table import prompt_table, sample_records
from backlens.data.sources import file_identity
from backlens.io import write_json, write_table
from backlens.models.loading import load_tokenizer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    dataset = load_counterfact_from_config(cfg.dataset)
    log.info("CounterFact: %d records (%s form) from %s", len(dataset), dataset.source_form, dataset.path)
    tokenizer = load_tokenizer(cfg.model)
    records = sample_records(dataset.records, int(cfg.n_prompts), int(cfg.seed))
    table = prompt_table(records, tokenizer)
    table.insert(0, "model", cfg.model.name)
    write_table(table, cfg.paths.prompts)
    identity = file_identity(dataset.path)
    write_json(
        {
            "dataset_path": identity["path"],
            "dataset_sha256": identity["sha256"],
            "source_form": dataset.source_form,
            "n_records": len(dataset),
            "n_skipped": len(dataset.skipped),
            "skipped": [asdict(s) for s in dataset.skipped],
            "n_prompts": int(cfg.n_prompts),
            "seed": int(cfg.seed),
            "n_tokens": int(len(table)),
        },
        cfg.paths.prompts_meta,
    )
    log.info("wrote %d prompts (%d tokens) to %s", len(records), len(table), cfg.paths.prompts)
