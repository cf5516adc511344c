"""Feeds window counts to a `CountStore`, final and provisional."""

from __future__ import annotations

import time
from typing import Callable

from consumers.ports import CountStore, Sink
from streams.batches import CountedBatch


class CountSink(Sink):
    """Upserts every batch's window counts, frames as they come, and commits
    the store at every checkpoint (`flush`, called before the source commits).

    Final counts are written at once. The store's max-upsert makes provisional
    counts (of a stop or drain flush) safe: a later, complete count replaces
    them, and a replay never lowers them.

    Checkpoints only come from sources that commit (spool, Kinesis, SQS); a
    file run has none until it closes. So the sink also commits by itself
    once `commit_interval` seconds or `max_uncommitted` windows have gone by
    since the last commit: that keeps queries fresh and the store's open
    transaction bounded. Committing early is always safe (max-upserts), only
    committing late is not, and `flush` is never late.
    """

    name = "counts"

    def __init__(
        self,
        store: CountStore,
        commit_interval: float = 2.0,
        max_uncommitted: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.commit_interval = commit_interval
        self.max_uncommitted = max_uncommitted
        self.clock = clock
        self.windows_written = 0
        self.commits = 0
        self._uncommitted = 0
        self._committed_at = clock()

    def write(self, batch: CountedBatch) -> None:
        if not batch.windows:
            return
        self.store.upsert(batch.windows)
        self.windows_written += batch.final_windows
        self._uncommitted += sum(len(counts) for counts in batch.windows)
        if self._uncommitted >= self.max_uncommitted or self.clock() - self._committed_at >= self.commit_interval:
            self._commit()

    def flush(self) -> None:
        self._commit()

    def close(self) -> None:
        self._commit()

    def _commit(self) -> None:
        self.store.commit()
        self.commits += 1
        self._uncommitted = 0
        self._committed_at = self.clock()
