"""Edit requests built from CounterFact records, with the target tokens each model must produce."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from backlens.data.counterfact import CounterFactRecord, PromptWithAnswer


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
    """One rewrite: make ``prompt`` (which mentions ``subject``) continue with ``target_new``."""

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

    @classmethod
    def from_record(cls, record: CounterFactRecord) -> "EditRequest":
        if record.subject not in record.prompt:
            raise ValueError(f"case {record.case_id}: subject {record.subject!r} not in prompt {record.prompt!r}")
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
        )

    def subject_last_index(self, tokenizer: PreTrainedTokenizerBase, prompt: str | None = None) -> int:
        """Index of the subject's last token in ``prompt`` (default: the edit prompt)."""
        text = self.prompt if prompt is None else prompt
        return subject_last_index(tokenizer, text, self.subject)


def subject_last_index(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> int:
    start = prompt.rfind(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not found in prompt {prompt!r}")
    end_char = start + len(subject)
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    last = None
    for index, (begin, end) in enumerate(encoded["offset_mapping"]):
        if end > begin and begin < end_char:
            last = index
    if last is None:
        raise ValueError(f"no token covers subject {subject!r} in prompt {prompt!r}")
    return last


def subject_first_index(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> int:
    start = prompt.rfind(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not found in prompt {prompt!r}")
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    for index, (begin, end) in enumerate(encoded["offset_mapping"]):
        if end > start and end > begin:
            return index
    raise ValueError(f"no token covers subject {subject!r} in prompt {prompt!r}")


def subject_token_index(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, fact_token: str = "subject_last") -> int:
    """ROME's ``fact_token``: the subject's last (``subject_last``) or first (``subject_first``) token.
    ROME's ``last`` (index -1 of a padded batch) is not offered: MEMIT calls it bugged."""
    if fact_token == "subject_last":
        return subject_last_index(tokenizer, prompt, subject)
    if fact_token == "subject_first":
        return subject_first_index(tokenizer, prompt, subject)
    raise ValueError(f"method fact_token={fact_token!r}: use subject_last or subject_first")
