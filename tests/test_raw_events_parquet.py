"""Raw events as compacted, Hive-safe objects: Parquet by default, gzip NDJSON
on request. The CLI's output is read back by DuckDB with Hive partitioning and
held to the independent oracle."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pytest

from config.settings import ConfigError, load_settings
from consumers.local_object_store import LocalObjectStore
from consumers.raw_event_writer import RawEventWriter, ndjson_lines, raw_event_key, split_by_hour
from streams.batches import BatchKind, CountedBatch
from streams.event_columns import EventColumns
from streams.events import NO_PROPERTIES, Event
from tests.conftest import ROOT, run_cli
from tests.oracle import DEFAULT_ROLLUPS, MINUTE, run_oracle

HOUR_US = 3_600_000_000
T0 = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z
PARTITION = "file:/in put.csv"

# Valid values that broke, or could break, a Hive reader when they were part
# of a key: an `=` (a second partition column), a `/` (a level), a space, a
# percent escape, non-ASCII, look-alikes of the partition columns, quotes.
HOSTILE_TYPES = ["x=y", "Page View", "a/b", "Grüße-漢字", "%41", "..", "dt=2020-01-01", "hour=5", "a,b",
                 'say "hi"', "back\\slash", "click"]
KEY_SHAPE = re.compile(r"events/dt=\d{4}-\d\d-\d\d/hour=(0|[1-9]|1\d|2[0-3])/part-[A-Za-z0-9._%~-]+-\d{12}\.(parquet|jsonl\.gz)")


def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"') else value


def stamp(us: int, offset_minutes: int = 0) -> str:
    from datetime import datetime, timedelta, timezone

    zone = timezone(timedelta(minutes=offset_minutes))
    local = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    return local.astimezone(zone).isoformat(timespec="microseconds")


@pytest.fixture(scope="module")
def hostile_input(tmp_path_factory) -> tuple[Path, list[str]]:
    """Six hours across a midnight, hostile event types, mixed offsets, a few
    duplicates (one re-rendered with another offset), late rows and a
    malformed one."""
    start = T0 - 3 * HOUR_US  # 2021-02-28T21:00Z
    lines = ["customer_id,event_type,transaction_id,timestamp"]
    for i in range(3000):
        t = start + i * 7_200_000 + (i % 13) * 1_000
        etype = HOSTILE_TYPES[i % len(HOSTILE_TYPES)]
        lines.append(f"c{i % 37},{csv_field(etype)},tx{i},{stamp(t, [0, 330, -480][i % 3])}")
        if i % 400 == 399:  # a duplicate, with another offset
            lines.append(f"c{i % 37},{csv_field(etype)},tx{i},{stamp(t, 60)}")
        if i % 700 == 699:  # far behind: late
            lines.append(f"late,click,old{i},{stamp(start)}")
    lines.insert(10, "c1,click,,2021-03-01T00:00:00Z")  # missing field
    path = tmp_path_factory.mktemp("input") / "hostile.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


def run(path: Path, data_dir: Path, env: dict | None = None) -> dict:
    result = run_cli("run", "--config", "config/local.toml", "--data-dir", str(data_dir), "--input", str(path),
                     "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def store_keys(data_dir: Path) -> list[str]:
    store = data_dir / "store"
    return sorted(p.relative_to(store).as_posix() for p in (store / "events").rglob("*") if p.is_file())


def test_duckdb_reads_the_cli_output_as_a_hive_table(hostile_input, tmp_path):
    path, lines = hostile_input
    summary = run(path, tmp_path)
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    assert expected.duplicates and expected.late and expected.malformed
    keys = store_keys(tmp_path)
    assert keys and all(KEY_SHAPE.fullmatch(k) for k in keys), keys

    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{tmp_path}/store/events/**/*.parquet', hive_partitioning = true)")
    types = dict(db.execute("SELECT column_name, column_type FROM (DESCRIBE raw)").fetchall())
    assert types == {"customer_id": "VARCHAR", "event_type": "VARCHAR", "transaction_id": "VARCHAR",
                     "timestamp": "TIMESTAMP WITH TIME ZONE", "partition": "VARCHAR", "position": "BIGINT",
                     "properties": "VARCHAR", "dt": "DATE", "hour": "BIGINT"}
    (rows,) = db.execute("SELECT count(*) FROM raw").fetchone()
    assert rows == summary["valid"] == expected.valid
    # Every value exactly as written, and each event once.
    assert {t for (t,) in db.execute("SELECT DISTINCT event_type FROM raw").fetchall()} == set(HOSTILE_TYPES)
    per_minute = db.execute(
        "SELECT epoch_us(time_bucket(INTERVAL 1 minute, timestamp)), event_type, count(*) FROM raw GROUP BY ALL").fetchall()
    assert Counter({(start, etype): n for start, etype, n in per_minute}) == expected.counts["event_type_minutely"]
    # The partition columns from the path agree with the event time.
    assert db.execute("SELECT count(*) FROM raw WHERE dt <> CAST(timestamp AS DATE) OR hour <> hour(timestamp)"
                      ).fetchone() == (0,)
    assert db.execute("SELECT min(dt), max(dt), count(DISTINCT (dt, hour)) FROM raw").fetchone()[2] == 6
    from producers.file_source import file_partition  # a file's partition is its content's digest

    assert db.execute("SELECT DISTINCT partition FROM raw").fetchall() == [(file_partition(path),)]
    assert db.execute("SELECT count(*) FROM raw WHERE properties IS NOT NULL").fetchone() == (0,)

    # Compacted: one object per hour of this single partition.
    assert len(keys) == 6


def test_a_rerun_rewrites_the_same_objects(hostile_input, tmp_path):
    path, _ = hostile_input
    run(path, tmp_path)
    first = {k: (tmp_path / "store" / k).read_bytes() for k in store_keys(tmp_path)}
    run(path, tmp_path)
    assert {k: (tmp_path / "store" / k).read_bytes() for k in store_keys(tmp_path)} == first


def test_the_ndjson_gzip_option_writes_the_wire_format_under_the_same_layout(hostile_input, tmp_path):
    path, _ = hostile_input
    parquet_dir, ndjson_dir = tmp_path / "parquet", tmp_path / "ndjson"
    run(path, parquet_dir)
    run(path, ndjson_dir, env={"RIVULET__RAW_EVENTS__FORMAT": '"ndjson-gzip"'})
    ndjson_keys = store_keys(ndjson_dir)
    assert [k.removesuffix(".jsonl.gz") for k in ndjson_keys] == [k.removesuffix(".parquet") for k in store_keys(parquet_dir)]

    from_ndjson = Counter()
    for key in ndjson_keys:
        for line in gzip.decompress((ndjson_dir / "store" / key).read_bytes()).decode().splitlines():
            record = json.loads(line)
            assert list(record) == ["v", "customer_id", "event_type", "transaction_id", "timestamp"]
            from_ndjson[(record["customer_id"], record["event_type"], record["transaction_id"], record["timestamp"])] += 1
    frame = pl.read_parquet(f"{parquet_dir}/store/events/**/*.parquet", hive_partitioning=False)
    stamps = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
    from_parquet = Counter(zip(frame["customer_id"], frame["event_type"], frame["transaction_id"], stamps))
    assert from_ndjson == from_parquet and max(from_ndjson.values()) == 1


def test_ndjson_input_keeps_properties_in_both_formats(tmp_path):
    records = [
        {"customer_id": "c1", "event_type": "page_view", "transaction_id": "t1", "timestamp": "2021-03-01T04:00:00Z",
         "url": "https://x/?q=\"1\"&é", "zeta": [1, 2], "alpha": {"nested": None}},
        {"customer_id": "c2", "event_type": "click", "transaction_id": "t2", "timestamp": "2021-03-01T04:00:01.5Z"},
    ]
    source = tmp_path / "in.ndjson"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for fmt in ("parquet", "ndjson-gzip"):
        data = tmp_path / fmt
        result = run_cli("run", "--format", "ndjson", "--data-dir", str(data), "--input", str(source),
                         env={"RIVULET__RAW_EVENTS__FORMAT": f'"{fmt}"'})
        assert result.returncode == 0, result.stderr
        (key,) = store_keys(data)
        body = (data / "store" / key).read_bytes()
        if fmt == "parquet":
            frame = pl.read_parquet(body)
            got = [json.loads(p) if p else {} for p in frame["properties"]]
        else:
            got = [{k: v for k, v in json.loads(line).items()
                    if k not in ("v", "customer_id", "event_type", "transaction_id", "timestamp")}
                   for line in gzip.decompress(body).splitlines()]
        assert got == [{"url": records[0]["url"], "zeta": [1, 2], "alpha": {"nested": None}}, {}]


def test_config_refuses_an_unknown_format_and_the_old_key_template(tmp_path):
    with pytest.raises(ConfigError, match=r"raw_events\.format: unknown format 'orc', expected one of parquet, ndjson-gzip"):
        load_settings(ROOT / "config/local.toml", environ={"RIVULET__RAW_EVENTS__FORMAT": '"orc"'})
    with pytest.raises(ConfigError, match=r"raw_events\.key_template: no longer supported, the raw event layout is fixed"):
        load_settings(ROOT / "config/local.toml", environ={"RIVULET__RAW_EVENTS__KEY_TEMPLATE": '"users/{customer_id}"'})
    with pytest.raises(ConfigError, match=r"raw_events\.max_byte: unknown key"):
        load_settings(ROOT / "config/local.toml", environ={"RIVULET__RAW_EVENTS__MAX_BYTE": "1"})
    old = tmp_path / "old.toml"
    old.write_text((ROOT / "config/local.toml").read_text().replace(
        "[raw_events]\n", '[raw_events]\nkey_template = "events/event_type={event_type}/part-{partition}-{first_position}.jsonl.gz"\n'))
    result = run_cli("run", "--config", str(old), "--data-dir", str(tmp_path / "d"), "--input", str(ROOT / "samples/events_sample.csv"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "layout is fixed now" in result.stderr
    assert load_settings(ROOT / "config/aws.toml").raw_events == load_settings(ROOT / "config/local.toml").raw_events


# -- the writer, unit by unit ---------------------------------------------------


class CountingStore(LocalObjectStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.syncs = 0
        self.fail_puts = 0

    def put(self, key: str, body: bytes) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            raise OSError("store down")
        super().put(key, body)

    def sync(self) -> None:
        self.syncs += 1
        super().sync()


def events(positions: range, t: int = T0, etype: str = "click") -> EventColumns:
    return EventColumns.from_events(PARTITION, [
        Event(f"c{p}", etype, f"t{p}", t + p, NO_PROPERTIES, PARTITION, p) for p in positions])


def batch(positions: range, t: int = T0) -> CountedBatch:
    return CountedBatch(PARTITION, BatchKind.DATA, events=events(positions, t))


def arrow_bytes(columns: EventColumns) -> int:
    """The bytes the writer buffers for these events, as Arrow counts its
    buffers (polars' own estimate of the frame leaves the strings' offsets
    out)."""
    return columns.to_frame().to_arrow(compat_level=pl.CompatLevel.oldest()).nbytes


def rows_of(store: LocalObjectStore, key: str) -> list[int]:
    return pl.read_parquet(store.get(key))["position"].to_list()


def test_objects_roll_by_size(tmp_path):
    store = CountingStore(tmp_path)
    one_batch = arrow_bytes(events(range(1, 11)))
    writer = RawEventWriter(store, max_bytes=int(2.5 * one_batch), max_age_seconds=3600)
    for first in (1, 11):
        writer.write(batch(range(first, first + 10)))
    assert list(store.list()) == [] and writer.pending_floor(PARTITION) == 1
    writer.write(batch(range(21, 31)))  # the third batch passes max_bytes: one object of all three
    (key,) = store.list()
    assert key == raw_event_key(PARTITION, T0 // HOUR_US, 1, ".parquet")
    assert key == "events/dt=2021-03-01/hour=0/part-file%3A%2Fin%20put.csv-000000000001.parquet"
    assert rows_of(store, key) == list(range(1, 31))
    assert writer.pending_floor(PARTITION) is None
    writer.write(batch(range(31, 41)))
    assert writer.pending_floor(PARTITION) == 31


def test_objects_roll_by_age(tmp_path):
    now = [0.0]
    store = CountingStore(tmp_path)
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=60, clock=lambda: now[0])
    writer.write(batch(range(1, 4)))
    now[0] = 59.9
    writer.write(batch(range(4, 6)))  # joins the open object: its age counts from its first rows
    writer.write(CountedBatch(PARTITION, BatchKind.IDLE))
    assert list(store.list()) == [] and writer.pending_floor(PARTITION) == 1
    now[0] = 60.0
    writer.write(CountedBatch(PARTITION, BatchKind.IDLE))
    (key,) = store.list()
    assert rows_of(store, key) == [1, 2, 3, 4, 5] and writer.pending_floor(PARTITION) is None
    assert store.syncs == 0  # durability is the checkpoint's, once per flush


def test_pending_floor_is_the_lowest_buffered_position_per_partition(tmp_path):
    store = CountingStore(tmp_path)
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600, max_open_objects=2)
    writer.write(batch(range(10, 12), t=T0 + HOUR_US))
    writer.write(batch(range(12, 14), t=T0))  # a straggler of the hour before: a second object, higher position
    other = CountedBatch("other", BatchKind.DATA, events=EventColumns.from_events("other", [
        Event("c", "click", "t", T0, NO_PROPERTIES, "other", 3)]))
    writer.write(other)  # a third open object: the oldest opened (hour 1, from 10) is written
    assert [k.split("/")[2] for k in store.list()] == ["hour=1"]
    assert writer.pending_floor(PARTITION) == 12 and writer.pending_floor("other") == 3
    assert writer.pending_floor("nobody") is None
    writer.flush()  # a checkpoint: the buffers stay
    assert writer.pending_floor(PARTITION) == 12 and store.syncs == 1
    store.fail_puts = 1
    with pytest.raises(OSError):
        writer.close()
    assert writer.pending_floor(PARTITION) == 12  # not dropped before the store has it
    writer.close()
    assert writer.pending_floor(PARTITION) is None and writer.pending_floor("other") is None
    assert store.syncs == 2 and len(list(store.list())) == 3


def test_one_batch_over_several_hours_is_split_by_columns(tmp_path):
    frame = events(range(1, 7)).to_frame().with_columns(
        pl.Series("event_time_us", [T0, T0 + HOUR_US, T0 + 5, T0 - 1, T0 + HOUR_US + 1, T0 + 2 * HOUR_US]))
    parts = split_by_hour(frame)
    hour = T0 // HOUR_US
    assert [(h, p["position"].to_list()) for h, p in parts] == [
        (hour, [1, 3]), (hour + 1, [2, 5]), (hour - 1, [4]), (hour + 2, [6])]
    assert all(p.columns == frame.columns for _, p in parts)


def test_buffered_bytes_are_bounded_by_writing_the_largest(tmp_path):
    store = CountingStore(tmp_path)
    small = arrow_bytes(events(range(1, 3)))
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600, max_buffered_bytes=25 * small)
    writer.write(batch(range(1, 3), t=T0))
    writer.write(batch(range(3, 60), t=T0 + HOUR_US))
    (key,) = store.list()
    assert "/hour=1/" in key and writer.pending_floor(PARTITION) == 1


def test_ndjson_lines_are_the_wire_format(tmp_path):
    hostile = ['a"b', "back\\slash", "nl\nx\r\t", "\x00\x01\x1f\x7f", "\u2028\u2029", "é漢字😀", "x=y", "%41", "/"]
    plain = [Event(v, v, v, T0 + i * 1_234_567 - 10**15 * (i == 3), NO_PROPERTIES, PARTITION, i)
             for i, v in enumerate(hostile)]
    with_properties = [Event("c", "page_view", "t", T0, {"url": 'u"\n', "n": [1, 2], "a": {"b": None}}, PARTITION, 99)]
    all_events = plain + with_properties
    lines = ndjson_lines(EventColumns.from_events(PARTITION, all_events).to_frame()).encode().splitlines(keepends=True)
    assert lines[:len(plain)] == [e.to_json_line() for e in plain]  # byte for byte
    assert [json.loads(line) for line in lines] == [e.to_record() for e in all_events]

    store = CountingStore(tmp_path)
    writer = RawEventWriter(store, format="ndjson-gzip", max_bytes=1 << 30, max_age_seconds=3600)
    writer.write(CountedBatch(PARTITION, BatchKind.DATA, events=plain[:3]))  # a plain list of events works too
    writer.close()
    (key,) = store.list()
    assert key.endswith("-000000000000.jsonl.gz")
    assert gzip.decompress(store.get(key)).splitlines(keepends=True) == [e.to_json_line() for e in plain[:3]]
    with pytest.raises(ValueError, match="unknown raw event format"):
        RawEventWriter(store, format="csv")


def test_statistics_are_written_for_the_columns_readers_prune_by(tmp_path):
    """Times and positions carry min/max statistics, so a reader can skip
    objects and row groups by them; the strings, which span nearly their
    whole range in any object, do not."""
    import io

    import pyarrow.parquet as pq

    store = CountingStore(tmp_path)
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600)
    writer.write(batch(range(7, 17)))
    writer.close()
    (key,) = store.list()
    group = pq.ParquetFile(io.BytesIO(store.get(key))).metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert (columns["position"].statistics.min, columns["position"].statistics.max) == (7, 16)
    assert columns["timestamp"].statistics.has_min_max
    assert all(not columns[name].is_stats_set for name in ("customer_id", "event_type", "transaction_id"))
