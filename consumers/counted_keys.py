"""Which events a source partition has already counted, read from the
raw-event archive.

Every event a partition counts (on time, first seen) is archived once under
`events/dt=…/hour=H/part-<partition>-<first position>.<parquet|jsonl.gz>`
(consumers/raw_event_writer.py, docs/store.md), durably by the checkpoint
that covers it. So for an event of partition P at time t, "was its dedup key
(customer, type, transaction, UTC time) counted?" is answered by the objects
of P in t's UTC hour, and nothing else: an event's hour is part of its key,
and partitions count apart (a different partition adds).

This is what re-admitting late events checks. The run summary asks the
run's own partition: a late event whose key is in its partition's archive is
a re-sent duplicate. `replay-dead-letter --reason late` asks every partition
(`partition=None`): a letter replayed once and consumed is archived under the
partition that consumed it, so a second replay of the same file must find it
there, or it would count twice. It is as complete as the archive: objects removed by a
retention rule no longer answer.

Only the key columns are read, only of the hours asked about, through the
`ObjectStore` port (a local directory or S3), several objects at a time.

`RunKeys` spares most of those reads for the run summary: the keys the run
counted itself, remembered as it counts. Every one of them is archived under
its partition by the final sync, so a late event whose key is among them is
answered without reading anything; only the others (new late events, and
re-sends of what earlier runs counted) are looked up in the archive. The
answer is the archive's either way.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import polars as pl

from consumers.ports import ObjectStore
from consumers.raw_event_writer import FORMATS, raw_event_key
from streams.batches import CountedBatch
from streams.event_columns import CORE_FIELDS, KEY_COLUMNS, TIME, EventColumns, compact_strings
from streams.events import Event
from streams.windowing import HOURLY

Key = tuple[str, str, str, int]
KEY_SCHEMA = {**{name: pl.String for name in CORE_FIELDS}, TIME: pl.Int64}
_SUFFIXES = tuple(fmt.suffix for fmt in FORMATS.values())
_STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"  # format_utc, as the NDJSON archive writes it
_HIT = "_counted"
# The columns of a Parquet archive object that make a key, as the writer types them.
_PARQUET_KEY_SCHEMA = {**{name: pl.String for name in CORE_FIELDS}, "timestamp": pl.Datetime("us", "UTC"),
                       "partition": pl.String}
# Objects matched together: one native scan per chunk, bounded in memory.
# Bodies decode to about ten times their size: a 10M-row sparse run's late
# check (732 objects of ~160 kB, 90,868 late keys, the check alone) peaked at
# 258-261 MiB with chunks of up to 32 MiB of bodies (64 objects), 232-236 with
# 4 MiB (~25 objects), 216-221 with 1 MiB, in 0.73-0.83 s, 0.79 s and 1.2-1.4 s.
# A 1M-row run's objects (~16 kB) still go 64 at a time.
CHUNK_OBJECTS = 64
CHUNK_BYTES = 4 << 20
_INDEX = "_row"
# The keys `RunKeys` holds at most (in-memory size, `_frame_bytes`): about
# 600,000 sparse events' keys (56 bytes each: three 16-byte string views,
# their text inline, and the time); a longer run forgets its oldest, which
# only sends their late re-sends to the archive.
RUN_KEYS_BYTES = 32 << 20
# Locally, where a miss costs a read of local files, not requests (daemon/job.py).
LOCAL_RUN_KEYS_BYTES = 4 << 20
# Bytes of one String value's view, beside its text (Arrow's BinaryView layout).
_VIEW_BYTES = 16


def keys_of_records(records: Iterable[bytes]) -> pl.DataFrame:
    """The dedup keys of late or future dead letters' records (each the
    event's NDJSON form, as the counter writes it), one row per record, in
    order (columns `KEY_COLUMNS`); a record that is not such an event gives
    a row of nulls."""
    cores: list[tuple[str | None, ...]] = []
    stamps: list[str | None] = []
    for record in records:
        try:
            value = json.loads(record)
            core = (value["customer_id"], value["event_type"], value["transaction_id"])
            stamp = value["timestamp"]
        except (ValueError, KeyError, TypeError):
            core, stamp = (None, None, None), None
        if not all(isinstance(part, str) for part in core) or not isinstance(stamp, str):
            core, stamp = (None, None, None), None
        cores.append(core)
        stamps.append(stamp)
    frame = pl.DataFrame(cores, schema={name: pl.String for name in CORE_FIELDS}, orient="row")
    times = pl.Series(TIME, stamps, dtype=pl.String).str.to_datetime(
        _STAMP_FORMAT, time_unit="us", time_zone="UTC", strict=False).cast(pl.Int64)
    return frame.with_columns(times)


def keys_frame(keys: Iterable[Key | None]) -> pl.DataFrame:
    """Keys as a frame with the columns of `KEY_COLUMNS` (a None key: nulls)."""
    rows = [key if key is not None else (None, None, None, None) for key in keys]
    return pl.DataFrame(rows, schema=KEY_SCHEMA, orient="row")


def events_frame(events: Sequence[Event]) -> pl.DataFrame:
    return keys_frame(event.dedup_key for event in events)


def _matches(name: str, encoded_prefix: str | None) -> str | None:
    """The format suffix when `name` is an archive object of the partition
    whose file names start with `encoded_prefix` (`part-<encoded>-`), or of
    any partition for None."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            head, _, position = stem.rpartition("-")
            # The whole encoded name must match: the listing prefix of
            # partition "a" also lists the objects of partition "a-1".
            if encoded_prefix is None:
                if head.startswith("part-") and position.isdigit():
                    return suffix
            elif head + "-" == encoded_prefix and position.isdigit():
                return suffix
    return None


