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

Cost (issue 11): every native polars call through the query engine costs a
fixed ~0.1 ms and hands the GIL to any thread that wants it (the SQLite
writer), so a batch takes few: future and late decided in one pass
(`_decide`), each rollup counted in two plans and closed in one
(`rollup_windows.py`), plans run with the eager engine flags (`run_plan`),
and filters done column by column on Series (`filter_rows`), which keep the
GIL. On 1M sparse events-csv rows in 16,384-row batches: 37 -> 11 engine
calls per batch to count, 11 -> 2 to parse (`csv_parser.py`); main-thread CPU
of parsing 0.82 -> 0.54 s and of counting 0.52 -> 0.41 s, the process's
(polars threads included) 1.78 -> 1.54 s. In a whole `run` the main thread
now waits on the writer thread, which bounds the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import polars as pl

from streams.batches import BatchKind, CountedBatch, ParsedBatch
from streams.dedup_keys import DedupKeys
from streams.event_columns import KEY_COLUMNS, POSITION, SCHEMA, TIME, EventColumns, filter_rows
from streams.events import NO_PROPERTIES, DeadLetter, Event, Reason
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
        # Re-sends dropped as duplicates: the first point (position,
        # watermark) of the tightest open window of their time -> the last
        # such re-send's position (see `_below_resends`).
        self._resends: dict[tuple[int, int], int] = {}
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
        point = min(firsts) if firsts else (self.next_position, self.clock.watermark_us)
        return self._below_resends(point) if self._resends else point

    def _below_resends(self, point: tuple[int, int]) -> tuple[int, int]:
        """`point`, or an earlier window's first point: a replay must not
        start between a dropped re-send and its original. The original's
        window may have closed since (so the oldest open window starts after
        it) while the re-send lies after that start: a replay from there
        would not know the original and would take the re-send, which the
        archive and the Optimizely sink would then see twice. The original
        is at or after the first event of every window that held it, so the
        re-send's window's first point is a safe point before it."""
        lowered = True
        while lowered:
            lowered = False
            for pin, resend in self._resends.items():
                if pin[0] < point[0] <= resend:
                    point, lowered = pin, True
        # Safe points only grow: a re-send before this one never matters again.
        self._resends = {pin: resend for pin, resend in self._resends.items() if resend >= point[0]}
        return point

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
        the earlier records that were counted. Future records are left out of
        that maximum, and they alone could raise it wrongly: a late record is
        older than the watermark, and a duplicate has the time of a record
        counted before it (earlier in the batch, or in an earlier batch, after
        which the watermark was already at least that time − lateness). So one
        running maximum (`cum_max`) of the times that are not future gives
        every record's watermark, the late ones' and the counted ones'. No
        counted record can fall in a window that closed earlier in the batch
        (it would have been late), so windows are closed once, after the
        batch is counted.
        """
        lateness = self.clock.lateness_us
        start_watermark = self.clock.watermark_us
        future_limit = future_limit_us(self.config.wall_clock_us(), self.config.future_tolerance_us)
        kept, dropped, newest = _decide(events, start_watermark, lateness, future_limit)
        if dropped:
            self._drop(events, dropped, out, future_limit)
        if not kept.height:
            return
        is_first = self.seen.first_seen(kept[_KEY_COLUMNS], max(start_watermark, newest - lateness))
        resends = None
        if is_first is not None:
            out.duplicates += len(is_first) - int(is_first.sum())
            if counting:
                resends = filter_rows(kept.select(POSITION, TIME), ~is_first)
            kept = filter_rows(kept, is_first)
            if not kept.height:
                self._note_resends(resends)
                return
        # A duplicate has the time of a record counted before it: the newest
        # kept time moves the watermark as the newest counted one would.
        self.clock.on_event(newest)
        if not counting:
            return
        accepted = EventColumns(events.partition, kept[_SCHEMA_COLUMNS])
        if events.properties is not None:
            accepted.properties = [events.properties[i] for i in kept.get_column(_ROW).to_list()]
        watermark_before = kept.get_column(_WATERMARK_BEFORE)
        for rollup in self.rollups:
            rollup.add(accepted, watermark_before)
        out.events = accepted
        self._note_resends(resends)

    def _note_resends(self, resends: pl.DataFrame | None) -> None:
        """Remember, per window first point, the last dropped re-send of its
        time (`_below_resends`); the windows now hold this batch's events,
        so a re-send of an original in the same batch finds its window."""
        if resends is None:
            return
        for position, time_us in resends.iter_rows():
            pins = [first for r in self.rollups if (first := r.firsts.get(r.window.start_of(time_us))) is not None]
            if pins:  # the tightest: the latest first point of the windows holding the time
                pin = max(pins)
                self._resends[pin] = max(self._resends.get(pin, position), position)

    def _drop(self, events: EventColumns, rows: list[tuple], out: CountedBatch, future_limit: int) -> None:
        """Dead-letter the future rows, then the late ones (`rows`: their
        columns and the watermark before each), in order."""
        future = [row for row in rows if row[_AT_TIME] > future_limit]
        late = [row for row in rows if row[_AT_TIME] <= future_limit] if future else rows
        out.future += len(future)
        out.late += len(late)
        for row in future:
            out.dead_letters.append(self._dead(self._event(events, row), Reason.FUTURE,
                                               "timestamp is more than the future tolerance after the wall clock"))
        if late:
            behind = [row[_AT_WATERMARK] - row[_AT_TIME] for row in late]
            out.max_late_by_us = max(out.max_late_by_us, max(behind))
            for row, late_by in zip(late, behind):
                out.dead_letters.append(self._dead(self._event(events, row), Reason.LATE,
                                                   "older than the partition watermark", late_by))

    def _event(self, events: EventColumns, row: tuple) -> Event:
        """The event of a row of `_decide`'s frames."""
        c, e, x, t, position = row[:_AT_WATERMARK]
        properties = NO_PROPERTIES if events.properties is None else events.properties[row[_AT_ROW]] or NO_PROPERTIES
        return Event(c, e, x, t, properties, events.partition, position)

    def _close(self, out: CountedBatch) -> None:
        watermark = self.clock.watermark_us
        for rollup in self.rollups:
            closed = rollup.close(watermark, self.partition)
            if closed is not None:
                out.windows.append(closed)
        self.seen.forget(watermark)

    def _dead(self, event: Event, reason: Reason, error: str, late_by_us: int | None = None) -> DeadLetter:
        return DeadLetter(reason, error, self.partition, event.position, event.to_letter_record(), late_by_us)


