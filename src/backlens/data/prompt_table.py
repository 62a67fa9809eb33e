"""The sampled CounterFact prompts as a tidy token table (one row per prompt token)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from backlens.data.counterfact import CounterFactRecord
from backlens.data.segments import SEGMENTS, SegmentationError, SegmentedPrompt, first_target_token, segment_prompt
from backlens.errors import positive_int

CASE_COLUMNS = ("case_id", "prompt", "subject", "target_new", "target_true", "target_new_id", "n_tokens")


def sample_records(records: Sequence[CounterFactRecord], n: int, seed: int) -> list[CounterFactRecord]:
    """A seeded sample of ``n`` distinct records, in sampled order."""
    n = positive_int(n, "n_prompts", at_most=len(records), what="the number of CounterFact records")
    chosen = np.random.default_rng(seed).choice(len(records), size=n, replace=False)
    return [records[int(i)] for i in chosen]


def segment_record(tokenizer: PreTrainedTokenizerBase, record: CounterFactRecord) -> SegmentedPrompt:
    return segment_prompt(tokenizer, record.prompt, record.subject, subject_char_start=record.subject_start)


def prompt_table(records: Sequence[CounterFactRecord], tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """One row per (case, token position): ids, text, offsets, primary segment and ROME flags."""
    rows = []
    for sample_index, record in enumerate(records):
        try:
            segmented = segment_record(tokenizer, record)
            target_id = first_target_token(tokenizer, record.prompt, record.target_new)
        except SegmentationError as error:
            raise SegmentationError(
                f"case {record.case_id} ({record.source_form} form): {error}; fix the record or sample other cases "
                "(seed=...)"
            ) from error
        for position in range(len(segmented)):
            row = {
                "sample_index": sample_index,
                "case_id": record.case_id,
                "prompt": record.prompt,
                "subject": record.subject,
                "target_new": record.target_new,
                "target_true": record.target_true,
                "target_new_id": target_id,
                "n_tokens": len(segmented),
                "position": position,
                "token_id": segmented.input_ids[position],
                "token": segmented.tokens[position],
                "char_start": segmented.offsets[position][0],
                "char_end": segmented.offsets[position][1],
                "segment": segmented.primary[position],
            }
            row.update({f"is_{name}": segmented.flags[name][position] for name in SEGMENTS})
            rows.append(row)
    return pd.DataFrame(rows)


def prompts_from_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt (case-level columns), in sample order."""
    return table.groupby("sample_index", sort=True).first().reset_index()[["sample_index", *CASE_COLUMNS]]
