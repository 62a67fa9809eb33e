"""The public API: ``BackwardLens`` (gradients through the vocabulary), ``edit`` (one edit, undone on
exit), ``editor`` (a method built once for many edits), ``trace`` (causal tracing of one fact). The
pipeline's stages run on the same functions: BackwardLens's capture loop, the one editor factory
``editing.methods.build_editor`` and ``api.tracing.trace_prepared``.

Names are imported on first use, so a stage importing ``backlens.api.lens`` does not load the editors.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ALL_TABLES": "lens", "BackwardLens": "lens", "LensTables": "lens",
    "EditResult": "editing", "EditorHandle": "editing", "edit": "editing", "editor": "editing", "next_tokens": "editing",
    "load": "models",
    "TracedFact": "tracing", "trace": "tracing",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"backlens.api.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'backlens.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
