"""Tokenize a prompt and label every token with its ROME segment, from character offsets.

Offsets make this tokenizer-agnostic: GPT-2 BPE attaches the leading space to the next
token (" Obama"), SentencePiece marks it with "▁"; either way a token belongs to the
subject when its character span overlaps the subject's span.

Where the subject is has one home here too: a template's ``{}`` slot places it (so a subject
whose text occurs twice is still found at the right place); only free text is searched, and
there the subject must occur exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backlens.errors import UserError

if TYPE_CHECKING:  # a type only: figure jobs read segments without loading transformers (and torch)
    from transformers import PreTrainedTokenizerBase

# ROME's six segments (causal tracing averages and the paper's Figs 5-6).
SEGMENTS: tuple[str, ...] = (
    "first_subject",
    "middle_subject",
    "last_subject",
    "first_subsequent",
    "further",
    "last",
)
# The one label a token gets when segments overlap (a one-token subject is both first
# and last subject token; ROME counts it in both averages, the flags keep that).
PRIMARY_ORDER: tuple[str, ...] = ("last", "last_subject", "first_subject", "middle_subject", "first_subsequent", "further")


# The subject's slot in a prompt template ("The mother tongue of {} is").
SUBJECT_SLOT = "{}"


class SegmentationError(UserError, ValueError):
    pass


def slot_start(template: str) -> int:
    """Character start of the subject in ``template`` filled with it: where its first slot is."""
    start = template.find(SUBJECT_SLOT)
    if start < 0:
        raise SegmentationError(f"no subject slot '{SUBJECT_SLOT}' in template {template!r}")
    return start


def fill_template(template: str, subject: str) -> tuple[str, int]:
    """(prompt, character start of the subject): the template's first slot filled with ``subject``.
    The slot says where the subject is even when the subject's text occurs elsewhere too."""
    start = slot_start(template)
    return template[:start] + subject + template[start + len(SUBJECT_SLOT) :], start


def locate_subject(prompt: str, subject: str) -> int:
    """Character start of ``subject`` in free text (no template to say where it is).

    Only an unambiguous subject is located: one that occurs more than once raises, since
    either occurrence may be meant; write the prompt as a template with ``{}`` at the meant one.
    """
    start = prompt.find(subject) if subject else -1
    if start < 0:
        raise SegmentationError(f"subject {subject!r} not found in prompt {prompt!r}")
    if prompt.find(subject, start + 1) >= 0:
        example = prompt[:start] + SUBJECT_SLOT + prompt[start + len(subject) :]
        raise SegmentationError(
            f"subject {subject!r} occurs {prompt.count(subject)} times in prompt {prompt!r}; mark the one meant "
            f"with '{SUBJECT_SLOT}' (e.g. {example!r}) and give the subject apart"
        )
    return start


def place_subject(prompt: str, subject: str | None) -> tuple[str, int | None]:
    """(prompt text, character start of the subject) for user input: a ``{}`` slot in ``prompt`` is
    filled with the subject and marks where it is; otherwise the subject must occur exactly once
    (``locate_subject``). Without a subject: the prompt as given and None."""
    if SUBJECT_SLOT in prompt:
        if not subject:
            raise SegmentationError(f"prompt {prompt!r} has a '{SUBJECT_SLOT}' slot but no subject was given")
        return fill_template(prompt, subject)
    if subject is None:
        return prompt, None
    return prompt, locate_subject(prompt, subject)


def subject_token_range(
    offsets: Sequence[tuple[int, int]], subject_char_start: int, subject_char_end: int
) -> tuple[int, int]:
    """[first, end) of the tokens (character ``offsets``) that overlap the subject's characters;
    empty-span tokens (special tokens) never do."""
    overlapping = [
        i for i, (a, b) in enumerate(offsets) if b > a and a < subject_char_end and b > subject_char_start
    ]
    if not overlapping:
        span = f"[{subject_char_start}, {subject_char_end})"
        raise SegmentationError(f"no token overlaps the subject's characters {span}")
    return overlapping[0], overlapping[-1] + 1


