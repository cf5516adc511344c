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

from bisect import bisect_right
from itertools import accumulate

import polars as pl

from streams.event_columns import CORE_FIELDS, POSITION, TIME, EventColumns, run_plan, run_plans
from streams.rollups import RollupSpec
from streams.window_counts import COUNT, FINAL, WINDOW_START, WindowCounts
from streams.windowing import WATERMARK_MAX


class RollupWindows:
    """The open windows of one rollup, as frames.

    `chunks` are per-batch counts (window start, key fields, count), each
    sorted by window start, with the row where each window start's rows end
    kept in Python: closing the windows that the watermark passed takes a
    prefix of each chunk found by `bisect`, never a pass over every open
    window nor a native call per chunk. Chunks are merged when there are
    many, which costs the open windows once per `_MAX_CHUNKS` batches.

    Counting a batch is one native plan (the counts and, per window start,
    its first event), and closing is one more (the closed prefixes summed):
    each native call costs a fixed ~0.1 ms, more while another thread holds
    the GIL, whatever the batch's size.
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
        self.chunks: list[_Chunk] = []
        # window start -> (position of its first event, watermark just before it)
        self.firsts: dict[int, tuple[int, int]] = {}
        self.next_close_us = WATERMARK_MAX
        self.sent: pl.DataFrame | None = None  # the provisional counts last emitted

    def add(self, accepted: EventColumns, watermark_before: pl.Series) -> None:
        """Count accepted events; `watermark_before[i]` is the partition's
        watermark just before the i-th of them."""
        rows = self._keyed_rows(accepted, watermark_before)
        if rows is None:
            return
        keys = [WINDOW_START, *self.key_fields]
        per_key = run_plan(rows.group_by(keys)
                           .agg(pl.len().cast(pl.Int64).alias(COUNT), pl.col(POSITION).min(), pl.col(_WATERMARK).min())
                           .sort(WINDOW_START))
        if not per_key.height:
            return
        per_key = per_key.lazy()
        counts, firsts = run_plans(
            # Strings copied out of the batch's buffers (`compact_strings`).
            per_key.select(WINDOW_START, *[pl.col(name) + pl.lit("") for name in self.key_fields], COUNT),
            per_key.group_by(WINDOW_START).agg(pl.col(POSITION).min(), pl.col(_WATERMARK).min(), pl.len())
            .sort(WINDOW_START))
        starts, ends, end = [], [], 0
        known = self.firsts
        for start, position, watermark, keys_in_window in firsts.rows():
            end += keys_in_window
            starts.append(start)
            ends.append(end)
            if start not in known:
                known[start] = (position, watermark)
                window_end = self.window.end_of(start)
                if window_end < self.next_close_us:
                    self.next_close_us = window_end
        self.chunks.append(_Chunk(counts, starts, ends))
        if len(self.chunks) > _MAX_CHUNKS:
            self.chunks = [_merge(self.chunks, keys)]

    def _keyed_rows(self, accepted: EventColumns, watermark_before: pl.Series) -> pl.LazyFrame | None:
        """One row per (event, key): window start, key fields, position and
        the watermark before the event."""
        if self.core:
            return accepted.frame.hstack([watermark_before.alias(_WATERMARK)]).lazy().select(
                self.window.starts(pl.col(TIME)).alias(WINDOW_START), *self.key_fields, POSITION, _WATERMARK)
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
        if not key_rows:
            return None
        columns = list(zip(*key_rows))
        return pl.DataFrame({
            WINDOW_START: pl.Series(starts, dtype=pl.Int64),
            **{name: pl.Series(list(column), dtype=pl.String) for name, column in zip(self.key_fields, columns)},
            POSITION: pl.Series(positions, dtype=pl.Int64),
            _WATERMARK: pl.Series(watermarks, dtype=pl.Int64),
        }).lazy()

    def close(self, watermark_us: int, partition: str) -> WindowCounts | None:
        """The windows the watermark has passed, final, and forgotten."""
        if watermark_us < self.next_close_us:
            return None
        last_start = watermark_us - self.size  # start + size <= watermark
        closed, remaining = [], []
        for chunk in self.chunks:
            closing = bisect_right(chunk.starts, last_start)
            if not closing:
                remaining.append(chunk)
                continue
            at = chunk.ends[closing - 1]
            closed.append(chunk.frame[:at])
            if closing < len(chunk.starts):
                remaining.append(_Chunk(chunk.frame[at:], chunk.starts[closing:],
                                        [end - at for end in chunk.ends[closing:]]))
        self.chunks = remaining
        for start in [s for s in self.firsts if s <= last_start]:
            del self.firsts[start]
        self.next_close_us = self.window.end_of(min(self.firsts, default=WATERMARK_MAX - self.size))
        if not closed:
            return None
        keys = [WINDOW_START, *self.key_fields]
        if len(closed) == 1:
            frame = closed[0].with_columns(pl.lit(True).alias(FINAL))
        else:
            frame = run_plan(pl.concat([c.lazy() for c in closed]).group_by(keys).agg(pl.col(COUNT).sum())
                             .sort(WINDOW_START).with_columns(pl.lit(True).alias(FINAL)))
        return WindowCounts(self.spec.name, self.key_fields, self.size, partition, frame)

    def open_frame(self) -> pl.DataFrame | None:
        """Running counts of the open windows (window start, keys, count)."""
        if not self.chunks:
            return None
        self.chunks = [_merge(self.chunks, [WINDOW_START, *self.key_fields])]
        return self.chunks[0].frame

    def as_counts(self, frame: pl.DataFrame, partition: str, final: bool) -> WindowCounts:
        return WindowCounts(self.spec.name, self.key_fields, self.size, partition,
                            frame.with_columns(pl.lit(final).alias(FINAL)))


class _Chunk:
    """Counts sorted by window start; the rows of window start `starts[i]`
    end at row `ends[i]`."""

    __slots__ = ("frame", "starts", "ends")

    def __init__(self, frame: pl.DataFrame, starts: list[int], ends: list[int]) -> None:
        self.frame = frame
        self.starts = starts
        self.ends = ends


_MAX_CHUNKS = 8
_WATERMARK = "_watermark_before"


def _merge(chunks: list[_Chunk], keys: list[str]) -> _Chunk:
    """Chunks of counts as one, summed per (window start, key), sorted by
    window start (not by key: sorting strings would cost more than counting)."""
    if len(chunks) == 1:
        return chunks[0]
    frame = run_plan(pl.concat([c.frame.lazy() for c in chunks]).group_by(keys).agg(pl.col(COUNT).sum())
                     .sort(WINDOW_START))
    per_start = frame.group_by(WINDOW_START).len().sort(WINDOW_START)
    starts, sizes = per_start.get_column(WINDOW_START).to_list(), per_start.get_column("len").to_list()
    return _Chunk(frame, starts, list(accumulate(sizes)))
