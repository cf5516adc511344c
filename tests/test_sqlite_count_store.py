"""The SQLite count store taking frames: bulk key encoding (exactly
json.dumps), the max-upsert contract against a model, one transaction per
commit, a transaction SQLite drops, and `CountSink` driving it."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.count_sink import CountSink
from consumers import sqlite_count_store
from consumers.sqlite_count_store import PAGE_BYTES, SqliteCountStore, encode_key, key_column, read_store_status
from streams.batches import BatchKind, CountedBatch
from streams.events import WindowCount
from streams.window_counts import WindowCounts
from tests.count_support import as_frames

pytestmark = pytest.mark.timeout(120)

H = 3_600_000_000
T0 = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z

# Any text a polars String can hold: everything but lone surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
NASTY = st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\n", "\t", "\u2028", "😀", ",", "[", "]", '\\"', "a", ""])
VALUE = st.one_of(TEXT, st.lists(NASTY, max_size=4).map("".join))


def committed_rows(path: Path) -> dict[tuple, tuple[int, int]]:
    """What a second connection sees."""
    with sqlite3.connect(path) as other:
        rows = other.execute("SELECT rollup, key, window_start, partition, count, final FROM window_counts").fetchall()
    return {(r, tuple(json.loads(k)), s, p): (c, f) for r, k, s, p, c, f in rows}


# -- keys -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3).flatmap(lambda n: st.lists(st.tuples(*[VALUE] * n), min_size=1, max_size=20)))
def test_keys_are_encoded_exactly_as_json_dumps(keys: list[tuple[str, ...]]) -> None:
    fields = tuple(f"k{i}" for i in range(len(keys[0])))
    columns = {f: [key[i] for key in keys] for i, f in enumerate(fields)} or {"x": [0] * len(keys)}
    frame = pl.DataFrame(columns, schema={f: pl.String for f in fields} or None)
    encoded = frame.select(key_column(fields))["key"].to_list()
    assert encoded == [json.dumps(list(key), ensure_ascii=False, separators=(",", ":")) for key in keys]
    assert encoded == [encode_key(key) for key in keys]


def test_null_key_values_encode_as_json_null() -> None:
    frame = pl.DataFrame({"a": ["x", None], "b": [None, 'q"']})
    assert frame.select(key_column(("a", "b"), nullable=("a", "b")))["key"].to_list() == [
        encode_key(("x", None)), encode_key((None, 'q"'))]  # type: ignore[arg-type]


# -- the contract against a model -------------------------------------------

COUNT = st.builds(
    WindowCount,
    rollup=st.sampled_from(["r", "s"]),
    key=st.one_of(st.tuples(VALUE), st.tuples(st.sampled_from(["a", 'b"', "c\\"]), VALUE)),
    window_start_us=st.sampled_from([T0 - 2 * H, T0, T0 + H, T0 + 5 * H, -H]),
    partition=st.sampled_from(["p0", "p1", "kinesis:s/shardId-1"]),
    count=st.integers(0, 30),
    final=st.booleans(),
)
# ("upsert", counts) | ("commit",) | ("replay", i): upsert the i-th batch again
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(COUNT, max_size=15)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("replay"), st.integers(0, 50)),
    ),
    max_size=25,
)


def _apply(model: dict, counts: list[WindowCount]) -> None:
    for c in counts:
        ident = (c.rollup, c.key, c.window_start_us, c.partition)
        old_count, old_final = model.get(ident, (0, 0))
        model[ident] = (max(old_count, c.count), max(old_final, int(c.final)))


def _check(store: SqliteCountStore, path: Path, committed: dict) -> None:
    assert committed_rows(path) == committed
    for rollup in ("r", "s"):
        sums: dict[tuple[int, tuple], int] = {}
        for (r, key, start, _), (count, _) in committed.items():
            if r == rollup:
                sums[(start, key)] = sums.get((start, key), 0) + count
        assert list(store.export(rollup)) == sorted((s, k, n) for (s, k), n in sums.items())
        for key in {k for _, k in sums}:
            assert store.total(rollup, key) == sum(n for (_, k), n in sums.items() if k == key)
            expected = sorted((s, n) for (s, k), n in sums.items() if k == key and T0 - H <= s < T0 + 5 * H and n)
            assert store.buckets(rollup, key, T0 - H, T0 + 5 * H) == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.sampled_from([(1, 1), (4, 2), (sqlite_count_store.WRITE_ROWS, sqlite_count_store.STATEMENT_ROWS)]))
def test_the_store_keeps_the_max_per_window_and_partition_like_the_model(ops: list[tuple], sizes: tuple) -> None:
    """`sizes`: windows a write waits for, and per statement (tiny ones write
    before the commit, in passes of several statements)."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_count_store, "WRITE_ROWS", sizes[0])
        patch.setattr(sqlite_count_store, "STATEMENT_ROWS", sizes[1])
        path = Path(tmp) / "counts.sqlite3"
        store = SqliteCountStore(path)
        current: dict = {}
        committed: dict = {}
        batches: list[list[WindowCount]] = []
        try:
            for op in ops:
                if op[0] == "upsert":
                    batches.append(op[1])
                    store.upsert(as_frames(op[1]))
                    _apply(current, op[1])
                elif op[0] == "replay" and batches:
                    again = batches[op[1] % len(batches)]
                    store.upsert(as_frames(again))
                    _apply(current, again)
                elif op[0] == "commit":
                    store.commit()
                    committed = dict(current)
                    _check(store, path, committed)
                # Nothing is visible before a commit.
                assert committed_rows(path) == committed
            store.commit()
            _check(store, path, current)
            # Everything again, in one call: a replay changes nothing.
            store.upsert(as_frames([c for batch in batches for c in batch]))
            store.commit()
            _check(store, path, current)
        finally:
            store.close()


