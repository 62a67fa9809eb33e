"""The pipeline's sampled prompts (rule ``sample_prompts``' table, tokenized once) as the lens' prompts:
the ``backward_lens``, ``lemma_check``, ``attention`` and ``ft_trace`` rules read the same ids."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from backlens.api.lens import BackwardLens, LensPrompt
from backlens.data.prompt_table import prompts_from_table
from backlens.models.loading import LoadedModel


@dataclass(frozen=True)
class PromptBatchSource:
    """The sampled prompts exactly as tokenized by ``sample_prompts``."""

    case_ids: list[int]
    input_ids: list[list[int]]
    target_ids: list[int]

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> PromptBatchSource:
        ordered = table.sort_values(["sample_index", "position"])
        per_prompt = prompts_from_table(ordered)
        ids = ordered.groupby("sample_index", sort=True).token_id.apply(list)
        return cls(per_prompt.case_id.tolist(), [list(map(int, x)) for x in ids], per_prompt.target_new_id.tolist())

    def sliced(self, start: int, stop: int) -> PromptBatchSource:
        return PromptBatchSource(self.case_ids[start:stop], self.input_ids[start:stop], self.target_ids[start:stop])

    def items(self) -> list[LensPrompt]:
        """The prompts as the API's LensPrompt (ids only: the five tables need no text)."""
        return [
            LensPrompt(int(case_id), tuple(ids), int(target), label=f"CounterFact case {case_id}")
            for case_id, ids, target in zip(self.case_ids, self.input_ids, self.target_ids)
        ]


def read_prompts(path: str, model_name: str) -> PromptBatchSource:
    table = pd.read_parquet(path)
    if set(table.model) != {model_name}:
        raise ValueError(f"{path} was tokenized for {sorted(set(table.model))}, not {model_name!r}; rebuild it")
    return PromptBatchSource.from_table(table)


def capture_batches(loaded: LoadedModel, prompts: PromptBatchSource, batch_size: int, *, submodules: bool = True):
    """Yield (case_ids, CapturedBatch) over all prompts with a progress bar (the API's loop)."""
    for chunk, batch in BackwardLens(loaded).capture(prompts.items(), batch_size, submodules=submodules):
        yield [item.case_id for item in chunk], batch
