"""Is the pipeline healthy, not merely alive? For the systemd watchdog and
`/readyz`.

The job marks progress on every batch it finishes (IDLE batches included, so a
quiet stream stays healthy). Sinks and sources report failures and recoveries.
Healthy means: progress within `stall_seconds`, and no component failing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class PipelineHealth:
    stall_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    last_progress: float = field(default=0.0)
    events: int = 0
    started: float = field(default=0.0)
    _failing: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.last_progress = self.started = self.clock()

    def progress(self, events: int = 0) -> None:
        self.last_progress = self.clock()
        self.events += events

    def failing(self, component: str, reason: str) -> None:
        from observability.redaction import redact  # /readyz and sd_notify's STATUS show it

        with self._lock:
            self._failing[component] = redact(reason)

    def recovered(self, component: str) -> None:
        with self._lock:
            self._failing.pop(component, None)

    def problems(self) -> dict[str, str]:
        with self._lock:
            problems = dict(self._failing)
        stalled = self.clock() - self.last_progress
        if stalled > self.stall_seconds:
            problems["pipeline"] = f"no progress for {stalled:.0f}s"
        return problems

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


HEALTH = PipelineHealth()
"""The process's health; components report to it, probes read it."""
