"""Atomic writes: a result file is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the gallery's 24 image jobs write atomically without loading pandas
    import pandas as pd


def temporary_sibling(path: Path) -> Path:
    """An unused hidden name beside ``path`` (same suffix, so writers pick the same format).

    Not created here, so the writer creates it with the usual umask permissions.
    """
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy table as parquet or CSV, chosen by the file suffix."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return _write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))
    if suffix == ".csv":
        return _write_with(path, lambda tmp: frame.to_csv(tmp, index=False))
    raise ValueError(f"{path}: tables are written as .parquet or .csv")


def write_text(text: str, path: str | Path) -> Path:
    return _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(data: object, path: str | Path) -> Path:
    return write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", path)


def write_torch(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically, with the same bytes for the same object.

    Saved to a file *name*, torch prefixes every record of the zip with that name's stem, here the
    random temporary one; saved to an open file it uses its fixed prefix ``archive``.
    """
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return _write_with(path, save)
