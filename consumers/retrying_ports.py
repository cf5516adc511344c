"""Ride out outages: retry idempotent port calls with capped exponential
backoff and full jitter (`resilience.backoff.Backoff`), report the outage to
the health model, and recover by themselves when the service returns.

Only idempotent calls are retried here (an object put under a fixed key, a
max-upsert of counts), so a retry can never duplicate data. While a call is
being retried the pipeline waits: the source is not read further and not
checkpointed past it. A stop request (SIGTERM) ends the wait with the error,
and the source replays from its last checkpoint after a restart.

Usage::

    store = RetryingObjectStore(S3ObjectStore(...), StoppableBackoff(base=0.2, cap=30.0))
    store.put("counts/part-0.parquet", body)   # waits out an outage
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Iterator, Sequence, TypeVar

from consumers.ports import CountStore, ObjectStore
from observability.health import HEALTH, PipelineHealth
from resilience.backoff import Backoff
from streams.window_counts import WindowCounts

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP_REQUESTED = threading.Event()
"""Set when the process is asked to stop; retries then give up."""


class StoppableBackoff:
    """The project's backoff (full jitter), slept on `STOP_REQUESTED` so a stop
    request ends the wait at once instead of after a whole delay."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.policy = Backoff(base, cap, jitter=1.0, rng=rng or random.Random())
        self.sleep = sleep or (lambda seconds: STOP_REQUESTED.wait(seconds))

    def delay(self, attempt: int) -> float:
        return self.policy.delay(attempt)


def is_outage(exc: BaseException) -> bool:
    """Errors worth waiting out. A bad argument (an unsafe key, a wrong type)
    will fail the same way forever, so it is raised at once."""
    return not isinstance(exc, (ValueError, TypeError, KeyError))


def retry_until_done(call: Callable[[], T], what: str, backoff: StoppableBackoff, health: PipelineHealth = HEALTH,
                     retryable: Callable[[BaseException], bool] = is_outage) -> T:
    attempt = 0
    while True:
        try:
            result = call()
        except Exception as exc:
            if not retryable(exc) or STOP_REQUESTED.is_set():
                raise
            delay = backoff.delay(attempt)
            if attempt == 0 or attempt % 10 == 0:
                log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt + 1, delay, exc)
            health.failing(what, str(exc)[:200])
            attempt += 1
            backoff.sleep(delay)
            continue
        if attempt:
            log.warning("%s recovered after %d attempts", what, attempt + 1)
            health.recovered(what)
        return result


class RetryingCountStore:
    """A `CountStore` whose writes survive outages (upserts are max-upserts,
    so repeating one is harmless)."""

    def __init__(self, inner: CountStore, backoff: StoppableBackoff | None = None) -> None:
        self.inner = inner
        self.backoff = backoff or StoppableBackoff()

    def upsert(self, windows: Sequence[WindowCounts]) -> None:
        retry_until_done(lambda: self.inner.upsert(windows), "count store", self.backoff)

    def commit(self) -> None:
        retry_until_done(self.inner.commit, "count store", self.backoff)

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        return self.inner.buckets(rollup, key, start_us, end_us)

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        return self.inner.export(rollup)

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        return self.inner.total(rollup, key)

    def close(self) -> None:
        self.inner.close()


class RetryingObjectStore:
    """An `ObjectStore` whose puts survive outages (a key is written whole or
    not at all, so repeating a put is harmless)."""

    def __init__(self, inner: ObjectStore, backoff: StoppableBackoff | None = None) -> None:
        self.inner = inner
        self.backoff = backoff or StoppableBackoff()

    def put(self, key: str, body: bytes) -> None:
        retry_until_done(lambda: self.inner.put(key, body), "object store", self.backoff)

    def sync(self) -> None:
        retry_until_done(self.inner.sync, "object store", self.backoff)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)