class RunKeys:
    """The dedup keys this run counted, per source partition, as long as they
    fit in `max_bytes` (the oldest batches' keys are forgotten first).

    `add` takes every batch the sinks were given. A key here is in the
    partition's archive once the final sync is done: the raw-event writer
    archives every accepted event of every batch once. A partition that
    restarts from its checkpoint replays events the writer already took
    (it skips them), and what the replay accepts anew before that point are
    duplicates of archived keys. A key not here may still be archived (by an
    earlier run, or forgotten), so only "here" answers without the archive."""

    def __init__(self, max_bytes: int = RUN_KEYS_BYTES) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[tuple[str, pl.DataFrame, int]] = deque()  # (partition, keys, size), oldest first
        self._size = 0

    def add(self, batch: CountedBatch) -> None:
        if not len(batch.events):
            return
        events = batch.events
        frame = events.frame if isinstance(events, EventColumns) else events_frame(events)
        # Compacted: a slice of the batch's frame would keep all of its text alive.
        keys = compact_strings(frame.select(KEY_COLUMNS))
        size = _frame_bytes(keys)
        self._frames.append((batch.partition, keys, size))
        self._size += size
        while self._size > self.max_bytes and self._frames:
            self._size -= self._frames.popleft()[2]

    def holds(self, partition: str | None, keys: pl.DataFrame) -> pl.Series:
        """One boolean per row of `keys` (columns `KEY_COLUMNS`): whether
        this run counted that key in `partition`. A row with a null is False."""
        frames = [frame for part, frame, _ in self._frames if part == partition]
        if not frames or not keys.height:
            return pl.Series(_HIT, [False] * keys.height, dtype=pl.Boolean)
        # Frame by frame: one join over all of them (a million keys after a
        # 1M-row run) took 250 MiB more peak RSS than the keys themselves.
        asked = keys.select(KEY_COLUMNS).with_row_index(_INDEX)
        found = pl.concat([asked.join(frame, on=list(KEY_COLUMNS), how="semi").get_column(_INDEX)
                           for frame in frames])
        return asked.get_column(_INDEX).is_in(found.implode()).alias(_HIT)


def _frame_bytes(frame: pl.DataFrame) -> int:
    """The memory a frame holds: polars' estimate counts a String column's
    text but not its 16-byte views, which short keys (a customer id, an
    event type) are mostly made of."""
    strings = sum(1 for dtype in frame.schema.values() if dtype == pl.String)
    return frame.estimated_size() + frame.height * strings * _VIEW_BYTES


def _rows_in(keys: pl.DataFrame, found: pl.DataFrame) -> pl.Series:
    """One boolean per row of `keys`, in order: whether `found` (the same
    `KEY_COLUMNS`) has that row. A row with a null is False (a join never
    matches a null)."""
    marked = found.unique().with_columns(pl.lit(True).alias(_HIT))
    joined = keys.with_row_index(_INDEX).join(marked, on=list(KEY_COLUMNS), how="left")
    return joined.sort(_INDEX)[_HIT].fill_null(False)


