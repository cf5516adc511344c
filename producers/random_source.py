"""A seeded random event generator, finite (`count`) or endless (`rate`)."""

from __future__ import annotations

import json
import random
import time
from typing import Callable

import reactivex
from reactivex import abc

from producers.transport import wall_clock_us
from streams.batches import RecordBatch
from streams.utc import format_utc

EVENT_TYPES = ("INGEST", "click", "page_view", "purchase", "signup", "button_click")


class RandomEventSource:
    """NDJSON events from a seeded generator: the same seed gives the same
    events. Event times start at `start_us` (default: now) and move forward
    about `step_ms` per event with up to `jitter_ms` of disorder; about
    `duplicate_rate` of events are re-sent copies.

    `count=None` is endless; `rate` (events/s) paces it against the wall clock.
    """

    def __init__(
        self,
        seed: int = 1,
        count: int | None = 1000,
        rate: float | None = None,
        batch_size: int = 1000,
        customers: int = 50,
        start_us: int | None = None,
        step_ms: int = 50,
        jitter_ms: int = 30_000,
        duplicate_rate: float = 0.01,
        clock_us: Callable[[], int] = wall_clock_us,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.seed = seed
        self.count = count
        self.rate = rate
        self.batch_size = batch_size if rate is None else max(1, min(batch_size, int(rate // 10) or 1))
        self.customers = customers
        self.start_us = start_us
        self.step_ms = step_ms
        self.jitter_ms = jitter_ms
        self.duplicate_rate = duplicate_rate
        self.clock_us = clock_us
        self.sleep = sleep
        self.partition = f"random:{seed}"
        self.damage: str | None = None  # generated records are never damaged
        self._stopped = False

    @property
    def bounded(self) -> bool:
        """A counted run ends by itself; `count=None` runs until `stop()`."""
        return self.count is not None

    def stop(self) -> None:
        self._stopped = True

    def lines(self):
        """The generated records, one encoded NDJSON line each."""
        rng = random.Random(self.seed)
        base = self.start_us if self.start_us is not None else self.clock_us()
        customers = [f"customer-{i:04d}" for i in range(self.customers)]
        recent: list[bytes] = []
        produced = 0
        while self.count is None or produced < self.count:
            if recent and rng.random() < self.duplicate_rate:
                line = rng.choice(recent)
            else:
                t = base + produced * self.step_ms * 1000 + rng.randint(-self.jitter_ms, self.jitter_ms) * 1000
                record = {
                    "customer_id": rng.choice(customers),
                    "event_type": rng.choice(EVENT_TYPES),
                    "transaction_id": f"{rng.getrandbits(64):016x}",
                    "timestamp": format_utc(t),
                }
                line = json.dumps(record, separators=(",", ":")).encode()
                recent.append(line)
                if len(recent) > 1000:
                    recent = recent[-500:]
            produced += 1
            yield line

    def batches(self) -> reactivex.Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            started = time.monotonic()
            records: list[bytes] = []
            position = 0
            for line in self.lines():
                position += 1
                records.append(line)
                if len(records) >= self.batch_size:
                    first = position - len(records) + 1
                    observer.on_next(RecordBatch.data(self.partition, records, range(first, position + 1), self.clock_us()))
                    records = []
                    if self.rate:
                        ahead = position / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            self.sleep(ahead)
                if self._stopped:
                    break
            if records:
                first = position - len(records) + 1
                observer.on_next(RecordBatch.data(self.partition, records, range(first, position + 1), self.clock_us()))
            if not self._stopped:
                observer.on_next(RecordBatch.eof(self.partition))
            observer.on_completed()
            return reactivex.disposable.Disposable()

        return reactivex.create(subscribe)