def test_a_second_connection_sees_nothing_before_commit_and_everything_after(tmp_path: Path) -> None:
    path = tmp_path / "counts.sqlite3"
    store = SqliteCountStore(path)
    counts = [WindowCount("r", (f"c{i}",), T0 + (i % 3) * H, "p", i + 1, i % 2 == 0) for i in range(500)]
    store.upsert(as_frames(counts[:300]))
    store.upsert(as_frames(counts[300:]))
    assert committed_rows(path) == {}
    assert store.total("r", ("c7",)) == 0 and list(store.export("r")) == []  # queries read what is committed
    store.commit()
    assert committed_rows(path) == {("r", c.key, c.window_start_us, "p"): (c.count, int(c.final)) for c in counts}
    assert store.total("r", ("c7",)) == 8
    store.commit()  # nothing open: nothing to do
    store.close()


def test_close_commits_what_is_open(tmp_path: Path) -> None:
    store = SqliteCountStore(tmp_path / "counts.sqlite3")
    store.upsert(as_frames([WindowCount("r", ("c",), T0, "p", 3, True)]))
    store.close()
    assert committed_rows(tmp_path / "counts.sqlite3") == {("r", ("c",), T0, "p"): (3, 1)}


def test_a_commit_the_disk_refuses_is_retried_with_everything_since_the_last_commit(tmp_path: Path) -> None:
    """SQLITE_FULL rolls the whole transaction back; the retried commit
    (RetryingCountStore) must not commit a transaction missing upserts."""
    path = tmp_path / "counts.sqlite3"
    store = SqliteCountStore(path)
    first = [WindowCount("r", (f"a{i}",), T0, "p", i + 1, True) for i in range(50)]
    second = [WindowCount("r", (f"b{i}" * 40,), T0, "p", i + 1, True) for i in range(2000)]
    store.upsert(as_frames(first))
    store.upsert(as_frames(second))
    store._db.execute("PRAGMA max_page_count=3")  # the disk is "full"
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.commit()
    assert not store._db.in_transaction
    assert committed_rows(path) == {}
    store._db.execute("PRAGMA max_page_count=1073741823")
    store.commit()  # the retry
    assert len(committed_rows(path)) == 2050
    store.close()