class CountedKeys:
    """Answers "already counted?" for keys of one source partition at a time,
    or of any partition (`partition=None`)."""

    def __init__(self, store: ObjectStore, threads: int = 8) -> None:
        self.store = store
        self.threads = threads
        self.objects_read = 0

    def counted(self, partition: str | None, keys: pl.DataFrame, run: RunKeys | None = None) -> pl.Series:
        """One boolean per row of `keys` (columns `KEY_COLUMNS`): whether the
        partition's archive (any partition's, for None) holds that key. A row
        with a null is False. With `run` (call after the run's final sync),
        the keys it holds are answered from it and only the others are read."""
        if not keys.height:
            return pl.Series(_HIT, [], dtype=pl.Boolean)
        keys = keys.select(KEY_COLUMNS).cast(KEY_SCHEMA)  # type: ignore[arg-type]
        known = run.holds(partition, keys) if run is not None and partition is not None else None
        rest = keys.filter(~known) if known is not None else keys
        hours = HOURLY.numbers(rest[TIME].drop_nulls())
        archived = self.archived(partition, sorted(int(h) for h in hours.unique()), rest)
        hits = _rows_in(keys, archived)
        return hits | known if known is not None else hits

    def counted_events(self, partition: str | None, events: Sequence[Event]) -> list[bool]:
        return self.counted(partition, events_frame(events)).to_list()

    def archived(self, partition: str | None, hours: Sequence[int], wanted: pl.DataFrame | None = None) -> pl.DataFrame:
        """The keys the archive holds for `partition` in the given UTC hours
        (hours since the epoch); duplicates of at-least-once delivery kept.
        With `wanted`, only those of its keys: objects are matched a chunk at
        a time as they are read (at most `CHUNK_OBJECTS` objects or
        `CHUNK_BYTES` of bodies), so memory holds a few objects, never the
        whole archive (a 10M-row backfill's late events span every hour of
        it). A chunk's Parquet objects are read and matched by one native
        scan (about 0.3 ms an object instead of 1.5 ms one by one)."""
        if not hours:
            return pl.DataFrame(schema=KEY_SCHEMA)
        found: list[pl.DataFrame] = []
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            listed = list(pool.map(lambda hour: self._objects(partition, hour), hours))
            objects = [item for in_hour in listed for item in in_hour]
            chunk: list[tuple[bytes, str]] = []
            size = 0
            for start in range(0, len(objects), self.threads):  # `threads` gets at a time
                group = objects[start:start + self.threads]
                for body, (_, suffix) in zip(pool.map(lambda item: self.store.get(item[0]), group), group):
                    chunk.append((body, suffix))
                    size += len(body)
                if len(chunk) >= CHUNK_OBJECTS or size >= CHUNK_BYTES:
                    found.extend(self._match(partition, chunk, wanted))
                    chunk, size = [], 0
            found.extend(self._match(partition, chunk, wanted))
        self.objects_read += len(objects)
        return pl.concat(found) if found else pl.DataFrame(schema=KEY_SCHEMA)

    def _match(self, partition: str | None, chunk: list[tuple[bytes, str]],
               wanted: pl.DataFrame | None) -> list[pl.DataFrame]:
        """The archived keys of one chunk of object bodies (only `wanted`'s, if given)."""
        parquet = [body for body, suffix in chunk if suffix == FORMATS["parquet"].suffix]
        frames = [self._ndjson(body) for body, suffix in chunk if suffix != FORMATS["parquet"].suffix]
        lazy = [frame.lazy() for frame in frames]
        if parquet:
            scan = pl.scan_parquet([io.BytesIO(body) for body in parquet], schema=_PARQUET_KEY_SCHEMA,
                                   extra_columns="ignore")
            if partition is not None:
                scan = scan.filter(pl.col("partition") == partition)
            lazy.append(scan.select(*CORE_FIELDS, pl.col("timestamp").cast(pl.Int64).alias(TIME)))
        if not lazy:
            return []
        keys = pl.concat(lazy) if len(lazy) > 1 else lazy[0]
        if wanted is not None:
            keys = keys.join(wanted.lazy(), on=list(KEY_COLUMNS), how="semi")
        frame = keys.collect()
        return [frame] if frame.height else []

    def _objects(self, partition: str | None, hour: int) -> list[tuple[str, str]]:
        """(key, suffix) of the partition's (every partition's, for None)
        archive objects of one hour."""
        first = raw_event_key(partition or "", hour, 0, "")  # …/hour=H/part-<encoded>-000000000000
        prefix = first[: first.rfind("-") + 1] if partition is not None else first[: first.rfind("/") + 1]
        directory, _, name_prefix = prefix.rpartition("/")
        found = []
        for key in self.store.list(prefix):
            suffix = _matches(key[len(directory) + 1:], name_prefix or None)
            if suffix is not None:
                found.append((key, suffix))
        return found

    @staticmethod
    def _ndjson(body: bytes) -> pl.DataFrame:
        lines = gzip.decompress(body)
        if not lines.strip():
            return pl.DataFrame(schema=KEY_SCHEMA)
        frame = pl.read_ndjson(io.BytesIO(lines), schema={**{name: pl.String for name in CORE_FIELDS},
                                                          "timestamp": pl.String})
        return frame.select(*CORE_FIELDS, pl.col("timestamp").str.to_datetime(
            _STAMP_FORMAT, time_unit="us", time_zone="UTC").cast(pl.Int64).alias(TIME))
