"""Prometheus metrics of the Kinesis lease coordinator and shard readers.

Each worker process serves its own (`/metrics` when [http] is on), so every
series is per worker by construction; labels are the stream or the shard,
never a customer or key. MillisBehindLatest is `observability.metrics.MILLIS_BEHIND`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEASES_HELD = Gauge("rivulet_kinesis_leases_held", "Shard leases this worker holds", ["stream"])
LEASES_TAKEN = Counter(
    "rivulet_kinesis_leases_taken_total", "Leases taken (unowned, expired, stolen, own)", ["stream", "how"]
)
LEASES_LOST = Counter("rivulet_kinesis_leases_lost_total", "Leases lost to another worker or not renewed", ["stream"])
LEASES_RELEASED = Counter("rivulet_kinesis_leases_released_total", "Leases handed back on stop", ["stream"])
LEASES_FINISHED = Counter("rivulet_kinesis_leases_finished_total", "Closed shards read to SHARD_END and retired", ["stream"])
CHECKPOINTS = Counter("rivulet_kinesis_checkpoints_total", "Checkpoints written to the lease table", ["stream"])
CHECKPOINT_LAG = Gauge(
    "rivulet_kinesis_checkpoint_lag_seconds",
    "Age of the oldest batch handed to the pipeline but not yet covered by a checkpoint",
    ["shard"],
)
WORKERS = Gauge("rivulet_kinesis_workers_seen", "Live workers seen in the lease table (this one included)", ["stream"])