def test_an_upsert_written_into_a_transaction_sqlite_rolls_back_is_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upserts are written before the commit once enough wait (here every
    one): when SQLite rolls that transaction back, by itself or on the
    failed write of a later upsert, whose retry (RetryingCountStore) follows,
    the commit still holds every upsert since the last commit, once."""
    monkeypatch.setattr(sqlite_count_store, "WRITE_ROWS", 1)
    path = tmp_path / "counts.sqlite3"
    store = SqliteCountStore(path)
    first = [WindowCount("r", (f"a{i}",), T0, "p", i + 1, True) for i in range(50)]
    second = [WindowCount("r", (f"b{i}" * 40,), T0, "p", i + 1, True) for i in range(2000)]
    third = [WindowCount("r", ("c",), T0, "p", 7, False)]
    store.upsert(as_frames(first))
    assert store._db.in_transaction  # written, not committed
    store._db.execute("PRAGMA max_page_count=3")  # the disk is "full"
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.upsert(as_frames(second))
    assert not store._db.in_transaction  # SQLite dropped the first upsert too
    store._db.execute("PRAGMA max_page_count=1073741823")
    store.upsert(as_frames(second))  # the retry
    assert sum(len(part) for part in store._pending) == 2050  # the failed call left nothing behind
    store._db.execute("ROLLBACK")  # as SQLite does on an I/O error
    store.upsert(as_frames(third))
    store.commit()
    assert committed_rows(path) == {**{("r", c.key, T0, "p"): (c.count, 1) for c in first + second},
                                    ("r", ("c",), T0, "p"): (7, 0)}
    assert len(store._pending) == 0
    store.close()


# As SQLite does on an I/O error: the write fails, and the whole transaction
# is rolled back (a trigger on the store's own connection, through SQLite).
_ROLL_BACK_THE_WRITE = ("CREATE TEMP TRIGGER roll_back BEFORE INSERT ON main.counts "
                        "BEGIN SELECT RAISE(ROLLBACK, 'injected I/O error'); END")


@pytest.mark.parametrize("write_rows", [1, sqlite_count_store.WRITE_ROWS])
def test_ids_given_in_a_transaction_sqlite_rolled_back_are_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_rows: int) -> None:
    """The ids the store gave new keys and partitions vanish with the rollback;
    another process may give the same ids to its own keys before the retry."""
    monkeypatch.setattr(sqlite_count_store, "WRITE_ROWS", write_rows)
    path = tmp_path / "counts.sqlite3"
    store = SqliteCountStore(path)
    store.upsert(as_frames([WindowCount("r", ("kept",), T0, "p0", 1, True)]))
    store.commit()
    batch = as_frames([WindowCount("r", ("a",), T0, "p1", 2, True), WindowCount("s", ("b",), T0, "p1", 3, True)])
    store._db.execute(_ROLL_BACK_THE_WRITE)
    # Ids given to ("a",), ("b",) and p1, then rolled back: by the write of
    # the upsert itself (one window is enough), else by the commit's.
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        store.upsert(batch)
        assert write_rows > 1
        store.commit()
    assert not store._db.in_transaction
    store._db.execute("DROP TRIGGER temp.roll_back")
    with sqlite3.connect(path) as other:  # takes the ids the rolled-back keys had
        other.execute("INSERT INTO series (rollup, key) VALUES ('r', '[\"x\"]'), ('s', '[\"y\"]')")
        other.execute("INSERT INTO partitions (name) VALUES ('q')")
    other.close()
    if write_rows == 1:
        store.upsert(batch)  # the failed call's retry (RetryingCountStore)
    store.upsert(as_frames([WindowCount("r", ("a",), T0 + H, "p1", 4, False)]))
    store.commit()
    assert committed_rows(path) == {
        ("r", ("kept",), T0, "p0"): (1, 1),
        ("r", ("a",), T0, "p1"): (2, 1),
        ("s", ("b",), T0, "p1"): (3, 1),
        ("r", ("a",), T0 + H, "p1"): (4, 0),
    }
    assert store.total("r", ("x",)) == 0 and store.total("r", ("a",)) == 6
    store.close()


# What an earlier version wrote: one table, the texts in every row.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS window_counts (
    rollup       TEXT    NOT NULL,
    key          TEXT    NOT NULL,  -- JSON array of the key field values
    window_start INTEGER NOT NULL,  -- UTC epoch microseconds
    partition    TEXT    NOT NULL,  -- source partition: a file, a spool, a shard
    count        INTEGER NOT NULL,
    final        INTEGER NOT NULL,
    PRIMARY KEY (rollup, key, window_start, partition)
) WITHOUT ROWID;
"""


