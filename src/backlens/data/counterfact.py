"""CounterFact in ROME's canonical nested form and in EasyEdit's flattened form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backlens.data.segments import SUBJECT_SLOT, SegmentationError, fill_template, locate_subject, slot_start
from backlens.data.sources import resolve_from_config
from backlens.data.validation import DataFileError, RecordReader, SkippedRecord, parse_all, read_json_list

SourceForm = Literal["rome", "easyedit"]


@dataclass(frozen=True)
class PromptWithAnswer:
    prompt: str
    answer: str


@dataclass(frozen=True)
class CounterFactRecord:
    """One requested rewrite "subject relation target_true" -> "target_new".

    ``prompt_template`` holds the subject slot ``{}``; targets carry no leading space
    (tokenizers add it where the model needs one).
    """

    case_id: int
    prompt_template: str
    subject: str
    target_new: str
    target_true: str
    source_form: SourceForm
    relation_id: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[PromptWithAnswer, ...] = ()
    attribute_prompts: tuple[PromptWithAnswer, ...] = ()
    generation_prompts: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        return fill_template(self.prompt_template, self.subject)[0]

    @property
    def subject_start(self) -> int:
        """Character start of the subject in ``prompt``: the template's slot, not a text search."""
        return slot_start(self.prompt_template)


@dataclass
class CounterFactDataset:
    path: Path
    source_form: SourceForm
    records: list[CounterFactRecord]
    skipped: list[SkippedRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def detect_form(raw: object, path: Path | str = "<records>") -> SourceForm:
    """The form of a CounterFact file, told from its first record."""
    if isinstance(raw, Mapping) and "requested_rewrite" in raw:
        return "rome"
    if isinstance(raw, Mapping) and "target_new" in raw and "rephrase_prompt" in raw:
        return "easyedit"
    case = raw.get("case_id", "#0") if isinstance(raw, Mapping) else "#0"
    found = f"keys {sorted(raw)[:10]}" if isinstance(raw, Mapping) else f"a {type(raw).__name__}"
    raise DataFileError(
        path,
        f"cannot tell the CounterFact form from the first record (case {case}): expected ROME's "
        f"'requested_rewrite' or EasyEdit's 'target_new' + 'rephrase_prompt', found {found}",
        "fix that record or point dataset.path at a CounterFact file",
    )


def _parse_rome(reader: RecordReader) -> CounterFactRecord:
    template = reader.text("requested_rewrite.prompt")
    subject = reader.text("requested_rewrite.subject")
    if SUBJECT_SLOT not in template:
        raise reader.fail("requested_rewrite.prompt", f"no subject slot '{{}}' in {template!r}")
    target_true = reader.text("requested_rewrite.target_true.str")
    target_new = reader.text("requested_rewrite.target_new.str")
    return CounterFactRecord(
        case_id=reader.integer("case_id"),
        prompt_template=template,
        subject=subject,
        target_new=target_new,
        target_true=target_true,
        source_form="rome",
        relation_id=reader.text("requested_rewrite.relation_id", required=False),
        paraphrase_prompts=reader.texts("paraphrase_prompts"),
        neighborhood_prompts=tuple(PromptWithAnswer(p, target_true) for p in reader.texts("neighborhood_prompts")),
        attribute_prompts=tuple(PromptWithAnswer(p, target_new) for p in reader.texts("attribute_prompts")),
        generation_prompts=reader.texts("generation_prompts"),
    )


def _parse_easyedit(reader: RecordReader) -> CounterFactRecord:
    prompt = reader.text("prompt")
    subject = reader.text("subject")
    # The flattened form has no template: the subject must occur exactly once in the prompt.
    try:
        start = locate_subject(prompt, subject)
    except SegmentationError as error:
        raise reader.fail("subject", str(error)) from None
    locality_prompt = reader.text("locality_prompt", required=False)
    locality_answer = reader.text("locality_ground_truth", required=locality_prompt is not None)
    rephrase = reader.text("rephrase_prompt", required=False)
    return CounterFactRecord(
        case_id=reader.integer("case_id"),
        prompt_template=prompt[:start] + SUBJECT_SLOT + prompt[start + len(subject) :],
        subject=subject,
        target_new=reader.text("target_new"),
        target_true=reader.text("ground_truth"),
        source_form="easyedit",
        paraphrase_prompts=(rephrase,) if rephrase else (),
        neighborhood_prompts=(PromptWithAnswer(locality_prompt, locality_answer),) if locality_prompt else (),
    )


_PARSERS = {"rome": _parse_rome, "easyedit": _parse_easyedit}


def load_counterfact(path: Path, *, skip_invalid: bool = False, config_key: str = "dataset") -> CounterFactDataset:
    """Load either CounterFact form; malformed records raise unless ``skip_invalid``.
    ``config_key`` is the config group the file came from (named in error messages)."""
    raws = read_json_list(path, what="CounterFact", path_key=f"{config_key}.path")
    form = detect_form(raws[0], path)
    seen: set[int] = set()

    def parse(raw: object, index: int) -> CounterFactRecord:
        reader = RecordReader(path, raw, index, id_field="case_id")
        record = _PARSERS[form](reader)
        if record.case_id in seen:
            raise reader.fail("case_id", "duplicate case_id")
        seen.add(record.case_id)
        return record

    records, skipped = parse_all(raws, parse, skip_invalid=skip_invalid, file=path, skip_key=f"{config_key}.skip_invalid")
    return CounterFactDataset(path=path, source_form=form, records=records, skipped=skipped)


def load_counterfact_from_config(cfg: Mapping) -> CounterFactDataset:
    """Resolve the file named by a ``conf/dataset/counterfact.yaml`` and load it."""
    path = resolve_from_config(cfg, "CounterFact")
    return load_counterfact(path, skip_invalid=bool(cfg.get("skip_invalid", False)))
