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
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Callable, Sequence

from streams.events import BatchKind, DeadLetter, Event, Reason, WindowCount
from streams.parsers import CORE_FIELDS, ParsedBatch
from streams.rollups import RollupSpec
from streams.windowing import WATERMARK_MAX, WATERMARK_MIN, EventClock

DEDUP_BUCKET_US = 60_000_000
DAY_US = 86_400_000_000


@dataclass(slots=True)
class CountedBatch:
    """What one input batch produced, for the sinks."""

    partition: str
    kind: BatchKind
    events: list[Event] = field(default_factory=list)  # accepted: on time and first seen
    dead_letters: list[DeadLetter] = field(default_factory=list)
    closed: list[WindowCount] = field(default_factory=list)
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
    __slots__ = ("spec", "size", "windows", "first_position", "fast_key", "needs_properties")

    def __init__(self, spec: RollupSpec) -> None:
        self.spec = spec
        self.size = spec.window.size_us
        self.windows: dict[int, dict[tuple[str, ...], int]] = {}
        # window start -> (position of its first event, watermark just before it)
        self.first_position: dict[int, tuple[int, int]] = {}
        # Rollups on core fields skip the generic (property, list-expanding) path.
        self.fast_key = attrgetter(*spec.key_fields) if set(spec.key_fields) <= set(CORE_FIELDS) else None
        self.needs_properties = self.fast_key is None


class PartitionCounter:
    """The windows, watermark and dedup state of one source partition.

    Lifecycle: `on_batch` for data, `on_idle` for an empty caught-up poll of an
    unbounded source, `on_eof` at the end of a finite input. `open_counts()`
    gives provisional counts of windows not yet final.
    """

    def __init__(self, config: WindowCounter, partition: str, resume_watermark_us: int | None) -> None:
        self.config = config
        self.partition = partition
        self.clock = config.clock.build(resume_watermark_us)
        self.rollups = [_RollupState(spec) for spec in config.rollups]
        self.seen: dict[int, set[tuple]] = {}
        self.next_close_us = WATERMARK_MAX
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
        self._count(parsed.events, out)
        if batch.positions:
            self.next_position = max(self.next_position, batch.positions[-1] + 1)
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
        for count in self.open_counts():
            ident = (count.rollup, count.window_start_us, count.key)
            open_keys.add(ident)
            if sent.get(ident) != count.count:
                sent[ident] = count.count
                out.closed.append(count)
        for ident in [i for i in sent if i not in open_keys]:  # windows closed since
            del sent[ident]

    def on_eof(self) -> CountedBatch:
        self.clock.on_eof()
        return self._result(BatchKind.EOF)

    def on_stop(self) -> CountedBatch:
        """Flush open windows as provisional counts without finalising them."""
        out = self._result(BatchKind.EOF, close=False)
        out.closed = self.open_counts()
        out.safe_position, out.safe_watermark_us = self.safe_point()
        out.watermark_us = self.clock.watermark_us
        return out

    def open_counts(self) -> list[WindowCount]:
        return [
            WindowCount(r.spec.name, _as_key(key), start, self.partition, count, False)
            for r in self.rollups
            for start, counts in r.windows.items()
            for key, count in counts.items()
        ]

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
            self._close(out.closed)
            out.safe_position, out.safe_watermark_us = self.safe_point()
            out.watermark_us = self.clock.watermark_us
        return out

    def _count(self, events: list[Event], out: CountedBatch) -> None:
        # The per-event loop of the daemon: locals instead of attributes, and
        # the last dedup bucket and window of each rollup remembered, since
        # events mostly arrive in time order.
        clock = self.clock
        lateness = clock.lateness_us
        watermark = clock.watermark_us
        future_limit = self.config.wall_clock_us() + self.config.future_tolerance_us
        seen = self.seen
        accepted = out.events
        plan = [(r.size, r.windows, r.first_position, r.fast_key, r.needs_properties, r.spec) for r in self.rollups]
        last_start = [None] * len(plan)
        last_counts: list[dict] = [{}] * len(plan)
        last_bucket = None
        keys: set = set()
        for event in events:
            t = event.event_time_us
            if t > future_limit:
                out.future += 1
                out.dead_letters.append(self._dead(event, Reason.FUTURE, "timestamp is more than the future tolerance after the wall clock"))
                continue
            if t < watermark:
                out.late += 1
                if watermark - t > out.max_late_by_us:
                    out.max_late_by_us = watermark - t
                out.dead_letters.append(self._dead(event, Reason.LATE, "older than the partition watermark"))
                continue
            bucket = t - t % DEDUP_BUCKET_US
            if bucket != last_bucket:
                keys = seen.get(bucket)
                if keys is None:
                    keys = seen[bucket] = set()
                last_bucket = bucket
            key = (event.customer_id, event.event_type, event.transaction_id, t)
            if key in keys:
                out.duplicates += 1
                continue
            keys.add(key)
            i = 0
            for size, windows, firsts, getter, needs_properties, spec in plan:
                if needs_properties and not event.properties:
                    i += 1
                    continue
                start = t - t % size
                if start == last_start[i]:
                    counts = last_counts[i]
                else:
                    counts = windows.get(start)
                    if counts is None:
                        counts = windows[start] = {}
                        firsts[start] = (event.position, watermark)
                        if start + size < self.next_close_us:
                            self.next_close_us = start + size
                    last_start[i] = start
                    last_counts[i] = counts
                if getter is not None:
                    k = getter(event)  # a str for one key field, a tuple for several
                    counts[k] = counts.get(k, 0) + 1
                else:
                    for k in spec.keys_of(event):
                        counts[k] = counts.get(k, 0) + 1
                i += 1
            accepted.append(event)
            if t - lateness > watermark:
                watermark = clock.watermark_us = t - lateness
                if watermark >= self.next_close_us:
                    self._close(out.closed)
                    # Closed windows are gone; forget the remembered ones.
                    last_start = [None] * len(plan)
                    last_bucket = None

    def _close(self, closed: list[WindowCount]) -> None:
        watermark = self.clock.watermark_us
        if watermark < self.next_close_us:
            return
        next_close = WATERMARK_MAX
        for r in self.rollups:
            for start in sorted(r.windows):
                end = start + r.size
                if end <= watermark:
                    counts = r.windows.pop(start)
                    del r.first_position[start]
                    name = r.spec.name
                    closed.extend(WindowCount(name, _as_key(k), start, self.partition, c, True) for k, c in counts.items())
                elif end < next_close:
                    next_close = end
        self.next_close_us = next_close
        for bucket in [b for b in self.seen if b + DEDUP_BUCKET_US <= watermark]:
            del self.seen[bucket]

    def _dead(self, event: Event, reason: Reason, error: str) -> DeadLetter:
        return DeadLetter(reason, error, self.partition, event.position, json.dumps(event.to_record(), default=list).encode())
