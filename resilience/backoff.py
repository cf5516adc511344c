"""Capped exponential backoff with jitter: the one retry delay of the project.

Every adapter that retries (AWS writers and readers, the retrying ports, the
Optimizely senders) asks a `Backoff` for its delays, so a retry storm looks
the same everywhere and is tuned in one place.

Usage::

    backoff = Backoff(base=0.2, cap=30.0)            # full jitter (AWS's advice)
    delay = backoff.delay(attempt)                   # 0 <= delay <= min(cap, base * 2**attempt)
    Backoff(0.5, 60.0, jitter=0.5).delay(3, retry_after=10.0)   # never sooner than the server asked
    sleep_unless(lambda: stopped, delay)             # wakes early when asked to stop
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

# 2**30 already exceeds every sensible cap; bounding the exponent keeps a
# long outage's attempt counter from overflowing the float.
_MAX_EXPONENT = 30


@dataclass(frozen=True)
class Backoff:
    """`delay(attempt)` is drawn from `[ceiling·(1 − jitter), ceiling]`, where
    `ceiling = min(cap, base·2^attempt)`. `jitter=1` is "full jitter" (many
    senders spread out the most), `0.5` keeps half the ceiling, `0` is no
    jitter (deterministic, for a single sender)."""

    base: float = 0.2
    cap: float = 30.0
    jitter: float = 1.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, not {self.base} and {self.cap}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within [0, 1], not {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based). A server's
        `retry_after` is honoured up to `cap`."""
        ceiling = self.ceiling(attempt)
        delay = ceiling * (1.0 - self.jitter * self.rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay


def sleep_unless(stopped: Callable[[], bool], seconds: float, slice_seconds: float = 0.05) -> None:
    """Sleep up to `seconds` in short slices, returning as soon as `stopped()`:
    a retry loop must not hold up a shutdown for a whole backoff."""
    deadline = time.monotonic() + seconds
    while not stopped():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, slice_seconds))
