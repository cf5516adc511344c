"""Window counts for count-store tests: `WindowCount` rows as the counter's
frames (`WindowCounts`), one per (rollup, partition, key arity)."""

from __future__ import annotations

from typing import Iterable

from consumers.ports import CountStore
from streams.events import WindowCount
from streams.window_counts import WindowCounts


def as_frames(counts: Iterable[WindowCount], window_size_us: int = 3_600_000_000) -> list[WindowCounts]:
    groups: dict[tuple[str, str, int], list[WindowCount]] = {}
    for c in counts:
        groups.setdefault((c.rollup, c.partition, len(c.key)), []).append(c)
    return [
        WindowCounts.from_rows(rollup, tuple(f"k{i}" for i in range(arity)), window_size_us, partition, rows)
        for (rollup, partition, arity), rows in groups.items()
    ]


def upsert(store: CountStore, counts: Iterable[WindowCount]) -> None:
    """Upsert `counts` as frames, then commit."""
    store.upsert(as_frames(counts))
    store.commit()
