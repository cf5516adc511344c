"""The open windows of one rollup in one partition, as frames of counts:
counted a batch at a time, closed once the watermark passes their end, and
read as running counts while open. `PartitionCounter` keeps one per rollup
and decides which events reach them.

>>> import polars as pl
>>> from streams.event_columns import EventColumns
>>> from streams.rollups import RollupSpec
>>> from streams.windowing import TumblingWindower
>>> windows = RollupWindows(RollupSpec("hourly", ("customer_id",), TumblingWindower(3_600_000_000)))
>>> events = EventColumns.from_lists("p", ["c1", "c1"], ["view", "view"], ["t1", "t2"], [0, 60_000_000], [1, 2])
>>> windows.add(events, pl.Series([0, 0]))
>>> windows.close(3_600_000_000, "p").frame.select("window_start_us", "customer_id", "count").rows()
[(0, 'c1', 2)]
"""

from __future__ import annotations

import polars as pl

from streams.event_columns import CORE_FIELDS, POSITION, TIME, EventColumns, compact_strings
from streams.rollups import RollupSpec
from streams.window_counts import COUNT, FINAL, WINDOW_START, WindowCounts
from streams.windowing import WATERMARK_MAX


class RollupWindows:
    """The open windows of one rollup, as frames.

    `chunks` are per-batch counts (window start, key fields, count), each
    sorted by window start, so closing the windows that the watermark passed
    takes a prefix of each chunk (a binary search), never a pass over every
    open window. Chunks are merged when there are many, which costs the open
    windows once per `_MAX_CHUNKS` batches.
    """

    __slots__ = ("spec", "window", "size", "key_fields", "core", "chunks", "firsts", "next_close_us", "sent")

    def __init__(self, spec: RollupSpec) -> None:
        self.spec = spec
        self.window = spec.window
        self.size = spec.window.size_us
        self.key_fields = spec.key_fields
        # Rollups on core fields count straight from the columns; others need
        # each event's properties.
        self.core = set(spec.key_fields) <= set(CORE_FIELDS)
        self.chunks: list[pl.DataFrame] = []
        # window start -> (position of its first event, watermark just before it)
        self.firsts: dict[int, tuple[int, int]] = {}
        self.next_close_us = WATERMARK_MAX
        self.sent: pl.DataFrame | None = None  # the provisional counts last emitted

    def add(self, accepted: EventColumns, watermark_before: pl.Series) -> None:
        """Count accepted events; `watermark_before[i]` is the partition's
        watermark just before the i-th of them."""
        rows = self._keyed_rows(accepted, watermark_before)
        if rows is None or not rows.height:
            return
        keys = [WINDOW_START, *self.key_fields]
        self.chunks.append(compact_strings(
            rows.group_by(keys).agg(pl.len().cast(pl.Int64).alias(COUNT)).sort(WINDOW_START)))
        if len(self.chunks) > _MAX_CHUNKS:
            self.chunks = [_merge(self.chunks, keys)]
        firsts = rows.group_by(WINDOW_START).agg(pl.col(POSITION).min(), pl.col(_WATERMARK).min())
        known = self.firsts
        for start, position, watermark in firsts.iter_rows():
            if start not in known:
                known[start] = (position, watermark)
                end = self.window.end_of(start)
                if end < self.next_close_us:
                    self.next_close_us = end

    def _keyed_rows(self, accepted: EventColumns, watermark_before: pl.Series) -> pl.DataFrame | None:
        """One row per (event, key): window start, key fields, position and
        the watermark before the event."""
        if self.core:
            return accepted.frame.select(
                self.window.starts(pl.col(TIME)).alias(WINDOW_START), *self.key_fields, POSITION,
                watermark_before.alias(_WATERMARK))
        if accepted.properties is None:  # no event has the property: nothing to count
            return None
        starts: list[int] = []
        positions: list[int] = []
        watermarks: list[int] = []
        key_rows: list[tuple[str, ...]] = []
        for event, watermark in zip(accepted, watermark_before.to_list()):
            for key in self.spec.keys_of(event):
                starts.append(self.window.start_of(event.event_time_us))
                positions.append(event.position)
                watermarks.append(watermark)
                key_rows.append(key)
        columns = list(zip(*key_rows)) if key_rows else [[] for _ in self.key_fields]
        return pl.DataFrame({
            WINDOW_START: pl.Series(starts, dtype=pl.Int64),
            **{name: pl.Series(list(column), dtype=pl.String) for name, column in zip(self.key_fields, columns)},
            POSITION: pl.Series(positions, dtype=pl.Int64),
            _WATERMARK: pl.Series(watermarks, dtype=pl.Int64),
        })

    def close(self, watermark_us: int, partition: str) -> WindowCounts | None:
        """The windows the watermark has passed, final, and forgotten."""
        if watermark_us < self.next_close_us:
            return None
        last_start = watermark_us - self.size  # start + size <= watermark
        closed, remaining = [], []
        for chunk in self.chunks:
            at = chunk[WINDOW_START].search_sorted(last_start, side="right")
            if at:
                closed.append(chunk[:at])
            if at < chunk.height:
                remaining.append(chunk[at:])
        self.chunks = remaining
        for start in [s for s in self.firsts if s <= last_start]:
            del self.firsts[start]
        self.next_close_us = self.window.end_of(min(self.firsts, default=WATERMARK_MAX - self.size))
        if not closed:
            return None
        return self.as_counts(_merge(closed, [WINDOW_START, *self.key_fields]), partition, True)

    def open_frame(self) -> pl.DataFrame | None:
        """Running counts of the open windows (window start, keys, count)."""
        if not self.chunks:
            return None
        self.chunks = [_merge(self.chunks, [WINDOW_START, *self.key_fields])]
        return self.chunks[0]

    def as_counts(self, frame: pl.DataFrame, partition: str, final: bool) -> WindowCounts:
        return WindowCounts(self.spec.name, self.key_fields, self.size, partition,
                            frame.with_columns(pl.lit(final).alias(FINAL)))


_MAX_CHUNKS = 8
_WATERMARK = "_watermark_before"


def _merge(chunks: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    """Chunks of counts as one, summed per (window start, key), sorted by
    window start (not by key: sorting strings would cost more than counting)."""
    if len(chunks) == 1:
        return chunks[0]
    return pl.concat(chunks).group_by(keys).agg(pl.col(COUNT).sum()).sort(WINDOW_START)
