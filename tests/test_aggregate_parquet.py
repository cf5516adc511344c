"""Window aggregates as hourly Parquet tables, read back with DuckDB as
docs/store.md tells a reader to, against the independent oracle and `export`."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config.settings import ConfigError, load_settings
from consumers.aggregate_writer import AggregateWriter
from consumers.local_object_store import LocalObjectStore
from consumers.object_keys import encode_name_part
from streams.batches import BatchKind, CountedBatch
from streams.events import WindowCount
from streams.window_counts import WindowCounts
from tests.aggregate_support import exported_counts, reader_rule_totals, rollup_rows, sparse_events
from tests.conftest import run_cli
from tests.oracle import DAY, DEFAULT_ROLLUPS, MINUTE, run_oracle

ROLLUPS = {**DEFAULT_ROLLUPS, "customer_daily": ("customer_id", DAY)}
DAILY = {"RIVULET__ROLLUPS__CUSTOMER_DAILY__KEY": '["customer_id"]', "RIVULET__ROLLUPS__CUSTOMER_DAILY__WINDOW": '"1d"'}
OBJECT_NAME = re.compile(r"part-(?P<partition>.+)-(?P<first>\d{8}T\d{6}Z)(?P<flag>[fp])-[0-9a-f]{16}\.parquet")


def export(data_dir: Path, rollup: str, env: dict | None = None) -> Counter:
    result = run_cli("export", "--rollup", rollup, "--data-dir", str(data_dir), env=env)
    assert result.returncode == 0, result.stderr
    return exported_counts(result.stdout)


def utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """A run over ~40 hours of sparse keys, with a daily rollup added."""
    lines = sparse_events(30_000, hours=40, customers=20_000, seed=3)
    root = tmp_path_factory.mktemp("sparse")
    path = root / "events.csv"
    path.write_text("customer_id,event_type,transaction_id,timestamp\n" + "\n".join(lines) + "\n")
    data_dir = root / "data"
    result = run_cli("run", "--input", str(path), "--data-dir", str(data_dir), "--json", env=DAILY)
    assert result.returncode == 0, result.stderr
    return data_dir, run_oracle(lines, 10 * MINUTE, ROLLUPS)


def test_tables_read_with_hive_types_and_the_documented_columns(sparse_run):
    data_dir, _ = sparse_run
    rows = rollup_rows(data_dir, "customer_hourly")
    types = dict(zip(rows.columns, map(str, rows.types)))
    assert types == {"window_start": "TIMESTAMP WITH TIME ZONE", "customer_id": "VARCHAR", "count": "BIGINT",
                     "final": "BOOLEAN", "partition": "VARCHAR", "dt": "DATE", "hour": "BIGINT"}
    one = next((data_dir / "store" / "aggregates" / "event_type_minutely").rglob("*.parquet"))
    schema = pq.read_schema(one)
    assert schema.names == ["window_start", "event_type", "count", "final", "partition"]
    assert schema.field("window_start").type == pa.timestamp("us", tz="UTC")
    assert pa.types.is_string(schema.field("event_type").type) or pa.types.is_large_string(schema.field("event_type").type)
    assert (schema.field("count").type, schema.field("final").type) == (pa.int64(), pa.bool_())
    assert pq.ParquetFile(one).metadata.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("rollup", ["customer_hourly", "event_type_minutely", "customer_daily"])
def test_one_object_per_hour_holds_every_window_of_that_hour(sparse_run, rollup):
    data_dir, _ = sparse_run
    objects = duckdb.sql(f"""
        SELECT filename, any_value(dt), any_value(hour), min(epoch_us(window_start)), max(epoch_us(window_start)),
               count(DISTINCT window_start), bool_and(final), any_value(partition), count(DISTINCT dt), count(DISTINCT hour)
        FROM read_parquet('{data_dir}/store/aggregates/{rollup}/**/*.parquet', hive_partitioning = true, filename = true)
        GROUP BY filename
    """).fetchall()
    per_hour = Counter()
    windows_per_object = []
    for filename, dt, hour, first_us, last_us, windows, all_final, partition, dts, hours in objects:
        name = OBJECT_NAME.fullmatch(Path(filename).name)
        assert name, filename
        first, last = utc(first_us), utc(last_us)
        assert (dts, hours) == (1, 1)
        # Every window of the object starts in the object's hour.
        assert first.date() == last.date() == dt and first.hour == last.hour == hour
        assert name["first"] == first.strftime("%Y%m%dT%H%M%SZ") and name["flag"] == "f" and all_final
        assert name["partition"] == encode_name_part(partition)
        assert f"/dt={dt.isoformat()}/hour={hour}/" in filename
        per_hour[(dt, hour)] += 1
        windows_per_object.append(windows)
    # `run` flushes once at the end (far below the buffer bound): one object an hour.
    assert set(per_hour.values()) == {1}
    if rollup == "event_type_minutely":
        assert max(windows_per_object) == 60 and len(per_hour) >= 40
    if rollup == "customer_daily":
        assert {hour for _, hour in per_hour} == {0} and len(per_hour) == 3


@pytest.mark.parametrize("rollup", ["customer_hourly", "event_type_minutely", "customer_daily"])
def test_reader_rule_totals_equal_the_oracle_and_export(sparse_run, rollup):
    data_dir, expected = sparse_run
    key_field = ROLLUPS[rollup][0]
    totals = reader_rule_totals(data_dir, rollup, key_field)
    assert totals == Counter(expected.counts[rollup])
    assert export(data_dir, rollup, env=DAILY) == totals


def test_the_documented_duckdb_view_gives_the_reader_rule(sparse_run):
    data_dir, expected = sparse_run
    view = Path(__file__).resolve().parent.parent / "docs" / "store.md"
    sql = re.search(r"```sql\n(CREATE VIEW customer_hourly AS.*?;)\n", view.read_text(), re.S)[1]
    con = duckdb.connect()
    con.execute(sql.replace("'data/store/", f"'{data_dir}/store/"))
    rows = con.execute("SELECT epoch_us(window_start), customer_id, count, final FROM customer_hourly").fetchall()
    assert Counter({(start, key): count for start, key, count, _ in rows}) == Counter(expected.counts["customer_hourly"])
    assert all(final for *_, final in rows)


def test_a_stop_flush_then_the_final_counts_through_a_spool(tmp_path):
    """`consume --drain` writes open windows as provisional; more events later
    close them, and the replay writes them final next to the provisional
    objects. The reader rule gives the final counts; a plain sum would not."""
    first = sparse_events(3_000, hours=1.5, customers=300, seed=4)
    later = [line.replace("2021-03-01T2", "2021-03-02T0") for line in sparse_events(500, hours=0.5, customers=300, seed=5)]
    spool = f"spool:{tmp_path / 'spool'}"
    for part, lines in (("a", first), ("b", later)):
        path = tmp_path / f"{part}.csv"
        path.write_text("\n".join(lines) + "\n")
        produced = run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path))
        assert produced.returncode == 0, produced.stderr
        consumed = run_cli("consume", "--from", spool, "--drain", "1", "--data-dir", str(tmp_path), "--json")
        assert consumed.returncode == 0, consumed.stderr
        if part == "a":
            provisional = rollup_rows(tmp_path, "customer_hourly").filter("NOT final").fetchall()
            assert provisional, "the drain wrote the open hour as provisional counts"
            names = [p.name for p in (tmp_path / "store" / "aggregates").rglob("*.parquet")]
            assert any(OBJECT_NAME.fullmatch(n)["flag"] == "p" for n in names)
    expected = run_oracle(first + later, 10 * MINUTE, DEFAULT_ROLLUPS)
    for rollup, (key_field, _) in DEFAULT_ROLLUPS.items():
        totals = reader_rule_totals(tmp_path, rollup, key_field)
        assert totals == Counter(expected.counts[rollup]), rollup
        assert export(tmp_path, rollup) == totals
    # Both versions of the hour that was open at the first drain are live.
    versions = rollup_rows(tmp_path, "customer_hourly").aggregate(
        "window_start, customer_id, bool_or(final) AS has_final, bool_or(NOT final) AS has_provisional, sum(count) AS naive",
        "window_start, customer_id").filter("has_final AND has_provisional").fetchall()
    assert versions
    naive = Counter({(int(ws.timestamp() * 1e6), key): n for ws, key, *_, n in versions})
    assert any(naive[k] > expected.counts["customer_hourly"][k] for k in naive)


# -- the writer on its own -------------------------------------------------------

START = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z


def counts(rows: list[tuple[int, str, int, bool]], partition: str = "spool:/s") -> WindowCounts:
    return WindowCounts.from_rows("event_type_minutely", ("event_type",), MINUTE, partition,
                                  [WindowCount("event_type_minutely", (k,), s, partition, n, f) for s, k, n, f in rows])


def batch(windows: list[WindowCounts], kind: BatchKind = BatchKind.DATA, watermark_us: int = START + DAY) -> CountedBatch:
    """Windows as the counter hands them; by default its watermark has passed
    their hours (every window of them is final), so a flush writes them."""
    return CountedBatch(windows[0].partition, kind, windows=windows, watermark_us=watermark_us)


def test_a_checkpoint_holds_an_hour_until_it_is_complete_or_holds_the_source_back(tmp_path):
    """A minute rollup's windows close one by one: a checkpoint writes their
    hour when the watermark passes it, or when its rows came before the
    partition's current safe point (they would hold the checkpoint back),
    not at every checkpoint. The floor keeps the checkpoint below the rest."""
    store = LocalObjectStore(tmp_path)
    writer = AggregateWriter(store)
    hour = 60 * MINUTE

    def step(minute: int, safe: int, watermark: int) -> None:
        window = counts([(START + minute * MINUTE, "click", 1 + minute, True)])
        writer.write(CountedBatch("spool:/s", BatchKind.DATA, windows=[window], read=1, safe_position=safe,
                                  watermark_us=watermark))
        writer.flush()

    step(0, 100, START + MINUTE)  # the hour's first event at 100: the oldest open window
    # It came before any safe point was seen (its floor is not known), so it was due at once.
    assert len(list(store.list())) == 1 and writer.pending_floor("spool:/s") is None
    for minute in range(1, 30):  # the safe point stays at 100 while hour 0 is open
        step(minute, 100, START + (minute + 1) * MINUTE)
    assert len(list(store.list())) == 1 and writer.pending_floor("spool:/s") == 100
    step(30, 100, START + hour + MINUTE)  # the watermark passed hour 0: written whole
    assert len(list(store.list())) == 2 and writer.pending_floor("spool:/s") is None
    step(61, 100, START + hour + 2 * MINUTE)  # hour 1's first minute, the safe point still at 100
    assert len(list(store.list())) == 2 and writer.pending_floor("spool:/s") == 100
    step(62, 5_000, START + hour + 3 * MINUTE)  # the safe point moved past hour 1's first rows: due
    assert len(list(store.list())) == 3 and writer.pending_floor("spool:/s") is None
    writer.close()
    assert reader_rule_totals_of(tmp_path) == Counter(
        {(START + m * MINUTE, "click"): 1 + m for m in [*range(31), 61, 62]})


def test_writer_provisional_then_final_then_partial_rebuild(tmp_path):
    store = LocalObjectStore(tmp_path)
    writer = AggregateWriter(store)
    window = START + 5 * MINUTE
    # Running counts of an open window are not written, except at a stop flush.
    writer.write(batch([counts([(window, "click", 2, False)])]))
    writer.flush()
    assert list(store.list()) == []
    writer.write(batch([counts([(window, "click", 3, False)])], BatchKind.EOF))
    writer.flush()
    (provisional,) = store.list()
    assert provisional.endswith(".parquet") and "-20210301T000500Zp-" in provisional
    # The restart finishes the window: a final object next to the provisional one.
    writer.write(batch([counts([(window, "click", 7, True), (window + MINUTE, "click", 1, True)])]))
    writer.flush()
    # A replay that rebuilds the window partially must not replace the complete version.
    writer.write(batch([counts([(window, "click", 4, True), (window + MINUTE, "click", 1, True)])]))
    writer.flush()
    keys = list(store.list())
    assert len(keys) == 3 and all("/dt=2021-03-01/hour=0/" in k for k in keys)
    # The same rows again rewrite the same object.
    writer.write(batch([counts([(window, "click", 7, True), (window + MINUTE, "click", 1, True)])]))
    writer.close()
    assert list(store.list()) == keys
    totals = reader_rule_totals_of(tmp_path)
    assert totals == {(window, "click"): 7, (window + MINUTE, "click"): 1}


def reader_rule_totals_of(root: Path) -> Counter:
    glob = root / "aggregates" / "event_type_minutely" / "**" / "*.parquet"
    rows = duckdb.sql(f"""
        SELECT epoch_us(window_start), event_type, sum(count)::BIGINT FROM (
            SELECT window_start, event_type, partition, max(count) AS count
            FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL)
        GROUP BY ALL""").fetchall()
    return Counter({(s, k): n for s, k, n in rows})


def test_partitions_add_and_hours_split(tmp_path):
    store = LocalObjectStore(tmp_path)
    writer = AggregateWriter(store)
    rows = [(START + i * 7 * MINUTE, "view", 1 + i % 3, True) for i in range(30)]  # 3.5 hours
    writer.write(batch([counts(rows, "shard-1"), counts(rows[:10], "shard/2")]))
    writer.flush()
    hours = Counter(k.split("/")[3] for k in store.list())
    assert hours == {"hour=0": 2, "hour=1": 2, "hour=2": 1, "hour=3": 1}
    assert any("part-shard%2F2-" in k for k in store.list())
    expected = Counter()
    for s, k, n, _ in rows + rows[:10]:
        expected[(s, k)] += n
    assert reader_rule_totals_of(tmp_path) == expected


def test_the_same_rows_give_the_same_objects_whatever_their_batches_and_order(tmp_path):
    rows = [(START + i * 7 * MINUTE, kind, 1 + i % 4, True) for i in range(30) for kind in ("view", "click", "a b")]
    shuffled = rows[::-1][1::2] + rows[::-1][0::2]
    first, second = LocalObjectStore(tmp_path / "1"), LocalObjectStore(tmp_path / "2")
    one = AggregateWriter(first)
    one.write(batch([counts(rows, "shard-1"), counts(rows[:30], "shard-0")]))
    one.close()
    other = AggregateWriter(second)
    other.write(batch([counts(shuffled[:40], "shard-1")]))
    other.write(batch([counts(rows[:30][::-1], "shard-0"), counts(shuffled[40:], "shard-1")]))
    other.close()
    keys = list(first.list())
    assert keys == list(second.list()) and len(keys) == 6  # hours 0-3 of shard-1, 0-1 of shard-0
    assert all(first.get(k) == second.get(k) for k in keys)
    for key in keys:  # each object: its partition's rows of its hour, in (window, key) order
        table = pl.read_parquet(first.get(key))
        partition = "shard-0" if "part-shard-0-" in key else "shard-1"
        hour = int(key.split("/hour=")[1].split("/")[0])
        source = rows[:30] if partition == "shard-0" else rows
        expected = sorted((utc(s), k, n) for s, k, n, _ in source if (s - START) // (60 * MINUTE) == hour)
        assert table.select("window_start", "event_type", "count").rows() == expected
        assert table["partition"].unique().to_list() == [partition]


class CountingStore(LocalObjectStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1
        super().sync()


def test_buffer_bound_writes_early_and_flush_makes_it_durable(tmp_path):
    store = CountingStore(tmp_path)
    writer = AggregateWriter(store, max_buffered_rows=50)
    rows = [(START + i * MINUTE, "view", 1, True) for i in range(40)]
    writer.write(batch([counts(rows)]))
    assert list(store.list()) == [] and writer.pending_floor("spool:/s") == -1  # buffered, from no known safe point
    writer.write(batch([counts([(START + (40 + i) * MINUTE, "view", 1, True) for i in range(20)])]))
    assert len(list(store.list())) == 1 and store.syncs == 0 and len(store.unsynced) == 1
    writer.flush()
    assert store.syncs == 1 and not store.unsynced
    table = pl.read_parquet(tmp_path / next(store.list()))
    assert table.height == 60 and table["window_start"].is_sorted()


@pytest.mark.parametrize("environ, message", [
    ({"RIVULET__AGGREGATES__KEY_TEMPLATE": '"aggregates/{rollup}/dt={dt}/{window}.jsonl"'}, "aggregates.key_template"),
    ({"RIVULET__AGGREGATES__KEY_TEMPLATE": '"../{rollup}"'}, "aggregates.key_template"),
    ({"RIVULET__ROLLUPS__BAD__KEY": '["partition"]'}, "rollups.bad.key"),
    ({"RIVULET__ROLLUPS__DOTS__KEY": '["customer_id"]', "RIVULET__AGGREGATES__KEY_TEMPLATE": '"a/{rollup}/.."'},
     "aggregates.key_template"),
])
def test_bad_aggregate_settings_name_the_key(environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(environ=environ)
    off = {**environ, "RIVULET__AGGREGATES__ENABLED": "false"}
    if "ROLLUPS" in "".join(environ):
        load_settings(environ=off)  # only the aggregate tables need those names
