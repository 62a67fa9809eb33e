"""Field checks shared by the record loaders; every error names the file, the case and the field."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from backlens.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")


class InvalidRecordError(UserError, ValueError):
    """One record is malformed. ``skip_key`` is the config key that skips such records (the
    loader that knows its config group sets it); without one the message only says to fix it."""

    def __init__(self, file: Path | str, case_id: object, field: str, problem: str, skip_key: str | None = None):
        self.file, self.case_id, self.field, self.problem = str(file), case_id, field, problem
        self.skip_key = skip_key
        hint = (
            f"Fix the record, or set {skip_key}=true to skip invalid records (their number is logged and written with the results)."
            if skip_key
            else "Fix the record."
        )
        super().__init__(f"{file}: case {case_id}, field {field!r}: {problem}. {hint}")


class DataFileError(UserError, ValueError):
    """The file as a whole is unusable (not JSON, not a list, empty, unknown form): skipping
    records cannot help, so the message says to fix or replace the file."""

    def __init__(self, file: Path | str, problem: str, fix: str):
        self.file = str(file)
        super().__init__(f"{file}: {problem}; {fix}")


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


def read_json_list(path: Path, *, what: str, path_key: str) -> list:
    """The file's non-empty JSON list of records; ``what`` names the data set and ``path_key``
    the config key that points at another file."""
    fix = f"point {path_key} at a valid {what} file"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFileError(path, f"not valid JSON ({error})", fix) from error
    except UnicodeDecodeError as error:
        raise DataFileError(path, f"not UTF-8 text ({error.reason} at byte {error.start})", fix) from error
    if not isinstance(data, list):
        raise DataFileError(path, f"expected a JSON list of {what} records, got a {type(data).__name__}", fix)
    if not data:
        raise DataFileError(path, f"the file holds no {what} records (an empty list)", fix)
    return data


def parse_all(
    raws: Iterable[object], parse: Callable[[object, int], T], *, skip_invalid: bool, file: Path, skip_key: str
) -> tuple[list[T], list[SkippedRecord]]:
    """Parse every record; raise on the first bad one (naming ``skip_key``) unless ``skip_invalid``."""
    records: list[T] = []
    skipped: list[SkippedRecord] = []
    for index, raw in enumerate(raws):
        try:
            records.append(parse(raw, index))
        except InvalidRecordError as error:
            if not skip_invalid:
                raise InvalidRecordError(error.file, error.case_id, error.field, error.problem, skip_key) from None
            skipped.append(SkippedRecord(error.case_id, error.field, error.problem))
    if not records:
        raise DataFileError(file, f"all {len(skipped)} records are invalid (first: {skipped[0]})", "fix the file")
    if skipped:
        log.warning("%s: skipped %d invalid records (first: %s)", file, len(skipped), skipped[0])
    return records, skipped
