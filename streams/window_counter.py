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
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate, compress, repeat
from operator import add, ge, mod, not_, sub
from typing import Any, Callable, Sequence

from streams.dedup_keys import DedupKeys
from streams.event_columns import CORE_FIELDS, EventColumns
from streams.events import BatchKind, DeadLetter, Event, Reason, WindowCount
from streams.parsers import ParsedBatch
from streams.rollups import RollupSpec
from streams.window_counts import WindowCounts
from streams.windowing import WATERMARK_MAX, WATERMARK_MIN, EventClock

DAY_US = 86_400_000_000


@dataclass(slots=True)
class CountedBatch:
    """What one input batch produced, for the sinks."""

    partition: str
    kind: BatchKind
    events: Sequence[Event] = ()  # accepted: on time and first seen
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Counts of windows per rollup, as columns: final ones, and provisional
    # ones (`final` false) of windows still open.
    windows: list[WindowCounts] = field(default_factory=list)
    read: int = 0
    blank: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    future: int = 0
    watermark_us: int = WATERMARK_MIN
    max_late_by_us: int = 0  # how far the most late event fell behind the watermark
    # Every record before this position is fully reflected in final outputs, so
    # a source may checkpoint here once the sinks have written this batch, and
    # a replay from it must start with this watermark to decide exactly as the
    # first run did (what was late stays late).
    safe_position: int = 0
    safe_watermark_us: int = WATERMARK_MIN
    # The first batch of a partition that restarted from its checkpoint (a
    # Kinesis lease taken back): what sinks still buffer for the partition is
    # about to be delivered again, so they may drop it.
    restarted: bool = False

    @property
    def closed(self) -> list[WindowCount]:
        """`windows` as one `WindowCount` per row: for tests and adapters that
        send a request per window anyway, not for the hot path."""
        return [row for counts in self.windows for row in counts.rows()]

    @property
    def final_windows(self) -> int:
        return sum(counts.final_count for counts in self.windows)


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


