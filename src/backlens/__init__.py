"""Backward Lens: project language-model gradients into the vocabulary space.

    from backlens import BackwardLens
    lens = BackwardLens("smollm2-135m")
    lens.run("Obama grew up in", " Paris").summary()

The public names (``BackwardLens``, ``edit``, ``trace``, ``load``, ``next_tokens``) are imported on
first use, so ``import backlens`` stays fast (torch and transformers load only when needed).
"""

from __future__ import annotations

import importlib

# Every use of the project's Hydra config needs the ``${artifact:...}`` resolver (conf/config.yaml's
# paths); registering it here, where any ``import backlens.<module>`` passes, means no script or
# benchmark that composes the config can forget it (omegaconf only: no torch).
from backlens.artifacts import register_resolver

register_resolver()

__all__ = ["BackwardLens", "EditResult", "LensTables", "TracedFact", "edit", "load", "next_tokens", "trace"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("backlens.api"), name)
    raise AttributeError(f"module 'backlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