_WATERMARK_BEFORE = "_watermark_before"
_ROW = "_row"
_ON_TIME = "_on_time"
# Where `_decide`'s frames hold the time, the watermark before the row and the
# row's number in the batch (the `SCHEMA` columns come first).
_AT_TIME = list(SCHEMA).index(TIME)
_SCHEMA_COLUMNS = list(SCHEMA)
_KEY_COLUMNS = list(KEY_COLUMNS)
_AT_WATERMARK = len(SCHEMA)
_AT_ROW = _AT_WATERMARK + 1


def _decide(events: EventColumns, start_watermark: int, lateness: int,
            future_limit: int) -> tuple[pl.DataFrame, list[tuple], int]:
    """The rows that are neither future nor late, the rows of those that
    are, each with the watermark before it (`_WATERMARK_BEFORE`, and its row
    number `_ROW` when the events have properties), and the newest time of
    the first (see `PartitionCounter._count`). One native pass over the
    batch, and one more to split it only when a row is dropped."""
    times = pl.col(TIME)
    in_time = times <= future_limit
    before = ((pl.when(in_time).then(times).otherwise(WATERMARK_MIN).cum_max().shift(1, fill_value=WATERMARK_MIN)
               - lateness).clip(lower_bound=start_watermark))
    columns = [before.alias(_WATERMARK_BEFORE)]
    if events.properties is not None:
        columns.append(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW))
    frame = events.frame.with_columns(*columns, (in_time & (times >= before)).alias(_ON_TIME))
    on_time = frame.get_column(_ON_TIME)
    if on_time.all():
        kept, dropped = frame, []
    else:
        late = ~on_time
        kept = filter_rows(frame, on_time)
        dropped = list(zip(*(column.filter(late).to_list() for column in frame.get_columns())))
    return kept, dropped, kept.get_column(TIME).max() if kept.height else WATERMARK_MIN
