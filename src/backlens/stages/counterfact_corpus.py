"""Rule ``counterfact_corpus``: natural-language text for the FF2 statistics when WikiText is out of reach.

Offline, the default statistics corpus is text sampled from the model itself. To measure what
that choice changes, this stage writes a second, human-written corpus: the true statements of
CounterFact cases outside every range the benchmark uses ("<prompt with subject> <target_true>.",
and the neighbourhood prompts with their answers), one per line. Use it with
``editing.corpus.source=text_file editing.corpus.path=<this file>``.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from backlens.data.counterfact import load_counterfact_from_config
from backlens.io import write_text

log = logging.getLogger(__name__)


def true_sentences(records) -> list[str]:
    """One sentence per true fact: the filled prompt and its true answer, then the neighbours'."""
    sentences = []
    for record in records:
        sentences.append(f"{record.prompt} {record.target_true}.")
        sentences.extend(f"{n.prompt} {n.answer}." for n in record.neighborhood_prompts)
    return sentences


def run(cfg: DictConfig) -> None:
    corpus = cfg.editing.counterfact_corpus
    used_until = max(int(cfg.editing.mend_training.first_case) + int(cfg.editing.mend_training.n_cases),
                     int(cfg.editing.first_case) + int(cfg.editing.n_cases),
                     int(cfg.editing.sweep.first_case) + int(cfg.editing.sweep.n_cases))
    if int(corpus.first_case) < used_until:
        raise ValueError(f"editing.counterfact_corpus.first_case={corpus.first_case} overlaps cases the benchmark "
                         f"uses (up to {used_until - 1}); start at {used_until} or later")
    dataset = load_counterfact_from_config(cfg.dataset)
    records = dataset.records[int(corpus.first_case):]
    sentences = true_sentences(records)
    write_text("\n".join(sentences) + "\n", cfg.paths.counterfact_corpus)
    log.info("wrote %d sentences from CounterFact records %d-%d of %s to %s", len(sentences),
             int(corpus.first_case), int(corpus.first_case) + len(records) - 1, dataset.path, cfg.paths.counterfact_corpus)
