"""The one folder where backlens keeps what it can rebuild (de-quantized models; later statistics)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BACKLENS_CACHE"
_OFF = {"off", "0", "false", "no", "none"}


def cache_folder() -> Path | None:
    """``$BACKLENS_CACHE`` if set (``off`` disables caching: None), else ``$XDG_CACHE_HOME/backlens``
    or ``~/.cache/backlens``. Outside the checkout on purpose: results/ holds only pipeline outputs."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "backlens"
