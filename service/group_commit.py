"""Group commit: how the collector's requests reach the transport.

The spool makes every `send` durable with its own fsync'd SQLite transaction,
so one request at a time would cap the collector at the disk's fsync rate.
`Committer` queues the records of concurrent requests, and one flusher
thread hands everything queued to the transport in a single `send`: one
fsync for many requests. A request awaits an asyncio future that the flusher
resolves once that send returned, so "Received" still means durable, and no
worker thread is held while a request waits.

Per group, in order:

1. the late re-check: an event whose time fell behind the collector's
   acceptance floor while it waited (see `docs/http.md`, "Late events") fails
   its request with 422 instead of being sent to be dropped;
2. the idempotency ledger (`service.idempotency`): events with an `event_id`
   are claimed in one transaction; duplicates are left out and reported;
3. one `send` of the remaining records;
4. the claims are confirmed (or released when the send certainly wrote
   nothing) and every request of the group gets its answer.

Coalescing is only for transports whose `send` is all-or-nothing (the spool):
a partial accept could not be attributed to the requests of a group. Other
transports (Kinesis, SQS) get one `send` per request, on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from fastapi.concurrency import run_in_threadpool

from producers.transport import TransportWriter, sends_all_or_nothing
from service.idempotency import DUPLICATE, RESEND, Claim, IdempotencyLedger

log = logging.getLogger(__name__)

MAX_GROUP_RECORDS = 20_000  # bounds one transaction; a request is never split
IDLE_EXIT_SECONDS = 2.0  # the flusher thread exits when idle; restarted on demand


class LateError(Exception):
    """An event's time fell behind the acceptance floor before it was sent."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class PartialSend(Exception):
    """A non-atomic transport accepted only part of a request."""

    def __init__(self, accepted: int, total: int) -> None:
        super().__init__(f"the transport accepted {accepted} of {total} events")
        self.accepted = accepted
        self.total = total


class LedgerError(Exception):
    """The idempotency ledger could not be read or written."""


