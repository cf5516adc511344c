"""Feeds window counts to a `CountStore`, final and provisional."""

from __future__ import annotations


from consumers.ports import CountStore
from streams.window_counter import CountedBatch


class CountSink:
    """Upserts every window count a batch carries.

    Final counts are written at once. The store's max-upsert makes provisional
    counts (of a stop or drain flush) safe: a later, complete count replaces
    them, and a replay never lowers them.
    """

    name = "counts"

    def __init__(self, store: CountStore) -> None:
        self.store = store
        self.windows_written = 0

    def write(self, batch: CountedBatch) -> None:
        if batch.closed:
            self.store.upsert(batch.closed)
            self.windows_written += sum(1 for c in batch.closed if c.final)

    def flush(self) -> None:
        pass

    def pending_floor(self, partition: str) -> int | None:
        return None

    def close(self) -> None:
        pass
