"""Group commit: concurrent collector requests share one transport send.

The spool makes every `send` durable with its own fsync'd SQLite transaction,
so one request at a time would cap the collector at the disk's fsync rate.
`GroupCommitWriter` queues the records of concurrent requests and a single
flusher thread hands everything queued to the transport in one `send`: one
fsync for many requests. Each request still gets its answer only after that
send returned, so "Received" still means durable.

Only for transports whose `send` is all-or-nothing (the spool): a partial
accept could not be attributed to the requests of the group.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

from producers.transport import TransportWriter

MAX_GROUP_RECORDS = 20_000  # bounds one transaction; a request is never split
IDLE_EXIT_SECONDS = 2.0  # the flusher thread exits when idle; restarted on demand


@dataclass
class _Pending:
    records: Sequence[bytes]
    done: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    error: BaseException | None = None


class GroupCommitWriter:
    """A `TransportWriter` that coalesces concurrent sends into one."""

    def __init__(self, writer: TransportWriter, max_group_records: int = MAX_GROUP_RECORDS) -> None:
        self.writer = writer
        self.max_group_records = max_group_records
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._flusher: threading.Thread | None = None
        self._closed = False

    def send(self, records: Sequence[bytes]) -> int:
        if not records:
            return 0
        pending = _Pending(records)
        with self._cond:
            if self._closed:
                raise RuntimeError("the transport writer is closed")
            self._queue.append(pending)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="collector-group-commit", daemon=True)
                self._flusher.start()
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.accepted

    def _take_group(self) -> list[_Pending] | None:
        with self._cond:
            if not self._queue:
                self._cond.wait(IDLE_EXIT_SECONDS)
            if not self._queue:
                self._flusher = None  # idle: exit; the next send starts a new flusher
                return None
            group, size = [], 0
            while self._queue and (not group or size + len(self._queue[0].records) <= self.max_group_records):
                item = self._queue.pop(0)
                group.append(item)
                size += len(item.records)
            return group

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            records = [r for item in group for r in item.records]
            try:
                accepted = self.writer.send(records)
                error: BaseException | None = None
                if accepted != len(records):
                    error = RuntimeError(f"the transport accepted {accepted} of {len(records)} records")
            except BaseException as exc:  # every waiter of the group gets the same failure
                error = exc
            for item in group:
                item.error = error
                item.accepted = len(item.records)
                item.done.set()

    def __getattr__(self, name: str) -> object:
        # `healthy`, `take_rejected` ... of the wrapped writer.
        return getattr(self.writer, name)

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self.writer.close()


def coalescing(writer: TransportWriter | None) -> TransportWriter | None:
    """`writer` wrapped in group commit when its sends are all-or-nothing."""
    from producers.spool import SpoolWriter

    if isinstance(writer, SpoolWriter):
        return GroupCommitWriter(writer)
    return writer
