"""Prometheus metrics of the Optimizely integration (default registry, so the
daemon's `/metrics` serves them). Labels are bounded: outcomes and kinds only.

The generic per-sink metrics of `observability.metrics` (writes, failures, latency)
are also fed, with `sink="optimizely"`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DISPATCHED = Counter(
    "rivulet_optimizely_dispatch_total",
    "SDK LogEvents seen by the bulk dispatcher: buffered, sent to the transport, or dropped",
    ["outcome"],
)
DISPATCH_BUFFER = Gauge("rivulet_optimizely_dispatch_buffer", "LogEvents waiting in the dispatcher buffer")

SINK_EVENTS = Counter("rivulet_optimizely_sink_events_total", "Events acknowledged by the Event API (2xx)")
SINK_VISITORS = Counter("rivulet_optimizely_sink_visitors_total", "Visitor entries acknowledged (2xx)")
SINK_BATCHES = Counter("rivulet_optimizely_sink_batches_total", "Request bodies by outcome", ["outcome"])
SINK_BYTES = Counter("rivulet_optimizely_sink_bytes_total", "Bytes of request bodies acknowledged (2xx)")
SINK_FAILURES = Counter(
    "rivulet_optimizely_sink_failures_total", "Failed POST attempts", ["kind"]  # 5xx, 4xx, timeout, connection
)
SINK_LATENCY = Histogram(
    "rivulet_optimizely_sink_latency_seconds",
    "Time of one POST to the Event API",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_REJECTED = Counter(
    "rivulet_optimizely_sink_rejected_visitors_total",
    "Visitor entries (or parts) not sent, by why: dead-lettered or dropped by config",
    ["reason"],
)
SINK_QUEUE = Gauge("rivulet_optimizely_sink_queue_depth", "Sealed request bodies waiting for a sender")

DATAFILE_REVISION = Gauge("rivulet_optimizely_datafile_revision", "Revision of the datafile in use")
DATAFILE_UPDATES = Counter("rivulet_optimizely_datafile_updates_total", "Datafile revision changes applied")
DATAFILE_ERRORS = Counter(
    "rivulet_optimizely_datafile_errors_total", "Datafile fetches that failed or were rejected", ["kind"]
)
WEBHOOKS = Counter("rivulet_optimizely_webhooks_total", "Webhook deliveries by outcome", ["outcome"])
