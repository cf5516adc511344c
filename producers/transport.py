"""The transport port: how records travel between a producer and a consumer.

A transport is named by a URI (`spool:DIR`, `mpqueue`, `console`, later
`kinesis:STREAM`, `sqs:QUEUE`). The writer side takes encoded records (one NDJSON
line each, without the newline). The reader side is an observable of
`RecordBatch`es. Positions are monotonic within a partition; `commit(partition,
position)` says every record before `position` is durable in every sink, and
only then may the transport forget it (or, after a restart, skip it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable


def wall_clock_us() -> int:
    """Wall time in UTC epoch microseconds: sources stamp batches' `arrival_us`
    with it (processing-time formats count on it), and tests inject their own."""
    return time.time_ns() // 1000


class BadTransportUri(ValueError):
    """A transport URI with an unknown scheme, a missing or unexpected
    target, or a write-only transport asked for reading."""


class TransportFull(RuntimeError):
    """The transport cannot take more right now; retry later (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record the transport can never take; `index` is its place in `send`'s list."""

    index: int
    record: bytes
    error: str
    reason: str = "oversize"  # a `streams.events.Reason` value: "oversize" or "sink rejected"


class TransportWriter(Protocol):
    """A writer whose `send` accepts all of its records or none of them says
    so with a class attribute `all_or_nothing = True` (optional: absent means
    a send may accept only part); see `sends_all_or_nothing`. A writer that
    can refuse a record outright (too large for the transport) does not count
    it and hands it back from `take_rejected() -> list[RejectedRecord]`
    (optional too; see `take_rejected`), for the caller to dead-letter."""

    def send(self, records: Sequence[bytes]) -> int:
        """Durably hand over `records`; returns how many were accepted.

        Blocks up to the transport's own timeout, then raises `TransportFull`.
        """

    def close(self) -> None: ...


def sends_all_or_nothing(writer: TransportWriter | None) -> bool:
    """True when `writer.send` is all-or-nothing, so the records of several
    callers may share one send: a failure then fails all of them alike, and a
    success is a success for each."""
    return bool(getattr(writer, "all_or_nothing", False))


def take_rejected(writer: TransportWriter) -> list[RejectedRecord]:
    """The records `writer` refused outright since the last call (Kinesis,
    SQS: too large for the transport), when it declares `take_rejected`;
    otherwise none: every other writer takes a record or raises."""
    take = getattr(writer, "take_rejected", None)
    return take() if callable(take) else []


class Source(Protocol):
    """Where a job's records come from: a file, a generator, a transport reader."""

    # True: the source ends by itself (a file, a counted random run); False:
    # it runs until `stop()` (an endless generator, a transport).
    bounded: bool
    # What ended a damaged input early (a truncated gzip member, say), for the
    # command to report after its summary; None for an intact input.
    damage: str | None

    def batches(self) -> reactivex.Observable:
        """RecordBatches, DATA while records arrive, IDLE on an empty caught-up
        poll, EOF only if the source is finite. Completes after `stop()`."""

    def stop(self) -> None: ...


class TransportReader(Protocol):
    """A source that commits. A reader that buffers fetched batches in memory
    (the Kinesis pollers) reports how many wait with an optional
    `queue_depth() -> int`; see `queue_depth_of`. A job reads a transport as
    an endless source."""

    def batches(self) -> reactivex.Observable:
        """RecordBatches, DATA while records arrive, IDLE on an empty caught-up
        poll, EOF only if the transport is finite. Completes after `stop()`."""

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Records of `partition` before `position` are durable downstream.

        `watermark_us` is the watermark a replay from `position` must start
        with, so that it decides exactly as the first run did (an event that
        was late stays late). A reader that stores it hands it back as
        `RecordBatch.resume_watermark_us` on its first batch of that partition.
        """

    def stop(self) -> None: ...

    def caught_up_seconds(self) -> float:
        """How long every partition has been caught up (for `--drain`)."""

    def close(self) -> None:
        """Stop, and release what the reader holds (a spool group's lock,
        Kinesis leases: a graceful handoff). Call it after the final commit."""


def queue_depth_of(reader: TransportReader) -> Callable[[], int] | None:
    """The reader's `queue_depth`, when it declares one."""
    depth = getattr(reader, "queue_depth", None)
    return depth if callable(depth) else None


def blocking_observable(loop: Callable[[abc.ObserverBase], None], cleanup: Callable[[], None] | None = None) -> reactivex.Observable:
    """An observable that runs a reader's blocking `loop(observer)` on the
    subscribing thread; an exception from the loop ends the stream with
    `on_error` instead of escaping into the caller."""

    def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> Disposable:
        try:
            loop(observer)
        except Exception as exc:  # noqa: BLE001 - surfaced through on_error
            observer.on_error(exc)
        finally:
            if cleanup is not None:
                cleanup()
        return Disposable()

    return reactivex.create(subscribe)


def start_drain_watch(reader: TransportReader, seconds: float, interval: float = 0.1) -> threading.Event:
    """`--drain SECONDS`: stop `reader` once it has been caught up that long.
    Set the returned event to end the watch early."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if reader.caught_up_seconds() >= seconds:
                reader.stop()
                return

    threading.Thread(target=watch, name="drain-watch", daemon=True).start()
    return done
