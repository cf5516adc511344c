"""The end of the pipeline: hand each counted batch to every sink, and
checkpoint the source only past what every sink holds durably."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from consumers.ports import Sink
from consumers.run_summary import RunSummary
from observability.metrics import SINK_FLUSH_LATENCY, PipelineMetrics, timed_sink
from streams.batches import CountedBatch

log = logging.getLogger(__name__)

Commit = Callable[[str, int, "int | None"], None]


class SinkFanOut:
    """Writes batches to the sinks in order, then, at most every
    `checkpoint_interval` seconds, flushes them and commits to the source, per
    partition, the lowest position that is not yet durable everywhere: the
    counter's safe position (first event of the oldest open window) or a sink's
    oldest buffered record, whichever is lower."""

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
        self._safe: dict[str, tuple[int, int]] = {}  # partition -> (position, watermark before it)
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
        if batch.read or batch.windows:
            point = (batch.safe_position, batch.safe_watermark_us)
            # Not max(): a partition restarted from its checkpoint (a Kinesis
            # lease taken back) starts over with a lower safe point.
            self._safe[batch.partition] = point
        if self.commit is not None and self.clock() - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()
        if self.after_batch is not None:
            self.after_batch(batch)

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
        for partition, (safe, watermark) in self._safe.items():
            floors = [f for s in self.sinks if (f := s.pending_floor(partition)) is not None]
            if floors and min(floors) < safe:
                # A sink still holds records before the safe point: the
                # watermark to replay them with is not known, so none is given.
                position, watermark = min(floors), None
            else:
                position = safe
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
