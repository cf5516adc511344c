"""The end of the pipeline: hand each counted batch to every sink, and
checkpoint the source only past what every sink holds durably."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Sequence

from consumers.ports import Sink
from consumers.run_summary import RunSummary
from observability.metrics import SINK_FLUSH_LATENCY, PipelineMetrics, timed_sink
from streams.batches import CountedBatch

log = logging.getLogger(__name__)

Commit = Callable[[str, int, "int | None"], None]

# Safe points kept per partition while a sink holds a buffer across
# checkpoints (one a batch): a sink stuck for long (the Optimizely API down)
# must not grow them without bound.
SAFE_POINTS_MAX = 1024


class SinkFanOut:
    """Writes batches to the sinks in order, then, at most every
    `checkpoint_interval` seconds, flushes them and commits to the source, per
    partition, the newest safe point (a position and the watermark to replay
    from it, `CountedBatch.safe_position`) that no sink still holds a record
    at or after: the counter's latest, or an earlier one when a sink keeps a
    buffer across checkpoints (the raw events' objects, rolled by age)."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        summary: RunSummary,
        commit: Commit | None = None,
        checkpoint_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: PipelineMetrics | None = None,
        on_checkpoint: Callable[[dict[str, tuple[int, int | None]]], None] | None = None,
        after_batch: Callable[[CountedBatch], None] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.metrics = metrics or PipelineMetrics()
        self._named = [(getattr(sink, "name", type(sink).__name__), sink) for sink in self.sinks]
        # A sink on a lane of its own (consumers/sink_lane.py) times its writes where they run.
        self._timed_here = [not getattr(sink, "times_own_writes", False) for sink in self.sinks]
        self.summary = summary
        self.commit = commit
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock
        # partition -> its safe points (position, watermark before it) since
        # the last commit, oldest first; positions only grow
        self._safe: dict[str, deque[tuple[int, int]]] = {}
        self._committed: dict[str, int] = {}
        # partition -> (position, watermark) of its last commit, for `on_checkpoint` (the status file)
        self.checkpoints: dict[str, tuple[int, int | None]] = {}
        self.on_checkpoint = on_checkpoint
        # Progress and health reporting: told of each batch once every sink
        # has it, so the caller observes the stream without standing in it.
        self.after_batch = after_batch
        self._last_checkpoint = clock()
        self.batches = 0

    def on_next(self, batch: CountedBatch) -> None:
        for (name, sink), timed_here in zip(self._named, self._timed_here):
            with timed_sink(name, count=timed_here):
                sink.write(batch)
        self.summary.add(batch)
        self.metrics.on_batch(batch)
        self.batches += 1
        if self.commit is not None and batch.carries_safe_point:
            self._note_safe_point(batch)
        if self.commit is not None and self.clock() - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()
        if self.after_batch is not None:
            self.after_batch(batch)

    def _note_safe_point(self, batch: CountedBatch) -> None:
        point = (batch.safe_position, batch.safe_watermark_us)
        points = self._safe.get(batch.partition)
        if points is None or batch.restarted or point[0] < points[-1][0]:
            # A partition restarted from its checkpoint (a Kinesis lease
            # taken back) starts over with lower safe points.
            self._safe[batch.partition] = deque([point])
        elif point[0] > points[-1][0]:
            points.append(point)
            if len(points) > SAFE_POINTS_MAX:
                # Every other one goes (never the oldest nor the newest): any
                # safe point is a valid commit, the next one may just be older.
                thinned = list(points)[::2]
                if thinned[-1] != point:
                    thinned.append(point)
                self._safe[batch.partition] = deque(thinned)

    def checkpoint(self) -> None:
        # Every sink's writes go out before any is waited on: one sink's
        # uploads then overlap the others' encoding and uploads.
        for name, sink in self._named:
            with timed_sink(name, SINK_FLUSH_LATENCY, observe=False):
                sink.send()
        for name, sink in self._named:
            with timed_sink(name, SINK_FLUSH_LATENCY):
                sink.flush()
        self._commit()

    def _commit(self) -> None:
        self._last_checkpoint = self.clock()
        if self.commit is None:
            return
        for partition, points in self._safe.items():
            floor = min((f for s in self.sinks if (f := s.pending_floor(partition)) is not None), default=None)
            point = _newest_at_or_below(points, floor)
            if point is None:  # a sink still holds records from before every safe point since the last commit
                continue
            position, watermark = point
            if position > self._committed.get(partition, -1):
                self.commit(partition, position, watermark)
                self._committed[partition] = position
                self.checkpoints[partition] = (position, watermark)
                log.debug("checkpoint %s at position %d (watermark %s)", partition, position, watermark)
        self.metrics.checkpoint()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoints)

    def close(self) -> None:
        # Close (drain) the sinks first, so what they deliver while closing is
        # committed now rather than replayed by the next run. Every sink's
        # last writes start before any close is waited on, as at a
        # checkpoint: on lanes, the aggregates' last objects (0.2-0.3 s at
        # the end of 1M sparse rows) are then encoded beside the raw events'
        # instead of after them.
        for sink in self.sinks:
            sink.send()
        for sink in self.sinks:
            sink.close()
        self._commit()
        self.summary.finished = time.monotonic()


def _newest_at_or_below(points: deque[tuple[int, int]], floor: int | None) -> tuple[int, int] | None:
    """The newest of `points` at or below `floor` (any, when None), dropping
    the older ones: floors and safe points only grow, so no later commit
    goes back to them."""
    while len(points) > 1 and (floor is None or points[1][0] <= floor):
        points.popleft()
    return points[0] if floor is None or points[0][0] <= floor else None