def test_keys_written_by_earlier_versions_are_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "counts.sqlite3"
    key = ('q"u\\o\x01te', "ü😀")
    file_partition = "file:sha256:" + "ab" * 32
    old_rows = {  # (rollup, key, start, partition): (count, final)
        ("r", key, T0, "p"): (5, 0),
        ("r", key, T0 + H, file_partition): (1, 1),
        ("r", ("other",), T0, "p"): (2, 1),
        ("s", key, T0, file_partition): (7, 1),
        ("s", (), T0 - H, "p"): (3, 0),
    }
    with sqlite3.connect(path) as old:  # as the per-window json.dumps store wrote it
        old.executescript(OLD_SCHEMA)
        old.executemany("INSERT INTO window_counts VALUES (?, ?, ?, ?, ?, ?)", [
            (r, json.dumps(list(k), ensure_ascii=False, separators=(",", ":")), s, p, c, f)
            for (r, k, s, p), (c, f) in old_rows.items()])
    old.close()
    before = read_store_status(path)  # `status` reads a file no new version has opened
    assert before == [("file:sha256:" + "ab" * 32, 2, 0, T0 + H), ("p", 3, 2, T0)]

    store = SqliteCountStore(path)
    assert committed_rows(path) == old_rows
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT type FROM sqlite_master WHERE name = 'window_counts'").fetchall() == [("view",)]
    other.close()
    assert read_store_status(path) == before
    assert store.total("r", key) == 6 and store.total("s", key) == 7 and store.total("s", ()) == 3
    assert store.buckets("r", key, T0, T0 + 2 * H) == [(T0, 5), (T0 + H, 1)]
    assert list(store.export("r")) == [(T0, ("other",), 2), (T0, key, 5), (T0 + H, key, 1)]

    store.upsert(as_frames([WindowCount("r", key, T0, "p", 4, True), WindowCount("r", key, T0 + 2 * H, "p", 2, False),
                            WindowCount("s", key, T0, file_partition, 9, True)]))
    store.commit()
    store.close()
    expected = dict(old_rows)
    expected[("r", key, T0, "p")] = (5, 1)  # never lowered, final now
    expected[("r", key, T0 + 2 * H, "p")] = (2, 0)
    expected[("s", key, T0, file_partition)] = (9, 1)
    assert committed_rows(path) == expected
    store = SqliteCountStore(path)  # opened again: nothing left to migrate
    assert committed_rows(path) == expected and store.total("r", key) == 8
    # An existing file keeps its page size (SQLite's default when it was made).
    assert store._db.execute("PRAGMA page_size").fetchone() == (4096,)
    store.close()


