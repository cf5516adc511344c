"""Window aggregates as Parquet tables, one per rollup (layout: docs/store.md).

Each flush writes one zstd Parquet object per (rollup, UTC hour of the window
start, source partition), holding every window of that hour it has taken
since the last flush:

    aggregates/<rollup>/dt=2021-03-01/hour=4/part-<partition>-20210301T040000Zf-<digest>.parquet

with the columns `window_start` (timestamp[us, UTC]), one String column per
key field, `count` (Int64), `final` (Boolean) and `partition` (String).

The same window may live in more than one object: provisional and final
versions, a replay after a crash, a partial rebuild of a window that was
final before the checkpoint. A reader therefore takes, per (window_start,
key, partition), the largest count (a final count is never below a
provisional one of the same window, and no rebuild exceeds the complete
count), then sums over partitions.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import polars as pl

from consumers.object_keys import check_key, encode_name_part
from consumers.parquet_objects import constant_column, zstd_parquet
from consumers.ports import ObjectStore, Sink
from streams.batches import BatchKind
from streams.utc import date_and_hour, us_to_datetime
from streams.window_counts import COUNT, FINAL, RESERVED_COLUMNS, WINDOW_START, WindowCounts
from streams.windowing import HOURLY

if TYPE_CHECKING:
    import pyarrow as pa

    from streams.batches import CountedBatch

DEFAULT_TABLE_TEMPLATE = "aggregates/{rollup}"
# Buffered rows past which write() writes objects before the next flush;
# about 100 bytes a row.
DEFAULT_MAX_BUFFERED_ROWS = 200_000
PARTITION = "partition"
_HOUR = "_hour"
# Per buffered row: the partition's safe position before the batch that
# brought it, from which a replay rebuilds its window (-1: not known).
_FLOOR = "_floor"


def table_root(template: str, rollup: str) -> str:
    """The key prefix of a rollup's table: `template` with `{rollup}` filled
    with the rollup's name, encoded injectively. Raises ValueError for a
    template with other fields or without `{rollup}`, or a root that is not a
    safe key (a rollup named `..`).

    >>> table_root("aggregates/{rollup}", "customer_hourly")
    'aggregates/customer_hourly'
    """
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != {"rollup"}:
        raise ValueError(f"expected a key prefix with {{rollup}} and no other field, e.g. {DEFAULT_TABLE_TEMPLATE!r}, "
                         f"got {template!r}; the layout below it (dt=/hour=/part-*.parquet) is fixed")
    return check_key(template.format(rollup=encode_name_part(rollup)))


def check_key_fields(key_fields: tuple[str, ...]) -> None:
    """A key field becomes a column of the table, next to the fixed ones."""
    clash = sorted(set(key_fields) & RESERVED_COLUMNS)
    if clash:
        raise ValueError(f"key field(s) {', '.join(clash)} would clash with the aggregate table's columns "
                         f"({', '.join(sorted(RESERVED_COLUMNS))})")


@dataclass
class _RollupBuffer:
    key_fields: tuple[str, ...]
    frames: list[pl.DataFrame] = field(default_factory=list)
    rows: int = 0
    sorted: bool = False  # frames is one frame in the canonical order


class AggregateWriter(Sink):
    """Buffers the windows it takes and writes them as Parquet, one object
    per (rollup, partition, UTC hour) it holds rows of.

    Final windows are written as they come; provisional ones (`final` false)
    only at a stop flush (an EOF batch): the running counts of open windows
    are for the count store.

    A checkpoint (`send`, `flush`) writes only the hours that are due: those
    the partition's watermark has passed (every window of them is final),
    those of a partition that ended, and those that would hold the source's
    checkpoint back, i.e. whose rows came before the partition's current
    safe point. The others wait, at no cost to the checkpoint: it cannot
    pass the oldest open window anyway (with an hourly rollup, the first
    event of the hour). So a minute rollup's hour is one object or two, not
    one per checkpoint that closed a minute. `close()` and
    `max_buffered_rows` write everything.

    An object's name holds its first window start, `f` (every row final) or
    `p` (some provisional), and a digest of its content. The digest keeps a
    partial rebuild from overwriting a complete version (the reader's max
    needs both), while a replay that rebuilds the same rows rewrites the same
    object.
    """

    name = "aggregates"

    def __init__(self, store: ObjectStore, key_template: str = DEFAULT_TABLE_TEMPLATE,
                 max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS) -> None:
        table_root(key_template, "check")
        self.store = store
        self.key_template = key_template
        self.max_buffered_rows = max_buffered_rows
        self._buffers: dict[str, _RollupBuffer] = {}
        self._buffered_rows = 0
        # Per partition: the last safe position and watermark seen, whether
        # it ended, and the lowest floor of its buffered rows.
        self._safe: dict[str, int] = {}
        self._watermarks: dict[str, int] = {}
        self._ended: set[str] = set()
        self._floors: dict[str, int] = {}
        self._roots: dict[str, str] = {}
        self.objects_written = 0
        self.rows_written = 0

    def write(self, batch: CountedBatch) -> None:
        # A restarted partition keeps what is buffered for it: its replay may
        # rebuild those windows only in part, and the reader's max needs the
        # complete version.
        stop_flush = batch.kind is BatchKind.EOF
        partition = batch.partition
        # A restarted partition's rows rebuild from its checkpoint, which the
        # last safe point seen (the first run's) may lie past.
        floor = -1 if batch.restarted else self._safe.get(partition, -1)
        for counts in batch.windows:
            frame = counts.frame if stop_flush else counts.frame.filter(pl.col(FINAL))
            if frame.height:
                self._buffer(counts, frame, floor)
        if batch.carries_safe_point:
            self._safe[partition] = batch.safe_position
        self._watermarks[partition] = max(self._watermarks.get(partition, batch.watermark_us), batch.watermark_us)
        if stop_flush:
            self._ended.add(partition)
        if self._buffered_rows > self.max_buffered_rows:
            self._write_buffers()

    def _buffer(self, counts: WindowCounts, frame: pl.DataFrame, floor: int) -> None:
        buffer = self._buffers.get(counts.rollup)
        if buffer is None:
            check_key_fields(counts.key_fields)
            buffer = self._buffers[counts.rollup] = _RollupBuffer(counts.key_fields)
        buffer.frames.append(frame.with_columns(pl.lit(counts.partition, dtype=pl.String).alias(PARTITION),
                                                pl.lit(floor, dtype=pl.Int64).alias(_FLOOR)))
        buffer.rows += frame.height
        buffer.sorted = False
        self._buffered_rows += frame.height
        self._floors[counts.partition] = min(self._floors.get(counts.partition, floor), floor)

    def send(self) -> None:
        if self._buffers:
            self._write_buffers(self._due())
        else:  # a checkpoint a second: nothing to decide when nothing waits, and no ended partition holds rows
            self._ended.clear()

    def flush(self) -> None:
        self.send()
        self.store.sync()

    def pending_floor(self, partition: str) -> int | None:
        return self._floors.get(partition)

    def close(self) -> None:
        self._write_buffers()
        self.store.sync()

    def _due(self) -> pl.Expr:
        """Rows of the (partition, hour) groups a checkpoint writes (class
        docstring)."""
        partitions = list(self._watermarks)
        state = pl.DataFrame({
            PARTITION: partitions,
            "_safe": [self._safe.get(p, -1) for p in partitions],
            "_open_hour": [HOURLY.first_open_number(self._watermarks[p]) for p in partitions],
            "_ended": [p in self._ended for p in partitions],
        }, schema={PARTITION: pl.String, "_safe": pl.Int64, "_open_hour": pl.Int64, "_ended": pl.Boolean})
        hour = HOURLY.numbers(pl.col(WINDOW_START))
        group = [PARTITION, hour]
        lookup = {name: pl.col(PARTITION).replace_strict(state[PARTITION], state[name], default=None)
                  for name in ("_safe", "_open_hour", "_ended")}
        return ((pl.col(_FLOOR).min().over(group) < lookup["_safe"])
                | (hour < lookup["_open_hour"]) | lookup["_ended"]).fill_null(True)

    def _write_buffers(self, due: pl.Expr | None = None) -> None:
        # A buffer is dropped only once all its objects are put: after a failed
        # put the next flush writes the same objects again, under the same keys.
        wrote = False
        for rollup in list(self._buffers):
            buffer = self._buffers[rollup]
            kept = None
            if due is not None:
                frame = pl.concat(buffer.frames, how="vertical", rechunk=False) if len(buffer.frames) > 1 else buffer.frames[0]
                marked = frame.with_columns(due.alias("_due"))
                if not marked["_due"].any():
                    # Kept as one frame: a checkpoint a second would otherwise
                    # concatenate the hour's batches again each time.
                    buffer.frames = [frame]
                    continue
                kept = marked.filter(~pl.col("_due")).drop("_due")
                buffer = _RollupBuffer(buffer.key_fields, [marked.filter(pl.col("_due")).drop("_due")],
                                       int(marked["_due"].sum()))
            for key, body, rows in self._objects(rollup, buffer):
                self.store.put(key, body)
                self.objects_written += 1
                self.rows_written += rows
            wrote = True
            self._buffered_rows -= buffer.rows
            if kept is not None and kept.height:
                self._buffers[rollup] = _RollupBuffer(buffer.key_fields, [kept], kept.height)
            else:
                del self._buffers[rollup]
        if wrote:  # else `_buffer` kept the floors exact: no row left
            self._floors = {}
            for buffer in self._buffers.values():
                for frame in buffer.frames:
                    for partition, floor in frame.group_by(PARTITION).agg(pl.col(_FLOOR).min()).iter_rows():
                        self._floors[partition] = min(self._floors.get(partition, floor), floor)
        self._ended -= {p for p in self._ended if p not in self._floors}

    def _objects(self, rollup: str, buffer: _RollupBuffer) -> Iterator[tuple[str, bytes, int]]:
        # One sort of the whole buffer, then each (partition, hour) object is
        # a slice of it: the rows of an object stay in the canonical order
        # (window start, key, count, final) that makes the same rows give the
        # same bytes, as an object's hour follows from its window starts.
        key_fields = buffer.key_fields
        if len(buffer.frames) > 1 or not buffer.sorted:
            frame = pl.concat(buffer.frames, how="vertical", rechunk=False)
            # Kept sorted, so a retry after a failed put does not sort again
            # and the unsorted frames are freed now.
            buffer.frames = [frame.sort([PARTITION, WINDOW_START, *key_fields, COUNT, FINAL])]
            buffer.sorted = True
        frame = buffer.frames[0]
        groups = frame.lazy().group_by(
            PARTITION, HOURLY.numbers(pl.col(WINDOW_START)).alias(_HOUR), maintain_order=True
        ).agg(pl.len(), pl.col(WINDOW_START).first(), pl.col(FINAL).all()).collect()
        table = _arrow_table(frame, key_fields)
        offset = 0
        for partition, hour, rows, first, final in groups.iter_rows():
            body = _parquet(table.slice(offset, rows), partition)
            offset += rows
            yield self._key(rollup, partition, hour, first, final, body), body, rows

    def _key(self, rollup: str, partition: str, hour: int, first_us: int, final: bool, body: bytes) -> str:
        root = self._roots.get(rollup)
        if root is None:
            root = self._roots[rollup] = table_root(self.key_template, rollup)
        day, hour_of_day = date_and_hour(HOURLY.start_of_number(hour))
        first = us_to_datetime(first_us)
        flag = "f" if final else "p"
        digest = hashlib.blake2b(body, digest_size=8).hexdigest()
        # The year by hand: strftime's %Y writes 999 for 0999, which no date reader takes.
        return (f"{root}/dt={day}/hour={hour_of_day}/"
                f"part-{encode_name_part(partition)}-{first.year:04d}{first:%m%dT%H%M%SZ}{flag}-{digest}.parquet")


def _arrow_table(frame: pl.DataFrame, key_fields: tuple[str, ...]) -> pa.Table:
    """The table's columns but `partition` (added per object: a constant),
    strings as Arrow's large strings, the type the tables had when polars
    wrote them."""
    return frame.select(
        pl.from_epoch(WINDOW_START, time_unit="us").dt.replace_time_zone("UTC").alias("window_start"),
        *key_fields,
        COUNT,
        FINAL,
    ).to_arrow(compat_level=pl.CompatLevel.oldest())


def _parquet(rows: pa.Table, partition: str) -> bytes:
    """One object's rows as zstd Parquet. Only `partition`, one value per
    object, is dictionary encoded (on `event_type_minutely`, whose key
    repeats, a dictionary on the key saved 0.2%); only `window_start` has
    statistics."""
    return zstd_parquet(rows.append_column(PARTITION, constant_column(partition, rows.num_rows)), [PARTITION],
                        ["window_start"])
