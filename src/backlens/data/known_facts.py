"""ROME's known_1000 facts, used for causal tracing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backlens.data.segments import SUBJECT_SLOT
from backlens.data.sources import resolve_from_config
from backlens.data.validation import RecordReader, SkippedRecord, parse_all, read_json_list


@dataclass(frozen=True)
class KnownFact:
    known_id: int
    subject: str
    attribute: str
    template: str
    prompt: str
    relation_id: str | None
    prediction: str | None


@dataclass
class KnownFactsDataset:
    path: Path
    records: list[KnownFact]
    skipped: list[SkippedRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def _parse(path: Path, raw: object, index: int) -> KnownFact:
    reader = RecordReader(path, raw, index, id_field="known_id")
    prompt = reader.text("prompt")
    subject = reader.text("subject")
    if subject not in prompt:
        raise reader.fail("subject", f"subject {subject!r} not found in prompt {prompt!r}")
    template = reader.text("template")
    if SUBJECT_SLOT not in template:
        raise reader.fail("template", f"no subject slot '{SUBJECT_SLOT}' in {template!r}")
    return KnownFact(
        known_id=reader.integer("known_id"),
        subject=subject,
        attribute=reader.text("attribute"),
        template=template,
        prompt=prompt,
        relation_id=reader.text("relation_id", required=False),
        prediction=reader.get("prediction", required=False),
    )


def load_known_facts(path: Path, *, skip_invalid: bool = False, config_key: str = "known_facts") -> KnownFactsDataset:
    """Load ROME's known facts; ``config_key`` is the config group (``known_facts`` in the root
    config, where conf/dataset/known_1000.yaml is mounted), named in error messages."""
    records, skipped = parse_all(
        read_json_list(path, what="known_1000", path_key=f"{config_key}.path"),
        lambda raw, i: _parse(path, raw, i),
        skip_invalid=skip_invalid,
        file=path,
        skip_key=f"{config_key}.skip_invalid",
    )
    return KnownFactsDataset(path=path, records=records, skipped=skipped)


def load_known_facts_from_config(cfg: Mapping) -> KnownFactsDataset:
    path = resolve_from_config(cfg, "known_1000")
    return load_known_facts(path, skip_invalid=bool(cfg.get("skip_invalid", False)))
