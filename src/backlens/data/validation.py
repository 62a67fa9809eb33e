"""Field checks shared by the record loaders; every error names the file, the case and the field."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class InvalidRecordError(ValueError):
    def __init__(self, file: Path | str, case_id: object, field: str, problem: str):
        self.file, self.case_id, self.field, self.problem = str(file), case_id, field, problem
        super().__init__(
            f"{file}: case {case_id}, field {field!r}: {problem}. Fix the record, or set "
            "dataset.skip_invalid=true to skip invalid records (their number is logged and written with the results)."
        )


@dataclass(frozen=True)
class SkippedRecord:
    case_id: object
    field: str
    problem: str


class RecordReader:
    """Typed access to one raw JSON record that raises ``InvalidRecordError`` on bad fields."""

    def __init__(self, file: Path, raw: object, index: int, id_field: str):
        self.file = file
        if not isinstance(raw, Mapping):
            raise InvalidRecordError(file, f"#{index}", "<record>", f"expected a JSON object, got {type(raw).__name__}")
        self.raw = raw
        self.case_id = raw.get(id_field, f"#{index}")

    def fail(self, field: str, problem: str) -> InvalidRecordError:
        return InvalidRecordError(self.file, self.case_id, field, problem)

    def get(self, path: str, *, required: bool = True) -> Any:
        """Follow a dotted path such as ``requested_rewrite.target_new.str``."""
        node: Any = self.raw
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if required:
                    raise self.fail(path, "missing")
                return None
            node = node[part]
        return node

    def integer(self, path: str) -> int:
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {type(value).__name__} {value!r}")
        return value

    def text(self, path: str, *, required: bool = True) -> str | None:
        value = self.get(path, required=required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise self.fail(path, "empty string")
        return value

    def texts(self, path: str) -> tuple[str, ...]:
        value = self.get(path, required=False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(path, "expected a list of non-empty strings")
        return tuple(value)


def read_json_list(path: Path) -> list:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise InvalidRecordError(path, "<file>", "<json>", f"not valid JSON ({error})") from error
    if not isinstance(data, list):
        raise InvalidRecordError(path, "<file>", "<top level>", f"expected a JSON list, got {type(data).__name__}")
    return data


def parse_all(
    raws: Iterable[object], parse: Callable[[object, int], T], *, skip_invalid: bool, file: Path
) -> tuple[list[T], list[SkippedRecord]]:
    """Parse every record; raise on the first bad one unless ``skip_invalid``."""
    records: list[T] = []
    skipped: list[SkippedRecord] = []
    for index, raw in enumerate(raws):
        try:
            records.append(parse(raw, index))
        except InvalidRecordError as error:
            if not skip_invalid:
                raise
            skipped.append(SkippedRecord(error.case_id, error.field, error.problem))
    if skipped:
        log.warning("%s: skipped %d invalid records (first: %s)", file, len(skipped), skipped[0])
    return records, skipped