def test_a_new_file_has_the_larger_pages(tmp_path: Path) -> None:
    store = SqliteCountStore(tmp_path / "counts.sqlite3")
    store.upsert(as_frames([WindowCount("r", ("c",), T0, "p", 3, True)]))
    store.close()
    with sqlite3.connect(tmp_path / "counts.sqlite3") as db:
        assert db.execute("PRAGMA page_size").fetchone() == (PAGE_BYTES,) != (4096,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_two_stores_writing_one_file(tmp_path: Path) -> None:
    """Each gives ids to keys the other already has: the same rows as one
    store would write."""
    path = tmp_path / "counts.sqlite3"
    first, second = SqliteCountStore(path), SqliteCountStore(path)
    model: dict = {}
    steps = [
        (first, [WindowCount("r", ("a",), T0, "p", 1, True), WindowCount("r", ("b",), T0, "p", 2, True)]),
        (second, [WindowCount("r", ("b",), T0, "q", 3, True), WindowCount("r", ("c",), T0, "q", 4, True)]),
        (first, [WindowCount("r", ("c",), T0 + H, "p", 5, False), WindowCount("r", ("d",), T0, "q", 6, True)]),
        (second, [WindowCount("r", ("a",), T0, "p", 7, True), WindowCount("r", ("d",), T0, "q", 1, False),
                  WindowCount("s", ("a",), T0, "q", 8, True)]),
        (first, [WindowCount("s", ("a",), T0, "q", 2, True), WindowCount("r", ("e",), T0, "p", 9, True)]),
    ]
    for store, counts in steps:
        store.upsert(as_frames(counts))
        store.commit()
        _apply(model, counts)
        assert committed_rows(path) == model
    for store in (first, second):
        assert store.total("r", ("a",)) == 7 and store.total("r", ("b",)) == 5 and store.total("r", ("d",)) == 6
        assert store.buckets("r", ("c",), T0, T0 + 2 * H) == [(T0, 4), (T0 + H, 5)]
    with sqlite3.connect(path) as other:  # one id per key, one per partition
        assert other.execute("SELECT COUNT(*), COUNT(DISTINCT rollup || key) FROM series").fetchone() == (6, 6)
        assert other.execute("SELECT name FROM partitions ORDER BY name").fetchall() == [("p",), ("q",)]
    other.close()
    first.close()
    second.close()


def test_opening_the_store_does_not_wait_for_a_writers_open_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`query` and `export` open the store while a job writes."""
    monkeypatch.setattr(sqlite_count_store, "WRITE_ROWS", 1)  # written at once, into a transaction left open
    path = tmp_path / "counts.sqlite3"
    writer = SqliteCountStore(path)
    writer.upsert(as_frames([WindowCount("r", ("a",), T0, "p", 1, True)]))
    writer.commit()
    writer.upsert(as_frames([WindowCount("r", ("a",), T0 + H, "p", 2, True)]))
    assert writer._db.in_transaction
    started = time.monotonic()
    reader = SqliteCountStore(path)
    assert time.monotonic() - started < 5  # the lock's timeout is 30 s
    assert reader.total("r", ("a",)) == 1
    reader.close()
    writer.close()


def test_the_id_cache_restarts_past_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_count_store, "KNOWN_SERIES_MAX", 5)
    path = tmp_path / "counts.sqlite3"
    store = SqliteCountStore(path)
    model: dict = {}
    for hour in range(6):
        counts = [WindowCount("r", (f"c{(hour * 3 + i) % 11}",), T0 + hour * H, "p", hour + i, True) for i in range(4)]
        store.upsert(as_frames(counts))
        store.commit()
        _apply(model, counts)
        assert committed_rows(path) == model
        assert store._series["r"].height <= 5
    store.close()


def test_queries_run_while_a_job_writes(tmp_path: Path) -> None:
    store = SqliteCountStore(tmp_path / "counts.sqlite3")
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def query() -> None:
        try:
            while not stop.is_set():
                seen.append(store.total("r", ("c1",)))
                store.buckets("r", ("c1",), T0, T0 + 1000 * H)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    reader = threading.Thread(target=query)
    reader.start()
    try:
        for hour in range(200):
            store.upsert(as_frames([WindowCount("r", (f"c{i}",), T0 + hour * H, "p", 1, True) for i in range(50)]))
            if hour % 20 == 19:
                store.commit()
    finally:
        stop.set()
        reader.join()
    store.commit()
    assert not errors
    assert seen == sorted(seen)  # committed counts only grow
    assert store.total("r", ("c1",)) == 200
    store.close()


# -- CountSink --------------------------------------------------------------


class RecordingStore:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def upsert(self, windows) -> None:
        self.calls.append(("upsert", [len(w) for w in windows]))

    def commit(self) -> None:
        self.calls.append(("commit",))


def _batch(counts: list[WindowCount]) -> CountedBatch:
    return CountedBatch("p", BatchKind.DATA, windows=as_frames(counts))


def test_count_sink_upserts_frames_and_commits_at_every_flush() -> None:
    store = RecordingStore()
    now = [0.0]
    sink = CountSink(store, commit_interval=10, clock=lambda: now[0])  # type: ignore[arg-type]
    sink.write(_batch([WindowCount("r", ("a",), T0, "p", 2, True), WindowCount("r", ("b",), T0, "p", 1, False)]))
    sink.write(_batch([]))  # nothing: no call
    assert store.calls == [("upsert", [2])] and sink.windows_written == 1
    sink.flush()
    assert store.calls[-1] == ("commit",)
    now[0] = 11.0  # no checkpoint for a while (a file run): the sink commits by itself
    sink.write(_batch([WindowCount("r", ("a",), T0 + H, "p", 2, True)]))
    assert store.calls[-2:] == [("upsert", [1]), ("commit",)]
    sink.close()
    assert store.calls[-1] == ("commit",)


def test_count_sink_commits_before_the_open_transaction_grows_too_large() -> None:
    store = RecordingStore()
    sink = CountSink(store, max_uncommitted=3, clock=lambda: 0.0)  # type: ignore[arg-type]
    sink.write(_batch([WindowCount("r", (k,), T0, "p", 1, True) for k in "ab"]))
    assert ("commit",) not in store.calls
    sink.write(_batch([WindowCount("r", (k,), T0, "p", 1, True) for k in "cd"]))
    assert store.calls[-1] == ("commit",)


def test_frames_of_many_rollups_and_partitions_in_one_call(tmp_path: Path) -> None:
    store = SqliteCountStore(tmp_path / "counts.sqlite3")
    frames = [
        WindowCounts.from_rows("r", ("customer_id",), H, "p0", [WindowCount("r", ("c",), T0, "p0", 2, True)]),
        WindowCounts.from_rows("r", ("customer_id",), H, "p1", [WindowCount("r", ("c",), T0, "p1", 3, True)]),
        WindowCounts.from_rows("u", ("user", "url"), H, "p0", [WindowCount("u", ("e", "http://x"), T0, "p0", 4, False)]),
        WindowCounts.from_rows("u", ("user", "url"), H, "p0", []),
    ]
    store.upsert(frames)
    store.commit()
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0, 5)]
    assert list(store.export("u")) == [(T0, ("e", "http://x"), 4)]
    store.close()


def test_retrying_count_store_retries_commits_too(tmp_path: Path) -> None:
    from consumers.retrying_ports import StoppableBackoff, RetryingCountStore

    class FlakyCommits(SqliteCountStore):
        failures = 2

        def commit(self) -> None:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            super().commit()

    inner = FlakyCommits(tmp_path / "counts.sqlite3")
    store = RetryingCountStore(inner, StoppableBackoff(sleep=lambda seconds: None))
    store.upsert(as_frames([WindowCount("r", ("c",), T0, "p", 2, True)]))
    store.commit()
    assert inner.failures == 0 and store.total("r", ("c",)) == 2
    store.close()