@dataclass(eq=False)
class Submission:
    """One request's records. `keys[i]` is the event_id of `lines[i]` (None:
    no idempotency), `times[i]` its event time (UTC epoch microseconds)."""

    username: str
    lines: list[bytes]
    keys: list[str | None]
    times: list[int]
    accepted: int = 0
    duplicates: list[str] = field(default_factory=list)
    error: BaseException | None = None
    _dropped: set[int] = field(default_factory=set)
    _new: list[tuple[str, str]] = field(default_factory=list)
    _resent: list[tuple[str, str]] = field(default_factory=list)
    _future: asyncio.Future[None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def keyed(self) -> bool:
        return any(self.keys)  # an event_id is never empty


class Committer:
    """Puts submissions on the transport; see the module docstring.

    `floor_us()` gives the oldest event time that may still be sent (None: no
    check); `ledger` None turns idempotency off."""

    def __init__(
        self,
        writer: TransportWriter,
        ledger: IdempotencyLedger | None = None,
        floor_us: Callable[[], int | None] | None = None,
        coalesce: bool | None = None,
        max_group_records: int = MAX_GROUP_RECORDS,
    ) -> None:
        self.writer = writer
        self.ledger = ledger
        self.floor_us = floor_us
        self.atomic = sends_all_or_nothing(writer)
        self.coalesce = self.atomic if coalesce is None else coalesce
        self.max_group_records = max_group_records
        self._queue: list[Submission] = []
        self._cond = threading.Condition()
        self._flusher: threading.Thread | None = None
        self._closed = False

    async def commit(self, sub: Submission) -> Submission:
        """Send `sub` (or find its events duplicates); its fields say how it went."""
        if not self.coalesce:
            await run_in_threadpool(self._process, [sub])
            return sub
        loop = asyncio.get_running_loop()
        sub._loop, sub._future = loop, loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the collector's transport is closed")
            self._queue.append(sub)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="collector-group-commit", daemon=True)
                self._flusher.start()
            self._cond.notify()
        await sub._future
        return sub

    def commit_blocking(self, sub: Submission) -> Submission:
        """The same for a caller without an event loop (tests, tools)."""
        self._process([sub])
        return sub

    # -- the flusher ----------------------------------------------------------------

    def _take_group(self) -> list[Submission] | None:
        with self._cond:
            if not self._queue:
                self._cond.wait(IDLE_EXIT_SECONDS)
            if not self._queue:
                self._flusher = None  # idle: exit; the next commit starts a new flusher
                return None
            group, size = [], 0
            while self._queue and (not group or size + len(self._queue[0].lines) <= self.max_group_records):
                item = self._queue.pop(0)
                group.append(item)
                size += len(item.lines)
            return group

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            try:
                self._process(group)
            except BaseException as exc:  # never leave a request waiting
                log.exception("http: group commit failed")
                for sub in group:
                    if sub.error is None and not sub.accepted:
                        sub.error = exc
            by_loop: dict[asyncio.AbstractEventLoop, list[Submission]] = {}
            for sub in group:
                if sub._loop is not None:
                    by_loop.setdefault(sub._loop, []).append(sub)
            for loop, subs in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_wake, subs)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass

    # -- one group ------------------------------------------------------------------

    def _process(self, group: list[Submission]) -> None:
        floor = self.floor_us() if self.floor_us is not None else None
        live = [sub for sub in group if not self._too_late(sub, floor)]
        if self.ledger is not None and any(sub.keyed for sub in live):
            live = self._claim(live, floor)
        records: list[bytes] = []
        for sub in live:
            if sub._dropped:
                records.extend(line for i, line in enumerate(sub.lines) if i not in sub._dropped)
            else:
                records.extend(sub.lines)
        try:
            accepted = self.writer.send(records) if records else 0
        except BaseException as exc:
            self._failed(live, exc)
            return
        if accepted != len(records):
            self._failed(live, PartialSend(accepted, len(records)), partial=True)
            return
        if self.ledger is not None:
            done = [key for sub in live for key in (*sub._new, *sub._resent)]
            try:
                self.ledger.confirm(done)
            except Exception as exc:  # the events are durable; the rows stay pending
                log.warning("http: idempotency ledger: cannot confirm %d key(s): %s", len(done), exc)
        for sub in live:
            sub.accepted = len(sub.lines) - len(sub._dropped)

    def _too_late(self, sub: Submission, floor: int | None) -> bool:
        if floor is None or not sub.times:
            return False
        oldest = min(sub.times)
        if oldest >= floor:
            return False
        sub.error = LateError("an event's time fell behind the lateness while the request waited for the transport; resend it", sub.times.index(oldest))
        return True

    def _claim(self, live: list[Submission], floor: int | None) -> list[Submission]:
        claims: list[Claim] = []
        owners: list[tuple[Submission, int]] = []
        for sub in live:
            for i, key in enumerate(sub.keys):
                if key is not None:
                    claims.append(Claim(sub.username, key, sub.lines[i], sub.times[i]))
                    owners.append((sub, i))
        assert self.ledger is not None
        try:
            verdicts = self.ledger.claim(claims)
        except Exception as exc:
            log.warning("http: idempotency ledger unavailable: %s", exc)
            for sub in live:
                sub.error = LedgerError(f"idempotency ledger unavailable: {type(exc).__name__}")
            return []
        failed: set[int] = set()
        for (sub, i), claim, verdict in zip(owners, claims, verdicts):
            key = (claim.username, claim.event_id)
            if verdict.kind == DUPLICATE:
                sub._dropped.add(i)
                sub.duplicates.append(claim.event_id)
            elif verdict.kind == RESEND:
                # An earlier attempt may or may not have arrived: send its record
                # again, byte for byte, so the daemon counts it once either way.
                sub.lines[i] = verdict.record
                sub.times[i] = verdict.event_us
                sub._resent.append(key)
                if floor is not None and verdict.event_us < floor:
                    sub.error = LateError(
                        f"an earlier attempt of event_id {claim.event_id!r} may not have been received, and its time"
                        " is now behind the lateness",
                        i,
                    )
                    failed.add(id(sub))
            else:
                sub._new.append(key)
        if failed:
            self.ledger.release(key for sub in live if id(sub) in failed for key in sub._new)
        return [sub for sub in live if id(sub) not in failed]

    def _failed(self, live: list[Submission], exc: BaseException, partial: bool = False) -> None:
        for sub in live:
            sub.error = exc
        if self.ledger is not None and self.atomic and not partial:
            # An all-or-nothing send that failed wrote nothing: a retry starts afresh.
            try:
                self.ledger.release(key for sub in live for key in sub._new)
            except Exception as err:
                log.warning("http: idempotency ledger: cannot release claims: %s", err)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            self._closed = True
        if self.ledger is not None:
            self.ledger.close()


def _wake(subs: list[Submission]) -> None:
    for sub in subs:
        if sub._future is not None and not sub._future.done():
            sub._future.set_result(None)
