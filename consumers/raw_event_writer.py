"""Raw events as compacted objects in Hive partitions: zstd Parquet, or gzip
NDJSON on request.

The layout is fixed, and nothing from an event is ever part of a key:

    events/dt=YYYY-MM-DD/hour=H/part-<partition>-<first position>.parquet

`dt` and `hour` are the UTC date and hour of the event time; `hour` has no
leading zero, because Hive readers type `04` as text (DuckDB does) and `4` as
an integer. Event values (an `event_type` of `x=y`, `a/b` or `..`) stay
columns with their real values, so no value can add a partition level or
break a reader's path parsing.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import polars as pl

from consumers.object_keys import encode_name_part
from consumers.parquet_objects import arrow_parquet, constant_column, zstd_parquet
from consumers.ports import ObjectStore
from streams.batches import BatchKind, CountedBatch
from streams.event_columns import POSITION, TIME, EventColumns
from streams.events import SCHEMA_VERSION, Event
from streams.utc import date_and_hour
from streams.windowing import HOURLY

if TYPE_CHECKING:
    import pyarrow as pa

RAW_EVENTS_ROOT = "events"
_HOUR = "_hour"


# Columns whose values repeat within an object, and those a reader prunes
# by (see `zstd_parquet`). `properties` is mostly distinct where it is not
# null (other fields of JSON events).
_DICTIONARY_COLUMNS = ["event_type", "partition"]
_STATISTICS_COLUMNS = ["timestamp", POSITION]


def _parquet_body(rows: pa.Table, partition: str) -> bytes:
    """The rows as one zstd Parquet object. No `dt`/`hour` columns:
    Hive readers add them from the key, and a file column of the same name
    would clash with the partition column."""
    pa, _ = arrow_parquet()
    table = pa.table({
        "customer_id": rows["customer_id"],
        "event_type": rows["event_type"],
        "transaction_id": rows["transaction_id"],
        "timestamp": rows[TIME].cast(pa.timestamp("us", tz="UTC")),
        "partition": constant_column(partition, rows.num_rows),
        POSITION: rows[POSITION],
        "properties": rows["properties"],
    })
    return zstd_parquet(table, _DICTIONARY_COLUMNS, _STATISTICS_COLUMNS)


def ndjson_lines(rows: pl.DataFrame) -> str:
    """The rows in the wire format of `Event.to_json_line`, built as columns.

    Without properties a line is byte for byte `to_json_line`; with them it
    holds the same JSON object, its properties in key order.
    """
    core = pl.struct(
        pl.lit(SCHEMA_VERSION, pl.Int64).alias("v"),
        "customer_id",
        "event_type",
        "transaction_id",
        pl.from_epoch(TIME, "us").dt.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").alias("timestamp"),
    ).struct.json_encode()
    properties = pl.col("properties")
    # The parsers pop the core fields and `v` from the properties, so
    # splicing the two objects cannot repeat a key.
    line = pl.when(properties.is_null()).then(core).otherwise(
        properties.str.head(-1) + pl.lit(",") + core.str.slice(1)
    )
    return rows.select(line.str.join("\n")).item() + "\n"


def _ndjson_gzip_body(rows: pa.Table, partition: str) -> bytes:
    # mtime 0 (zlib's gzip header has none): the same rows give the same bytes.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(ndjson_lines(pl.from_arrow(rows)).encode()) + compressor.flush()  # type: ignore[arg-type]


@dataclass(frozen=True)
class RawEventFormat:
    suffix: str
    encode: Callable[[pa.Table, str], bytes]  # the buffered columns (EventColumns') and the partition


FORMATS: dict[str, RawEventFormat] = {
    "parquet": RawEventFormat(".parquet", _parquet_body),
    "ndjson-gzip": RawEventFormat(".jsonl.gz", _ndjson_gzip_body),
}
DEFAULT_FORMAT = "parquet"


def raw_event_key(partition: str, hour: int, first_position: int, suffix: str) -> str:
    """The key of the object holding `partition`'s rows of UTC hour `hour`
    (hours since the epoch), starting at `first_position`."""
    day, hour_of_day = date_and_hour(HOURLY.start_of_number(hour))
    return (
        f"{RAW_EVENTS_ROOT}/dt={day}/hour={hour_of_day}/"
        f"part-{encode_name_part(partition)}-{first_position:012d}{suffix}"
    )


@dataclass
class _Buffer:
    """The rows of one object to be, as Arrow tables."""

    first_position: int
    opened_at: float
    tables: list[pa.Table] = field(default_factory=list)
    size: int = 0  # bytes of the tables' buffers

    def add(self, rows: pl.DataFrame) -> int:
        # Arrow's large strings are copied into buffers of the rows' own: a
        # polars string column cut from a batch views the whole batch's text,
        # which an hour's buffer would otherwise keep alive (the work of
        # compact_strings, done by the conversion the writer needs anyway).
        table = rows.to_arrow(compat_level=pl.CompatLevel.oldest())
        self.tables.append(table)
        # The table's own bytes: polars' estimate of the frame counts a
        # string's text but not its offset, and came to 55-61 % of them
        # (bench batches, sparse and dense).
        added = table.nbytes
        self.size += added
        return added

    def rows(self) -> pa.Table:
        pa, _ = arrow_parquet()
        # The tables as chunks of one: nothing is copied.
        return pa.concat_tables(self.tables) if len(self.tables) > 1 else self.tables[0]


def _frame_of(batch: CountedBatch) -> pl.DataFrame:
    events: Sequence[Event] = batch.events
    if not isinstance(events, EventColumns):
        events = EventColumns.from_events(batch.partition, events)
    return events.to_frame()


def split_by_hour(frame: pl.DataFrame) -> list[tuple[int, pl.DataFrame]]:
    """(UTC hour since the epoch, its rows in order) for each hour in `frame`."""
    hours = HOURLY.numbers(frame[TIME])
    first = hours.min()
    if first == hours.max():  # the usual batch: nothing to split
        return [(int(first), frame)]  # type: ignore[arg-type]
    parts = frame.with_columns(hours.alias(_HOUR)).partition_by(
        _HOUR, maintain_order=True, include_key=False, as_dict=True)
    return [(int(hour), rows) for (hour,), rows in parts.items()]  # type: ignore[call-overload]


class RawEventWriter:
    """Buffers valid events per (source partition, UTC hour) as Arrow
    tables, and writes each buffer as one object when it reaches `max_bytes`
    (the bytes of its tables in memory, about the uncompressed size) or
    `max_age_seconds`, when it is the oldest of more than `max_open_objects`,
    when all buffers together pass `max_buffered_bytes`, when the watermark
    passes the end of its hour (no event of it can be accepted any more),
    when its partition ends (an EOF batch: the end of a file, a closed shard,
    a stop), and on `close()`.

    A checkpoint does not cut the buffers: `flush()` makes durable what was
    written, and `pending_floor` holds the source's checkpoint below the
    first event still buffered. Cutting them at every checkpoint (once a
    second) gave a live stream one object per partition and second, 3,600
    an hour; rolled by age, it is one a minute.

    An object is named by its partition and the position of its first event,
    so a replay of the same input with the same batch boundaries rewrites the
    same keys with the same bytes instead of adding objects. Works over any
    `ObjectStore`: a local directory or S3.
    """

    name = "raw-events"

    def __init__(
        self,
        store: ObjectStore,
        format: str = DEFAULT_FORMAT,
        max_bytes: int = 64 << 20,
        max_age_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_open_objects: int = 64,
        max_buffered_bytes: int = 256 << 20,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown raw event format {format!r}, expected one of {', '.join(FORMATS)}")
        self.store = store
        self.format = FORMATS[format]
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        # A backfill touches many hours at once; unbounded, every one of them
        # would hold its rows in memory until the end of the run.
        self.max_open_objects = max_open_objects
        self.max_buffered_bytes = max_buffered_bytes
        self._buffers: dict[tuple[str, int], _Buffer] = {}  # insertion order = opening order
        self._buffered_bytes = 0
        self._taken: dict[str, int] = {}  # partition -> the last position taken (positions only grow)
        self.objects_written = 0
        self.events_written = 0

    def write(self, batch: CountedBatch) -> None:
        now = self.clock()
        if len(batch.events):
            rows = self._not_taken(batch.partition, _frame_of(batch))
            if rows.height:
                for hour, part in split_by_hour(rows):
                    self._append((batch.partition, hour), part, now)
        self._write_complete(batch)
        self._roll(now)

    def _write_complete(self, batch: CountedBatch) -> None:
        """Write the partition's buffers that can take no more events: all of
        them at its end (an EOF batch), else those of hours the watermark has
        passed, whose events would all be late now. The second cut depends on
        the events alone, not on when they came: a replay that reads such an
        hour whole writes the same object again, under the same key."""
        ended = batch.kind is BatchKind.EOF
        open_hour = HOURLY.first_open_number(batch.watermark_us)
        complete = [key for key in self._buffers if key[0] == batch.partition and (ended or key[1] < open_hour)]
        for key in complete:
            self._write(key)

    def _not_taken(self, partition: str, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows past the last position this writer took of `partition`.

        A partition that restarts from its checkpoint in this process (a
        Kinesis lease lost and taken back) replays events this writer already
        has, buffered or written, and with other batch boundaries: written
        again, they would land in objects of other first positions, beside
        the first ones. The replay decides as the first run did (it starts
        with the checkpoint's watermark, at or before the original of every
        re-send after it), so every event is archived once. After a crash
        the new process remembers nothing, and the replay may write an event
        in a second object (docs/store.md)."""
        positions = frame.get_column(POSITION)
        taken = self._taken.get(partition)
        if taken is not None and positions.min() <= taken:  # type: ignore[operator]
            frame = frame.filter(pl.col(POSITION) > taken)
        if frame.height:  # else every position is at or below `taken`, which stays
            self._taken[partition] = int(positions.max())  # type: ignore[arg-type]
        return frame

    def _append(self, key: tuple[str, int], rows: pl.DataFrame, now: float) -> None:
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _Buffer(int(rows[POSITION].min()), now)  # type: ignore[arg-type]
        self._buffered_bytes += buffer.add(rows)
        if buffer.size >= self.max_bytes:
            self._write(key)

    def _roll(self, now: float) -> None:
        for key in [k for k, b in self._buffers.items() if now - b.opened_at >= self.max_age_seconds]:
            self._write(key)
        while len(self._buffers) > self.max_open_objects:
            self._write(next(iter(self._buffers)))
        while self._buffers and self._buffered_bytes > self.max_buffered_bytes:
            self._write(max(self._buffers, key=lambda k: self._buffers[k].size))

    def _write(self, key: tuple[str, int]) -> None:
        # The buffer is dropped only once the store has the object: if `put`
        # fails, its events stay pending and the source is not checkpointed.
        buffer = self._buffers[key]
        partition, hour = key
        rows = buffer.rows()
        body = self.format.encode(rows, partition)
        self.store.put(raw_event_key(partition, hour, buffer.first_position, self.format.suffix), body)
        del self._buffers[key]
        self._buffered_bytes -= buffer.size
        self.objects_written += 1
        self.events_written += rows.num_rows

    def send(self) -> None:
        """Nothing to start: objects are put as they are cut, and the buffers
        stay open across checkpoints (see the class docstring)."""

    def flush(self) -> None:
        # Puts need not be durable; the checkpoint after this flush must be.
        self.store.sync()

    def pending_floor(self, partition: str) -> int | None:
        return min((b.first_position for (p, _), b in self._buffers.items() if p == partition), default=None)

    def close(self) -> None:
        for key in list(self._buffers):
            self._write(key)
        self.flush()
