"""An SDK event dispatcher that puts payloads on a Rivulet transport.

The SDK calls `dispatch_event(log_event)` on its event thread (or, with a
`ForwardingEventProcessor`, on the thread that called `activate`/`track`/
`decide`). It must return at once: this dispatcher serializes the whole
payload into a payload record (see `payload_record`) and puts it in a bounded
in-memory buffer; a background thread sends buffered records to the transport
(`TransportWriter.send`, one call per batch of records), retrying with capped
backoff while the transport is full or failing. When the buffer is full the
event is counted as dropped (metric `rivulet_optimizely_dispatch_total
{outcome="dropped"}`, `stats.dropped`) and an error is logged: never silently.

Usage::

    dispatcher = BulkEventDispatcher(root.writer("spool:data/optimizely-spool"))   # config/root.py
    client = optimizely.Optimizely(datafile, event_dispatcher=dispatcher)
    ...
    client.close(); dispatcher.close()   # sends what is buffered, then closes the writer
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from optimizely_integration import metrics
from optimizely_integration.payload_record import encode_payload_record
from producers.transport import TransportWriter
from resilience.backoff import Backoff

log = logging.getLogger(__name__)

_STOP = object()
LINGER_NAP_SECONDS = 0.005


@dataclass
class DispatcherStats:
    buffered: int = 0  # accepted into the buffer
    sent: int = 0  # handed to the transport (send returned)
    dropped: int = 0  # buffer full, closed, unserializable, or transport down at close
    send_failures: int = 0  # failed transport.send attempts (retried)


class BulkEventDispatcher:
    """See the module docstring. Thread-safe; `dispatch_event` never blocks on I/O."""

    def __init__(
        self,
        transport_writer: TransportWriter,
        max_buffer: int = 10_000,
        flush_interval: float = 0.1,
        max_records_per_send: int = 500,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
        close_writer: bool = True,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        """`flush_interval`: how long the sender lingers to fill a batch of up
        to `max_records_per_send` records (transports commit per send)."""
        if max_buffer < 1 or max_records_per_send < 1:
            raise ValueError("max_buffer and max_records_per_send must be >= 1")
        self.writer = transport_writer
        self.max_buffer = max_buffer
        self.flush_interval = flush_interval
        self.max_records_per_send = max_records_per_send
        # No jitter: one sender per process, nothing to spread out.
        self.backoff = Backoff(backoff_base, backoff_cap, jitter=0.0)
        self.close_writer = close_writer
        self.stats = DispatcherStats()
        self._buffer: queue.Queue[Any] = queue.Queue(maxsize=max_buffer)
        self._lock = threading.Lock()  # stats
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._give_up_at: float | None = None  # set by close(): stop retrying after this
        self._wake = threading.Event()
        self._sleep = sleep
        self._thread = threading.Thread(target=self._run, name="optimizely-dispatch", daemon=True)
        self._thread.start()

    # -- the SDK side ----------------------------------------------------------

    def dispatch_event(self, log_event: Any) -> None:
        """Buffer one `LogEvent` (its `url` and whole `params`); never raises."""
        if self._closed:
            self._drop(1, "dispatcher is closed")
            return
        try:
            record = encode_payload_record(log_event.url, log_event.params)
        except (ValueError, TypeError, AttributeError) as exc:
            self._drop(1, f"payload is not serializable: {exc}")
            return
        try:
            self._buffer.put_nowait(record)
        except queue.Full:
            self._drop(1, f"buffer full ({self.max_buffer} payloads): the transport is not keeping up")
            return
        with self._lock:
            self.stats.buffered += 1
        metrics.DISPATCHED.labels("buffered").inc()
        metrics.DISPATCH_BUFFER.set(self._buffer.qsize())

    def _drop(self, count: int, why: str) -> None:
        with self._lock:
            self.stats.dropped += count
            total = self.stats.dropped
        metrics.DISPATCHED.labels("dropped").inc(count)
        # Every drop is logged at error level, rate-limited by powers of two so a
        # long outage does not flood the log; the counter has the exact number.
        if total & (total - 1) == 0 or count > 1:
            log.error("optimizely dispatcher dropped %d payload(s) (%d in total): %s", count, total, why)

    # -- the sender thread -----------------------------------------------------

    def _collect(self) -> list[bytes] | None:
        """The next batch of records; None once stopped and empty."""
        try:
            first = self._buffer.get(timeout=0.5)
        except queue.Empty:
            return []
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.max_records_per_send:
            try:
                item = self._buffer.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                # Linger in short naps rather than in `get`: a blocked `get` is
                # woken by every `put`, a thread switch per payload on the hot
                # path of the bucketer; a nap takes whatever arrived meanwhile.
                time.sleep(min(left, LINGER_NAP_SECONDS))
                continue
            if item is _STOP:
                self._buffer.put(_STOP)  # seen after this batch is sent
                break
            batch.append(item)
        with self._idle:
            self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                break
            if batch:
                self._send(batch)
            with self._idle:
                self._in_flight = 0
                self._idle.notify_all()
            metrics.DISPATCH_BUFFER.set(self._buffer.qsize())

    def _send(self, batch: list[bytes]) -> None:
        attempt = 0
        while True:
            try:
                self.writer.send(batch)
            except Exception as exc:  # noqa: BLE001 - any transport error is retried
                with self._lock:
                    self.stats.send_failures += 1
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    self._drop(len(batch), f"transport still failing at close: {exc}")
                    return
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("optimizely dispatcher: transport send failed (%s); retrying in %.2fs", exc, delay)
                if self._sleep is not None:
                    self._sleep(delay)
                elif self._give_up_at is None:
                    self._wake.wait(delay)  # close() interrupts a long backoff
                else:
                    time.sleep(min(delay, max(0.0, self._give_up_at - time.monotonic())))
                continue
            with self._lock:
                self.stats.sent += len(batch)
            metrics.DISPATCHED.labels("sent").inc(len(batch))
            return

    # -- lifecycle -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered payload has been handed to the transport."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._buffer.qsize() > 0 or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.05 if left is None else min(left, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, send what is buffered (retrying up to `timeout`
        seconds), then close the writer. What the transport still refuses
        after that is counted as dropped and logged."""
        if self._closed:
            return
        self._closed = True
        self._give_up_at = time.monotonic() + timeout
        self._buffer.put(_STOP)  # unbounded wait is fine: the sender is draining
        self._wake.set()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():
            log.error("optimizely dispatcher: sender did not finish within %.1fs", timeout)
        if self.close_writer:
            self.writer.close()

    @property
    def pending(self) -> int:
        """Payloads buffered or being sent."""
        return self._buffer.qsize() + self._in_flight
