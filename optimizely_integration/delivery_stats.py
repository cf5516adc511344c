"""What became of the visitors given to the Optimizely sink, counted twice:
in `DeliveryStats`' fields for callers (the CLI's summary, tests) and in the
Prometheus metrics of `optimizely_integration.metrics` and
`observability.metrics` for the daemon's `/metrics`.

Usage::

    stats = DeliveryStats()
    stats.sent(visitors=3, events=5, size=2048)   # a body the Event API took (2xx)
    stats.failed("5xx")                           # an attempt to be retried
    stats.visitors_sent                           # 3
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from observability import metrics as pipeline_metrics
from optimizely_integration import metrics

SINK_NAME = "optimizely"


@dataclass
class DeliveryStats:
    """Thread-safe counters; read the fields, change them through the methods."""

    visitors_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    bytes_sent: int = 0
    failures: int = 0  # failed attempts (retried or rejected)
    batches_rejected: int = 0  # 4xx: dead-lettered
    visitors_dead_lettered: int = 0
    visitors_dropped: int = 0  # null_variation="drop"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def sent(self, visitors: int, events: int, size: int) -> None:
        """A body acknowledged by the Event API."""
        with self._lock:
            self.batches_sent += 1
            self.visitors_sent += visitors
            self.events_sent += events
            self.bytes_sent += size
        metrics.SINK_BATCHES.labels("sent").inc()
        metrics.SINK_VISITORS.inc(visitors)
        metrics.SINK_EVENTS.inc(events)
        metrics.SINK_BYTES.inc(size)
        pipeline_metrics.SINK_WRITES.labels(SINK_NAME).inc()

    def failed(self, kind: str) -> None:
        """One failed POST attempt; `kind` is 5xx, 4xx, 4xx-retryable, timeout or connection."""
        with self._lock:
            self.failures += 1
        metrics.SINK_FAILURES.labels(kind).inc()
        pipeline_metrics.SINK_FAILURES.labels(SINK_NAME).inc()

    def body_rejected(self, visitors: int) -> None:
        """A body the Event API refused for good: its visitors were dead-lettered."""
        with self._lock:
            self.batches_rejected += 1
            self.visitors_dead_lettered += visitors
        metrics.SINK_BATCHES.labels("dead_lettered").inc()

    def visitors_rejected(self, dead_lettered: int, dropped: int) -> None:
        """Visitors never sent: dead-lettered, or dropped as configured."""
        with self._lock:
            self.visitors_dead_lettered += dead_lettered
            self.visitors_dropped += dropped
