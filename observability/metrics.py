"""Prometheus metrics of the pipeline. Labels are never per customer or per
key, so cardinality stays bounded: source partitions (at most
`MAX_SOURCE_LABELS` per process, then `other`), sinks, rollups and reasons.

`PipelineMetrics.on_batch` feeds them once per counted batch (never per
event); `SinkFanOut` calls it and times every sink. Other capabilities define
their metrics in their own modules on the same default registry; `/metrics`
serves them all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from typing import Any, Callable

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("rivulet_events_in_total", "Records read from sources (blank lines included)", ["source"])
EVENTS_VALID = Counter("rivulet_events_valid_total", "Events counted into windows", ["source"])
DEAD_LETTERS = Counter("rivulet_dead_letters_total", "Records dead-lettered", ["reason"])
DUPLICATES = Counter("rivulet_duplicates_total", "Duplicate events dropped", ["source"])
BLANK = Counter("rivulet_blank_records_total", "Blank lines skipped", ["source"])
WINDOW_FLUSHES = Counter("rivulet_window_flushes_total", "Window counts written", ["rollup", "final"])
SINK_WRITES = Counter("rivulet_sink_writes_total", "Batches written per sink", ["sink"])
SINK_FAILURES = Counter("rivulet_sink_failures_total", "Failed sink writes (retried or fatal)", ["sink"])
SINK_LATENCY = Histogram("rivulet_sink_latency_seconds", "Time to write one batch to a sink", ["sink"])
SINK_FLUSH_LATENCY = Histogram(
    "rivulet_sink_flush_seconds", "Time to make a sink durable at a checkpoint", ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "rivulet_batch_records", "Records per micro-batch", buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000)
)
QUEUE_DEPTH = Gauge("rivulet_queue_depth", "Batches waiting between a source and the pipeline", ["source"])
WATERMARK = Gauge("rivulet_watermark_seconds", "Event-time watermark per source partition", ["source"])
EVENT_LAG = Gauge(
    "rivulet_event_lag_seconds",
    "End-to-end lag: wall clock minus the newest event time counted, per source partition "
    "(grows on a quiet stream: nothing newer arrived)",
    ["source"],
)
CHECKPOINTS = Counter("rivulet_checkpoints_total", "Checkpoints: every sink flushed, then the source committed")
LAST_CHECKPOINT = Gauge("rivulet_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint")
MILLIS_BEHIND = Gauge("rivulet_kinesis_millis_behind_latest", "MillisBehindLatest per shard", ["shard"])

MAX_SOURCE_LABELS = 64
OTHER = "other"

# Sinks that feed SINK_WRITES / SINK_FAILURES / SINK_LATENCY themselves, per
# request they send (the Optimizely sink): SinkFanOut does not count them again.
SELF_REPORTING_SINKS = frozenset({"optimizely"})


class BoundedLabels:
    """Label values as given, up to `limit` distinct ones; later ones are
    folded into `other`, so a worker that sees many shards over its life (or a
    bug) cannot grow the registry without bound."""

    def __init__(self, limit: int = MAX_SOURCE_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
        return value


SOURCE_LABELS = BoundedLabels()


def _newest_event_us(events: Any) -> int | None:
    """The newest event time of a batch's accepted events: a column max on an
    `EventColumns`, a loop only for plain sequences (tests)."""
    if not len(events):
        return None
    times = getattr(events, "times_us", None)  # EventColumns: a property, the time column
    if callable(times):
        times = times()
    if times is not None and hasattr(times, "max"):
        value = times.max()
        return int(value) if value is not None else None
    return max(event.event_time_us for event in events)


class PipelineMetrics:
    """Feeds the pipeline metrics from counted batches (duck-typed, so this
    leaf module imports nothing of `streams/`)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time, labels: BoundedLabels = SOURCE_LABELS) -> None:
        self.wall_clock = wall_clock
        self.labels = labels
        self.newest_us: dict[str, int] = {}  # partition -> newest event time counted

    def on_batch(self, batch: Any) -> None:
        source = self.labels(batch.partition)
        if batch.read:
            EVENTS_IN.labels(source).inc(batch.read)
            BATCH_SIZE.observe(batch.read)
        valid = len(batch.events)
        if valid:
            EVENTS_VALID.labels(source).inc(valid)
        if batch.duplicates:
            DUPLICATES.labels(source).inc(batch.duplicates)
        if batch.blank:
            BLANK.labels(source).inc(batch.blank)
        if batch.dead_letters:
            for reason, n in Tally(letter.reason.value for letter in batch.dead_letters).items():
                DEAD_LETTERS.labels(reason).inc(n)
        for counts in batch.windows:
            rows = len(counts)
            if rows:
                final = counts.final_count
                if final:
                    WINDOW_FLUSHES.labels(counts.rollup, "true").inc(final)
                if rows - final:
                    WINDOW_FLUSHES.labels(counts.rollup, "false").inc(rows - final)
        if batch.watermark_us > 0:  # WATERMARK_MIN until the first event
            WATERMARK.labels(source).set(batch.watermark_us / 1e6)
        newest = _newest_event_us(batch.events) if valid else None
        if newest is not None and newest > self.newest_us.get(batch.partition, newest - 1):
            self.newest_us[batch.partition] = newest
        known = self.newest_us.get(batch.partition)
        if known is not None:
            EVENT_LAG.labels(source).set(max(0.0, self.wall_clock() - known / 1e6))

    def lag_seconds(self) -> float | None:
        """The largest lag over the partitions seen (for the progress log)."""
        if not self.newest_us:
            return None
        return max(0.0, self.wall_clock() - min(self.newest_us.values()) / 1e6)

    @staticmethod
    def checkpoint(wall_clock: Callable[[], float] = time.time) -> None:
        CHECKPOINTS.inc()
        LAST_CHECKPOINT.set(wall_clock())


class timed_sink:
    """`with timed_sink(sink.name, SINK_LATENCY):` counts one write (or
    failure) of a sink and observes its duration; `observe=False` counts
    only a failure (the first half of a two-step flush)."""

    __slots__ = ("name", "histogram", "count", "observe", "started")

    def __init__(self, name: str, histogram: Histogram = SINK_LATENCY, count: bool = True, observe: bool = True) -> None:
        self.name = name
        self.histogram = histogram
        self.count = count and name not in SELF_REPORTING_SINKS
        self.observe = observe
        self.started = 0.0

    def __enter__(self) -> "timed_sink":
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if not self.count:
            return
        if kind is not None:
            SINK_FAILURES.labels(self.name).inc()
            return
        if not self.observe:
            return
        self.histogram.labels(self.name).observe(time.perf_counter() - self.started)
        if self.histogram is SINK_LATENCY:
            SINK_WRITES.labels(self.name).inc()
