"""Prometheus metrics of the pipeline. Labels are never per customer or per
key, so cardinality stays bounded: source partitions, sinks and reasons only.

Other capabilities define their metrics in their own modules on the same
default registry; `/metrics` serves them all.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("rivulet_events_in_total", "Records read from sources", ["source"])
EVENTS_VALID = Counter("rivulet_events_valid_total", "Events counted into windows", ["source"])
DEAD_LETTERS = Counter("rivulet_dead_letters_total", "Records dead-lettered", ["reason"])
DUPLICATES = Counter("rivulet_duplicates_total", "Duplicate events dropped", ["source"])
WINDOW_FLUSHES = Counter("rivulet_window_flushes_total", "Window counts written", ["rollup", "final"])
SINK_WRITES = Counter("rivulet_sink_writes_total", "Batches written per sink", ["sink"])
SINK_FAILURES = Counter("rivulet_sink_failures_total", "Failed sink writes (retried or fatal)", ["sink"])
SINK_LATENCY = Histogram("rivulet_sink_latency_seconds", "Time to write one batch to a sink", ["sink"])
BATCH_SIZE = Histogram(
    "rivulet_batch_records", "Records per micro-batch", buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000)
)
QUEUE_DEPTH = Gauge("rivulet_queue_depth", "Batches waiting between a source and the pipeline", ["source"])
WATERMARK = Gauge("rivulet_watermark_seconds", "Event-time watermark per source partition", ["source"])
MILLIS_BEHIND = Gauge("rivulet_kinesis_millis_behind_latest", "MillisBehindLatest per shard", ["shard"])