@dataclass(frozen=True)
class SegmentedPrompt:
    """A prompt as the model sees it, with per-token segment labels.

    ``flags[segment][i]`` says whether token i belongs to ``segment`` (several can hold);
    ``primary[i]`` is a single label, ``"prefix"`` for tokens before the subject.
    """

    input_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    subject_start: int
    subject_end: int
    primary: tuple[str, ...]
    flags: dict[str, tuple[bool, ...]]

    def __len__(self) -> int:
        return len(self.input_ids)


def segment_flags(n_tokens: int, subject_start: int, subject_end: int) -> dict[str, tuple[bool, ...]]:
    """ROME's segments for a prompt whose subject occupies tokens [subject_start, subject_end)."""
    last = n_tokens - 1

    def mark(condition) -> tuple[bool, ...]:
        return tuple(bool(condition(i)) for i in range(n_tokens))

    return {
        "first_subject": mark(lambda i: i == subject_start),
        "middle_subject": mark(lambda i: subject_start < i < subject_end - 1),
        "last_subject": mark(lambda i: i == subject_end - 1),
        # Even when it is the last token ("... Darrieux is"): ROME's average_causal_effects notebook adds
        # scores[first_a] to the first-subsequent average unconditionally, so that segment overlaps "last".
        "first_subsequent": mark(lambda i: i == subject_end),
        "further": mark(lambda i: subject_end < i < last),
        "last": mark(lambda i: i == last),
    }


def primary_labels(flags: dict[str, tuple[bool, ...]]) -> tuple[str, ...]:
    n_tokens = len(flags["last"])
    labels = []
    for i in range(n_tokens):
        labels.append(next((s for s in PRIMARY_ORDER if flags[s][i]), "prefix"))
    return tuple(labels)


def segment_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, subject_char_start: int | None = None
) -> SegmentedPrompt:
    """Tokenize ``prompt`` (with the tokenizer's special tokens) and label its tokens.

    ``subject_char_start``: where the subject is (from a template's slot); None locates it in the
    prompt as free text (``locate_subject``: it must occur exactly once)."""
    if subject_char_start is None:
        subject_char_start = locate_subject(prompt, subject)
    if subject_char_start < 0 or prompt[subject_char_start : subject_char_start + len(subject)] != subject:
        raise SegmentationError(f"subject {subject!r} not found in prompt {prompt!r}")
    subject_char_end = subject_char_start + len(subject)
    encoding = tokenizer(prompt, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    try:
        start, end = subject_token_range(offsets, subject_char_start, subject_char_end)
    except SegmentationError:
        raise SegmentationError(f"no token of {prompt!r} overlaps the subject {subject!r}") from None
    if not all(offsets[i][1] > offsets[i][0] for i in range(start, end)):
        raise SegmentationError(f"subject {subject!r} tokens are not contiguous in {prompt!r}")
    ids = tuple(int(i) for i in encoding["input_ids"])
    flags = segment_flags(len(ids), start, end)
    return SegmentedPrompt(
        input_ids=ids,
        tokens=tuple(tokenizer.decode([i]) for i in ids),
        offsets=tuple(offsets),
        subject_start=start,
        subject_end=end,
        primary=primary_labels(flags),
        flags=flags,
    )


def first_target_token(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> int:
    """Id of the first token the model must produce after ``prompt`` to say `` target``.

    Taken from the tokenization of prompt + " " + target, so GPT-2 BPE (" Paris" is one
    token) and SentencePiece (which may split the space off) both get the right id.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + " " + target.lstrip())["input_ids"]
    common = 0
    while common < min(len(prompt_ids), len(full_ids)) and prompt_ids[common] == full_ids[common]:
        common += 1
    if common < len(prompt_ids):
        # The target merged into the prompt's last tokens; the model still sees the prompt's
        # own tokens, so take the target's first token on its own.
        return int(tokenizer(" " + target.lstrip(), add_special_tokens=False)["input_ids"][0])
    if common >= len(full_ids):
        raise SegmentationError(f"target {target!r} adds no token after prompt {prompt!r}")
    return int(full_ids[common])
