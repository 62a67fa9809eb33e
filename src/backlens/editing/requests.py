"""Edit requests built from CounterFact records, with the target tokens each model must produce."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from backlens.data.counterfact import CounterFactRecord, PromptWithAnswer
from backlens.data.segments import SegmentationError, fill_template, locate_subject, subject_token_range


@dataclass(frozen=True)
class Continuation:
    """Token ids of `` answer`` as the model must produce them right after ``prompt``.

    ``merged`` is True when prompt + " " + answer does not tokenize as prompt's tokens
    followed by more tokens (the answer fused with the prompt's end); the answer is then
    tokenized on its own with a leading space.
    """

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    merged: bool


def continuation(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> Continuation:
    prompt_ids = tuple(tokenizer(prompt)["input_ids"])
    full_ids = tuple(tokenizer(prompt + " " + answer.strip())["input_ids"])
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return Continuation(prompt_ids, full_ids[len(prompt_ids) :], merged=False)
    alone = tuple(tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])
    if not alone:
        raise ValueError(f"answer {answer!r} after prompt {prompt!r} tokenizes to nothing; fix the record's target")
    return Continuation(prompt_ids, alone, merged=True)


def space_sensitive(tokenizer: PreTrainedTokenizerBase, answer: str) -> bool:
    """True when `` answer`` and ``answer`` tokenize differently (counted in the results)."""
    with_space = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    without = tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
    return list(with_space) != list(without)


@dataclass(frozen=True)
class EditRequest:
    """One rewrite: make ``prompt`` (which mentions ``subject``) continue with ``target_new``.

    ``subject_start``: the subject's character start in ``prompt``, from the record's template slot;
    None (free text) locates it, and then the subject must occur exactly once (``locate_subject``).
    """

    case_id: int
    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[PromptWithAnswer, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    # "dataset" when CounterFact supplies generation prompts; otherwise which prompts stood in.
    generation_source: str = "dataset"
    subject_start: int | None = None

    def __post_init__(self) -> None:
        start = locate_subject(self.prompt, self.subject) if self.subject_start is None else self.subject_start
        if self.prompt[start : start + len(self.subject)] != self.subject or not self.subject:
            raise SegmentationError(
                f"case {self.case_id}: subject {self.subject!r} is not at character {start} of {self.prompt!r}")
        object.__setattr__(self, "subject_start", start)  # frozen: set once, here

    @classmethod
    def from_record(cls, record: CounterFactRecord) -> "EditRequest":
        generation = record.generation_prompts
        source = "dataset"
        if not generation:
            # EasyEdit's flattened CounterFact has no generation prompts: the edit prompt and
            # the paraphrase stand in (recorded per case in generation_source).
            generation = (record.prompt, *record.paraphrase_prompts)
            source = "edit_and_paraphrase_prompts"
        return cls(
            case_id=record.case_id,
            prompt=record.prompt,
            subject=record.subject,
            target_new=record.target_new,
            target_true=record.target_true,
            paraphrase_prompts=record.paraphrase_prompts,
            neighborhood_prompts=record.neighborhood_prompts,
            generation_prompts=tuple(generation),
            generation_source=source,
            subject_start=record.subject_start,
        )

    def in_context(self, template: str) -> tuple[str, int]:
        """(text, the subject's character start in it): a context template ("... {}") filled with the
        edit prompt. The subject is found from the slot, so a generated context that happens to
        mention the subject does not move it."""
        text, prompt_start = fill_template(template, self.prompt)
        return text, prompt_start + self.subject_start


FACT_TOKENS = ("subject_last", "subject_first")


def subject_token_index(
    tokenizer: PreTrainedTokenizerBase, text: str, subject_char_start: int, subject: str,
    fact_token: str = "subject_last",
) -> int:
    """ROME's ``fact_token``: the subject's last (``subject_last``) or first (``subject_first``) token
    in ``text``, the subject starting at character ``subject_char_start``.
    ROME's ``last`` (index -1 of a padded batch) is not offered: MEMIT calls it bugged."""
    if fact_token not in FACT_TOKENS:
        raise ValueError(f"method fact_token={fact_token!r}: use subject_last or subject_first")
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    first, end = subject_token_range(offsets, subject_char_start, subject_char_start + len(subject))
    return end - 1 if fact_token == "subject_last" else first
