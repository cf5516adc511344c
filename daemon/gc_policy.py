"""Garbage-collector thresholds for a batch-at-a-time stream processor.

Every micro-batch creates tens of thousands of container objects at once
(dedup-key tuples, (window, key) pairs, column lists), and the dedup state
keeps hundreds of thousands alive. With CPython's default thresholds (700, 10,
10) that means a young collection every 700 allocations and, as the state
grows, full collections that walk all of it: measured on the bench, 25–35% of
a run. The daemon's own data is acyclic, so reference counting frees it.
Only the young generation's threshold is raised; the older generations keep
CPython's ratios (a full collection every 100 young ones), so a long-running
daemon still collects the cycles that libraries make, just less often.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 10, 10)


def relax_garbage_collection() -> None:
    gc.set_threshold(*THRESHOLDS)
