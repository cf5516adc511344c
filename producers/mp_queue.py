"""The `multiprocessing` queue transport behind `run --processes 2`.

The producer process writes micro-batches (lists of encoded records) on a
bounded queue; a full queue blocks `put`, which is the backpressure. `None` on
the queue is the end marker. Nothing is durable: a crash loses what is queued,
so `commit` is a no-op.

Usage::

    queue = make_queue()
    # producer process
    writer = MpQueueWriter(queue)
    writer.send([b"line 1", b"line 2"])
    writer.close()                       # remainder, then the end marker
    # consumer process
    reader = MpQueueReader(queue, "mpqueue")
    reader.batches().subscribe(on_batch)  # DATA..., EOF, then completes
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
from multiprocessing.context import BaseContext
from typing import Any, Callable, Sequence

import reactivex
from reactivex import abc

from producers.transport import TransportFull, blocking_observable, wall_clock_us
from streams.batches import RecordBatch

END_MARKER = None
DEFAULT_PARTITION = "mpqueue"


def make_queue(maxsize: int = 64, context: BaseContext | None = None) -> Any:
    """A bounded queue of micro-batches that can be passed to a child process.

    `maxsize` counts micro-batches, not records. By default the queue comes
    from the 'spawn' context: Python refuses to pickle a fork-context lock for
    a spawned child, while a spawn-context queue also works in a forked child,
    so this default works with either start method. Pass `context` to match a
    specific one.

    >>> queue = make_queue(maxsize=8)                                  # doctest: +SKIP
    >>> multiprocessing.get_context("spawn").Process(target=f, args=(queue,)).start()  # doctest: +SKIP
    """
    ctx = context or multiprocessing.get_context("spawn")
    return ctx.Queue(maxsize=maxsize)


class MpQueueWriter:
    """Buffers records and puts them on the queue `batch_size` at a time.

    `put_timeout=None` blocks while the queue is full (the consumer process
    sets the pace). With a timeout, a put that expires raises `TransportFull`;
    the records not yet put stay buffered and go out with the next send/flush,
    so do not send them again.
    """

    def __init__(self, queue: Any, batch_size: int = 2000, put_timeout: float | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._queue = queue
        self.batch_size = batch_size
        self.put_timeout = put_timeout
        self._buffer: list[bytes] = []
        self._closed = False

    def send(self, records: Sequence[bytes]) -> int:
        if self._closed:
            raise ValueError("MpQueueWriter is closed")
        self._buffer.extend(bytes(r) for r in records)
        while len(self._buffer) >= self.batch_size:
            self._put(self._buffer[: self.batch_size])
            del self._buffer[: self.batch_size]
        return len(records)

    def flush(self) -> None:
        """Put the buffered remainder, if any."""
        if self._buffer:
            self._put(self._buffer)
            self._buffer = []

    def close(self) -> None:
        """Flush, then put the end marker (once)."""
        if self._closed:
            return
        self.flush()
        self._put(END_MARKER)
        self._closed = True

    def _put(self, item: list[bytes] | None) -> None:
        try:
            self._queue.put(item, timeout=self.put_timeout)
        except queue_module.Full as exc:
            raise TransportFull(f"multiprocessing queue full for {self.put_timeout}s") from exc


class MpQueueReader:
    """Emits the queue's micro-batches as DATA batches, then EOF at the end marker.

    Positions count from 1 in arrival order. While the queue stays empty for
    `poll_interval` seconds an IDLE batch (seconds since the previous poll, by
    `clock`) is emitted, as for every unbounded source, so that
    processing-time windows keep closing.
    """

    def __init__(
        self,
        queue: Any,
        partition: str = DEFAULT_PARTITION,
        poll_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        self._queue = queue
        self.partition = partition
        self.poll_interval = poll_interval
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        # A plain flag so stop() is safe in a signal handler (no lock taken).
        self._stopped = False
        self._caught_up = 0.0
        self._position = 0

    def batches(self) -> reactivex.Observable:
        return blocking_observable(self._loop)

    def _loop(self, observer: abc.ObserverBase) -> None:
        last_poll = last_data = self._clock()
        while not self._stopped:
            try:
                item = self._queue.get(timeout=self.poll_interval)
            except queue_module.Empty:
                now = self._clock()
                self._caught_up = now - last_data
                observer.on_next(RecordBatch.idle(self.partition, now - last_poll))
                last_poll = now
                continue
            now = last_poll = self._clock()
            if item is END_MARKER:
                self._caught_up = now - last_data
                observer.on_next(RecordBatch.eof(self.partition))
                break
            last_data = now
            self._caught_up = 0.0
            first = self._position + 1
            self._position += len(item)
            observer.on_next(
                RecordBatch.data(self.partition, item, range(first, first + len(item)), self._wall_clock_us())
            )
        observer.on_completed()

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Nothing to do: the queue keeps nothing once it is read."""

    def stop(self) -> None:
        """End `batches()` within `poll_interval`; safe from any thread or a signal handler."""
        self._stopped = True

    def caught_up_seconds(self) -> float:
        return self._caught_up

    def close(self) -> None:
        """Nothing is held: the same as `stop()`."""
        self.stop()
