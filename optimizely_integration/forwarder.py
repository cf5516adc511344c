"""Drive an `OptimizelyBulkSink` from a transport of optimizely payload
records, committing the transport only past what the Event API acknowledged.

Usage::

    reader = root.reader("spool:data/optimizely-spool", group="optimizely")   # config/root.py
    forwarder = PayloadForwarder(reader, sink)
    forwarder.run()              # blocks until reader.stop() (e.g. from a signal handler)

Commits go to `reader.commit(partition, min(next unread position,
sink.pending_floor(partition)))` at most every `commit_interval` seconds and
once more after the final drain.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from optimizely_integration.bulk_sink import OptimizelyBulkSink
from producers.transport import TransportReader
from streams.batches import BatchKind, RecordBatch

log = logging.getLogger(__name__)


class PayloadForwarder:
    def __init__(
        self,
        reader: TransportReader,
        sink: OptimizelyBulkSink,
        commit_interval: float = 1.0,
        drain_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.sink = sink
        self.commit_interval = commit_interval
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.records = 0
        self._next: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._last_commit = clock()
        self._error: BaseException | None = None

    def on_batch(self, batch: RecordBatch) -> None:
        if batch.kind is BatchKind.DATA and batch.records:
            self.sink.write_payload_records(batch.partition, batch.records, batch.positions)
            self.records += len(batch.records)
            self._next[batch.partition] = max(self._next.get(batch.partition, 0), batch.positions[-1] + 1)
        if self.clock() - self._last_commit >= self.commit_interval:
            self.checkpoint()

    def checkpoint(self) -> None:
        self.sink.flush()
        self._last_commit = self.clock()
        for partition, next_position in self._next.items():
            floor = self.sink.pending_floor(partition)
            position = next_position if floor is None else min(floor, next_position)
            if position > self._committed.get(partition, -1):
                self.reader.commit(partition, position)
                self._committed[partition] = position

    def run(self) -> None:
        """Block until the reader completes; then drain the sink and commit."""
        done = threading.Event()

        def on_error(exc: BaseException) -> None:
            self._error = exc
            done.set()

        self.reader.batches().subscribe(self.on_batch, on_error, done.set)
        done.wait()
        if not self.sink.drain(self.drain_timeout):
            log.error("optimizely forwarder: %d visitors unacknowledged at stop", self.sink.outstanding)
        self.checkpoint()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self.reader.stop()
