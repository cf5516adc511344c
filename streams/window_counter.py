"""Per-partition event-time counting: drop late, future and duplicate events,
count the rest into tumbling windows per rollup, and emit windows once final.

The semantics are those of processing one record at a time, in order:

1. a timestamp more than `future_tolerance` after the wall clock is `future`
   (dead-lettered; it does not move the watermark);
2. a timestamp older than the partition's watermark is `late` (dead-lettered);
3. an event whose dedup key was already counted is a duplicate (counted as such);
4. otherwise the event is counted in every rollup, and the watermark becomes
   max(watermark, event time − lateness); windows whose end is at or before the
   watermark are final: emitted, then forgotten with their duplicate keys.

Late is checked before duplicates so the result never depends on when the
dedup state of a closed window was forgotten. The implementation works on
micro-batches but applies exactly these rules per record, so batching never
changes a result.

A partition may continue others (a Kinesis shard's children after a split or
merge): its first batches are then INHERITED ones, its parents' records from
their last checkpoints on, decided by the same rules but never counted; they
leave the parents' dedup keys and watermark behind for the child's own
records, so a duplicate whose original a parent counted is a duplicate here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

import polars as pl

from streams.batches import BatchKind, CountedBatch, ParsedBatch
from streams.dedup_keys import DedupKeys
from streams.event_columns import KEY_COLUMNS, EventColumns
from streams.events import DeadLetter, Event, Reason
from streams.rollup_windows import RollupWindows
from streams.rollups import RollupSpec
from streams.timestamps import future_limit_us
from streams.utc import DAY_US
from streams.window_counts import WindowCounts
from streams.windowing import WATERMARK_MIN, EventClock


@dataclass(frozen=True)
class WindowCounter:
    """Configuration; `build(partition)` makes the per-partition logic."""

    rollups: Sequence[RollupSpec]
    clock: EventClock
    wall_clock_us: Callable[[], int]
    future_tolerance_us: int = DAY_US
    # Unbounded sources: every this often (wall time), the running counts of
    # open windows that changed are emitted as provisional counts, so a store
    # is fresh long before a window is final. 0 turns it off.
    provisional_interval_us: int = 0

    def build(self, partition: str, resume_watermark_us: int | None = None) -> "PartitionCounter":
        return PartitionCounter(self, partition, resume_watermark_us)


class PartitionCounter:
    """The windows, watermark and dedup state of one source partition.

    Lifecycle: `on_batch` for data, `on_idle` for an empty caught-up poll of an
    unbounded source, `on_eof` at the end of a finite input. `open_counts()`
    gives provisional counts of windows not yet final.

    A batch is decided as a whole, by native kernels over its columns, with
    exactly the per-record results (see `_count`).
    """

    def __init__(self, config: WindowCounter, partition: str, resume_watermark_us: int | None) -> None:
        self.config = config
        self.partition = partition
        self.clock = config.clock.build(resume_watermark_us)
        self.rollups = [RollupWindows(spec) for spec in config.rollups]
        self.seen = DedupKeys()
        self.next_position = 0
        self._restarted = resume_watermark_us is not None
        self._provisional_at = config.wall_clock_us()
        # Only INHERITED batches so far: the first own batch starts from
        # this state (at its resume watermark, if higher) instead of afresh.
        self.inheriting = False
        self._own_seen = False

    # -- lifecycle -------------------------------------------------------------

    def on_batch(self, parsed: ParsedBatch) -> CountedBatch:
        batch = parsed.source
        if batch.kind is BatchKind.INHERITED:
            return self._inherit(parsed)
        if self.inheriting and batch.resume_watermark_us is not None:
            self.clock.advance_to(batch.resume_watermark_us)
        self.inheriting = False
        self._own_seen = True
        if batch.kind is BatchKind.IDLE:
            self.clock.on_idle(batch.idle_seconds)
            out = self._result(batch.kind)
            self._maybe_provisional(out)
            return out
        if batch.kind is BatchKind.EOF:
            return self.on_eof()
        out = self._result(BatchKind.DATA, close=False)
        out.read = len(batch.records)
        out.blank = parsed.blank
        out.malformed = len(parsed.dead_letters)
        out.dead_letters.extend(parsed.dead_letters)
        if len(parsed.events):
            self._count(parsed.events, out)
        if batch.positions:
            self.next_position = max(self.next_position, batch.positions[-1] + 1)
        self._close(out)
        out.safe_position, out.safe_watermark_us = self.safe_point()
        out.watermark_us = self.clock.watermark_us
        self._maybe_provisional(out)
        return out

    def _inherit(self, parsed: ParsedBatch) -> CountedBatch:
        """A parent's records: decided as counting them did (remembering
        their keys, advancing the watermark), but counted, dead-lettered and
        reported by the parent alone."""
        self.inheriting = not self._own_seen
        if len(parsed.events):
            self._count(parsed.events, CountedBatch(self.partition, BatchKind.INHERITED), counting=False)
        return self._result(BatchKind.INHERITED)

    def _maybe_provisional(self, out: CountedBatch) -> None:
        """Every `provisional_interval_us` of wall time, the running counts of
        open windows that changed since they were last emitted."""
        interval = self.config.provisional_interval_us
        if not interval:
            return
        now = self.config.wall_clock_us()
        if now - self._provisional_at < interval:
            return
        self._provisional_at = now
        for rollup in self.rollups:
            frame = rollup.open_frame()
            sent, rollup.sent = rollup.sent, frame
            if frame is None:
                continue
            if sent is not None:
                frame = frame.join(sent, on=frame.columns, how="anti", nulls_equal=True)
            if frame.height:
                out.windows.append(rollup.as_counts(frame, self.partition, False))

    def on_eof(self) -> CountedBatch:
        self.clock.on_eof()
        return self._result(BatchKind.EOF)

    def on_stop(self) -> CountedBatch:
        """Flush open windows as provisional counts without finalising them."""
        out = self._result(BatchKind.EOF, close=False)
        out.windows = self.open_counts()
        out.safe_position, out.safe_watermark_us = self.safe_point()
        out.watermark_us = self.clock.watermark_us
        return out

    def open_counts(self) -> list[WindowCounts]:
        counts = []
        for rollup in self.rollups:
            frame = rollup.open_frame()
            if frame is not None:
                counts.append(rollup.as_counts(frame, self.partition, False))
        return counts

    def safe_point(self) -> tuple[int, int]:
        """(position, watermark) a replay may start from: the first event of
        the oldest open window and the watermark just before it, or, with no
        window open, the next position and the current watermark."""
        firsts = [min(r.firsts.values()) for r in self.rollups if r.firsts]
        return min(firsts) if firsts else (self.next_position, self.clock.watermark_us)

    @property
    def watermark_us(self) -> int:
        return self.clock.watermark_us

    # -- internals -------------------------------------------------------------

    def _result(self, kind: BatchKind, close: bool = True) -> CountedBatch:
        out = CountedBatch(self.partition, kind, restarted=self._restarted)
        self._restarted = False
        if close:
            self._close(out)
            out.safe_position, out.safe_watermark_us = self.safe_point()
            out.watermark_us = self.clock.watermark_us
        return out

    def _count(self, events: EventColumns, out: CountedBatch, counting: bool = True) -> None:
        """Future, then late, then duplicate, then count: the per-record rules,
        decided for the whole batch at once (without `counting`, only the
        dedup keys and the watermark change).

        Why that is exact: the watermark before record i is
        max(watermark at the batch start, newest earlier time − lateness) over
        the earlier records that were counted. Future records are dropped
        first, and they alone could raise that maximum wrongly: a late record
        is older than the watermark, and a duplicate has the time of a record
        already counted. So a running maximum of the remaining times
        (`cum_max`) gives every record's watermark. No counted record can
        fall in a window that closed earlier in the batch (it would have been
        late), so windows are closed once, after the batch is counted.
        """
        lateness = self.clock.lateness_us
        start_watermark = self.clock.watermark_us
        times = events.times_us
        future_limit = future_limit_us(self.config.wall_clock_us(), self.config.future_tolerance_us)
        if times.max() > future_limit:
            in_time = times <= future_limit
            out.future += len(in_time) - int(in_time.sum())
            events = self._drop(events, in_time, out, Reason.FUTURE,
                                "timestamp is more than the future tolerance after the wall clock")
            if not len(events):
                return
            times = events.times_us
        oldest = times.min()
        # A batch that spans less than the lateness, and starts after the
        # watermark, has no late record: the common case skips the check.
        if oldest < start_watermark or oldest + lateness < times.max():
            # newest[i] − lateness is the watermark before record i
            newest = times.cum_max()
            on_time = (times + lateness >= newest) & (times >= start_watermark)
            if not on_time.all():
                late = ~on_time
                out.late += int(late.sum())
                behind = (newest.clip(lower_bound=start_watermark + lateness) - lateness - times).filter(late)
                out.max_late_by_us = max(out.max_late_by_us, int(behind.max()))
                events = self._drop(events, on_time, out, Reason.LATE, "older than the partition watermark",
                                    behind.to_list())
                if not len(events):
                    return
                times = events.times_us
        watermark_after = max(start_watermark, int(times.max()) - lateness)
        is_first = self.seen.first_seen(events.frame.select(KEY_COLUMNS), watermark_after)
        if is_first is not None:
            out.duplicates += len(is_first) - int(is_first.sum())
            events = events.filter(is_first)
            if not len(events):
                return
            times = events.times_us
        if not counting:
            self.clock.on_event(int(times.max()))
            return
        watermark_before = (times.cum_max().shift(1, fill_value=WATERMARK_MIN + lateness) - lateness).clip(
            lower_bound=start_watermark)
        for rollup in self.rollups:
            rollup.add(events, watermark_before)
        out.events = events
        self.clock.on_event(int(times.max()))

    def _drop(self, events: EventColumns, keep: pl.Series, out: CountedBatch, reason: Reason, error: str,
              late_by_us: list[int] | None = None) -> EventColumns:
        """Dead-letter the rows not kept; `late_by_us[i]` is how far the i-th
        of them fell behind the watermark (late letters)."""
        for n, index in enumerate((~keep).arg_true().to_list()):
            out.dead_letters.append(self._dead(events[index], reason, error,
                                               None if late_by_us is None else late_by_us[n]))
        return events.filter(keep)

    def _close(self, out: CountedBatch) -> None:
        watermark = self.clock.watermark_us
        for rollup in self.rollups:
            closed = rollup.close(watermark, self.partition)
            if closed is not None:
                out.windows.append(closed)
        self.seen.forget(watermark)

    def _dead(self, event: Event, reason: Reason, error: str, late_by_us: int | None = None) -> DeadLetter:
        return DeadLetter(reason, error, self.partition, event.position,
                          json.dumps(event.to_record(), default=list).encode(), late_by_us)