def _as_key(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return key if type(key) is tuple else (key,)


class _RollupState:
    """The open windows of one rollup."""

    __slots__ = ("spec", "size", "windows", "first_position", "key_fields", "next_close_us")

    def __init__(self, spec: RollupSpec) -> None:
        self.spec = spec
        self.size = spec.window.size_us
        # window start -> key -> count
        self.windows: dict[int, Counter[Any]] = {}
        # window start -> (position of its first event, watermark just before it)
        self.first_position: dict[int, tuple[int, int]] = {}
        # Rollups on core fields count straight from the columns; others need
        # each event's properties.
        self.key_fields = spec.key_fields if set(spec.key_fields) <= set(CORE_FIELDS) else None
        self.next_close_us = WATERMARK_MAX

    def add(self, accepted: EventColumns, watermark_before: Callable[[int], int]) -> None:
        """Count accepted events; `watermark_before(i)` is the partition's
        watermark just before the i-th of them."""
        size = self.size
        windows = self.windows
        if self.key_fields is not None:
            times = accepted.times_us
            starts = list(map(sub, times, map(mod, times, repeat(size))))
            columns = [accepted.column(name) for name in self.key_fields]
            keys = columns[0] if len(columns) == 1 else list(zip(*columns))
            distinct = set(starts)
            self._open(distinct, starts, accepted, watermark_before)
            if len(distinct) == 1:  # the usual batch: one C loop, no pairs
                windows[starts[0]].update(keys)
                return
            pairs = Counter(zip(starts, keys))
        else:
            starts = []
            pairs = Counter()
            for event in accepted:
                start = event.event_time_us - event.event_time_us % size
                keys = list(self.spec.keys_of(event))
                pairs.update((start, key) for key in keys)
                starts.append(start if keys else None)  # no key: no window
            self._open(set(starts).difference((None,)), starts, accepted, watermark_before)
        for (start, key), count in pairs.items():
            counts = windows[start]
            counts[key] += count

    def _open(self, starts: set[int], all_starts: list, accepted: EventColumns, watermark_before: Callable[[int], int]) -> None:
        firsts = self.first_position
        for start in starts.difference(firsts):
            index = all_starts.index(start)  # the window's first event
            firsts[start] = (accepted.positions[index], watermark_before(index))
            self.windows[start] = Counter()
            if start + self.size < self.next_close_us:
                self.next_close_us = start + self.size

    def close(self, watermark_us: int, partition: str, closed: list[WindowCount]) -> None:
        if watermark_us < self.next_close_us:
            return
        size = self.size
        name = self.spec.name
        for start in sorted(s for s in self.windows if s + size <= watermark_us):
            counts = self.windows.pop(start)
            del self.first_position[start]
            closed.extend(WindowCount(name, _as_key(key), start, partition, count, True) for key, count in counts.items())
        self.next_close_us = min(self.windows, default=WATERMARK_MAX - size) + size


class PartitionCounter:
    """The windows, watermark and dedup state of one source partition.

    Lifecycle: `on_batch` for data, `on_idle` for an empty caught-up poll of an
    unbounded source, `on_eof` at the end of a finite input. `open_counts()`
    gives provisional counts of windows not yet final.

    A batch is decided as a whole, by C loops over its columns, with exactly
    the per-record results (see `_count`).
    """

    def __init__(self, config: WindowCounter, partition: str, resume_watermark_us: int | None) -> None:
        self.config = config
        self.partition = partition
        self.clock = config.clock.build(resume_watermark_us)
        self.rollups = [_RollupState(spec) for spec in config.rollups]
        self.seen = DedupKeys()
        self.next_position = 0
        self._restarted = resume_watermark_us is not None
        self._provisional_at = config.wall_clock_us()
        self._provisional_sent: dict[tuple[str, int, tuple[str, ...]], int] = {}

    # -- lifecycle -------------------------------------------------------------

    def on_batch(self, parsed: ParsedBatch) -> CountedBatch:
        batch = parsed.source
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

    def _maybe_provisional(self, out: CountedBatch) -> None:
        interval = self.config.provisional_interval_us
        if not interval:
            return
        now = self.config.wall_clock_us()
        if now - self._provisional_at < interval:
            return
        self._provisional_at = now
        sent = self._provisional_sent
        open_keys = set()
        changed = []
        for count in self._open_rows():
            ident = (count.rollup, count.window_start_us, count.key)
            open_keys.add(ident)
            if sent.get(ident) != count.count:
                sent[ident] = count.count
                changed.append(count)
        out.windows.extend(self._as_frames(changed))
        for ident in [i for i in sent if i not in open_keys]:  # windows closed since
            del sent[ident]

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
        return self._as_frames(self._open_rows())

    def _as_frames(self, rows: list[WindowCount]) -> list[WindowCounts]:
        out = []
        for r in self.rollups:
            mine = [row for row in rows if row.rollup == r.spec.name]
            if mine:
                out.append(WindowCounts.from_rows(r.spec.name, r.spec.key_fields, r.size, self.partition, mine))
        return out

    def _open_rows(self) -> list[WindowCount]:
        return [
            WindowCount(r.spec.name, _as_key(key), start, self.partition, count, False)
            for r in self.rollups
            for start, counts in r.windows.items()
            for key, count in counts.items()
        ]

    def open_window_count(self) -> int:
        return sum(len(r.first_position) for r in self.rollups)

    def safe_point(self) -> tuple[int, int]:
        """(position, watermark) a replay may start from: the first event of
        the oldest open window and the watermark just before it, or, with no
        window open, the next position and the current watermark."""
        firsts = [first for r in self.rollups for first in r.first_position.values()]
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

    def _count(self, events: EventColumns, out: CountedBatch) -> None:
        """Future, then late, then duplicate, then count: the per-record rules,
        decided for the whole batch at once.

        Why that is exact: the watermark before record i is
        max(watermark at the batch start, newest earlier time − lateness) over
        the earlier records that were counted. Future records are dropped
        first, and they alone could raise that maximum wrongly: a late record
        is older than the watermark, and a duplicate has the time of a record
        already counted. So a running maximum of the remaining times
        (`accumulate`) gives every record's watermark. No counted record can
        fall in a window that closed earlier in the batch (it would have been
        late), so windows are closed once, after the batch is counted.
        """
        lateness = self.clock.lateness_us
        start_watermark = self.clock.watermark_us
        times = events.times_us
        future_limit = self.config.wall_clock_us() + self.config.future_tolerance_us
        if max(times) > future_limit:
            in_time = [t <= future_limit for t in times]
            out.future += in_time.count(False)
            events = self._drop(events, in_time, out, Reason.FUTURE,
                                "timestamp is more than the future tolerance after the wall clock")
            if not len(events):
                return
            times = events.times_us
        oldest = min(times)
        # A batch that spans less than the lateness, and starts after the
        # watermark, has no late record: the common case skips the check.
        if oldest < start_watermark or oldest + lateness < max(times):
            # newest[i] − lateness is the watermark before record i
            newest = list(accumulate(times, max, initial=start_watermark + lateness))
            on_time = list(map(ge, map(add, times, repeat(lateness)), newest))
            if False in on_time:
                out.late += on_time.count(False)
                out.max_late_by_us = max(out.max_late_by_us, max(
                    n - lateness - t for t, n, ok in zip(times, newest, on_time) if not ok))
                events = self._drop(events, on_time, out, Reason.LATE, "older than the partition watermark")
                if not len(events):
                    return
                times = events.times_us
        is_first = self.seen.first_seen(events.dedup_keys(), times)
        if is_first is not None:
            out.duplicates += is_first.count(False)
            events = events.select(is_first)
            if not len(events):
                return
            times = events.times_us
        newest_time = max(times)

        def watermark_before(index: int) -> int:
            return max(start_watermark, max(times[:index], default=WATERMARK_MIN) - lateness)

        for rollup in self.rollups:
            rollup.add(events, watermark_before)
        out.events = events
        self.clock.on_event(newest_time)

    def _drop(self, events: EventColumns, keep: list[bool], out: CountedBatch, reason: Reason, error: str) -> EventColumns:
        for index in compress(range(len(keep)), map(not_, keep)):
            out.dead_letters.append(self._dead(events[index], reason, error))
        return events.select(keep)

    def _close(self, out: CountedBatch) -> None:
        watermark = self.clock.watermark_us
        closed: list[WindowCount] = []
        for rollup in self.rollups:
            rollup.close(watermark, self.partition, closed)
        out.windows.extend(self._as_frames(closed))
        self.seen.forget(watermark)

    def _dead(self, event: Event, reason: Reason, error: str) -> DeadLetter:
        return DeadLetter(reason, error, self.partition, event.position, json.dumps(event.to_record(), default=list).encode())
