"""The part of a stage's items one shard job works on (set by the workflow's shard rules)."""

from __future__ import annotations

from collections.abc import Sequence


def shard_range(shard: Sequence[int] | None, n_items: int, key: str, items: str) -> tuple[int, int]:
    """[start, stop) from the config value ``shard`` (``key`` in messages), or all ``n_items``."""
    if shard is None:
        return 0, n_items
    start, stop = (int(x) for x in shard)
    if not 0 <= start < stop <= n_items:
        raise ValueError(f"{key}=[{start},{stop}] must lie within the {n_items} {items} [0,{n_items}]")
    return start, stop
