import base64
import json
import os

import polars as pl
import pytest

from consumers.dead_letter_file import DeadLetterFile
from consumers.dead_letter_lines import decode_dead_letter_record
from consumers.local_object_store import LocalObjectStore
from consumers.object_keys import MAX_NAME_CHARS, check_key, encode_name_part
from consumers.raw_event_writer import RawEventWriter, raw_event_key
from streams.batches import BatchKind, CountedBatch
from streams.events import NO_PROPERTIES, DeadLetter, Event, Reason


def letter(record: bytes, reason=Reason.MALFORMED) -> DeadLetter:
    return DeadLetter(reason, "why", "file:/x", 3, record)


def test_dead_letter_lines_keep_text_base64_and_truncate(tmp_path):
    sink = DeadLetterFile(tmp_path / "dl.ndjson", max_record_bytes=10)
    records = [b"plain text", b"\xff\xfe bad utf8", b"nul\x00byte", b"x" * 50]
    sink.write([letter(r) for r in records])
    sink.close()
    lines = [json.loads(l) for l in (tmp_path / "dl.ndjson").read_text().splitlines()]
    assert [l["reason"] for l in lines] == ["malformed"] * 4
    assert lines[0]["record"] == "plain text" and "encoding" not in lines[0]
    assert lines[1]["encoding"] == "base64" and base64.b64decode(lines[1]["record"]) == b"\xff\xfe bad utf" and lines[1]["truncated"]
    assert decode_dead_letter_record(lines[2]) == b"nul\x00byte"
    assert lines[3]["truncated"] is True and lines[3]["record_bytes"] == 50 and lines[3]["record"] == "x" * 10
    assert set(lines[0]) == {"reason", "error", "source", "position", "record"}


@pytest.mark.parametrize("value", ["../../etc/passwd", "..", ".", "a/b", "a\\b", "a\x00b", "\n", "é" * 200, "", "x" * 500])
def test_a_partition_name_cannot_escape_its_key(value):
    key = raw_event_key(value, 450_004, 1, ".parquet")
    assert check_key(key) == key
    root, dt, hour, name = key.split("/")
    assert (root, dt, hour) == ("events", "dt=2021-05-03", "hour=4")
    part = encode_name_part(value)
    assert name == f"part-{part}-000000000001.parquet"
    assert all(32 < ord(c) < 127 and c not in "/\\" for c in part)
    assert len(part) <= MAX_NAME_CHARS


def test_distinct_partitions_stay_distinct():
    values = ["a/b", "a_b", "a%2Fb", "a%252Fb", "x" * 500, "x" * 499 + "y"]
    assert len({encode_name_part(v) for v in values}) == len(values)
    assert encode_name_part("kinesis-shard_1.x") == "kinesis-shard_1.x"


def test_local_object_store_refuses_escaping_keys(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    store.put("a/b.txt", b"1")
    assert store.get("a/b.txt") == b"1" and list(store.list()) == ["a/b.txt"]
    for bad in ["../x", "/etc/x", "a/../../x", "a//b", "a/./b"]:
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    assert not (tmp_path / "x").exists()


def fsync_recorder(monkeypatch) -> list[str]:
    """The paths `LocalObjectStore` fsyncs, in order."""
    import consumers.local_object_store as module

    synced: list[str] = []
    monkeypatch.setattr(module.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    return synced


def test_local_object_store_puts_without_fsync_and_syncs_each_file_and_directory_once(tmp_path, monkeypatch):
    synced = fsync_recorder(monkeypatch)
    store = LocalObjectStore(tmp_path)
    store.put("t/dt=1/hour=0/a.parquet", b"a")
    store.put("t/dt=1/hour=0/b.parquet", b"b")
    store.put("t/dt=1/hour=0/a.parquet", b"a2")  # overwritten whole, synced once
    store.put("t/dt=1/hour=1/c.parquet", b"c")
    assert synced == [] and [p.name for p in store.unsynced] == ["a.parquet", "b.parquet", "c.parquet"]
    assert sorted(store.list()) == ["t/dt=1/hour=0/a.parquet", "t/dt=1/hour=0/b.parquet", "t/dt=1/hour=1/c.parquet"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    store.sync()
    root = str(tmp_path.resolve())
    files = [f"{root}/t/dt=1/hour=0/a.parquet", f"{root}/t/dt=1/hour=0/b.parquet", f"{root}/t/dt=1/hour=1/c.parquet"]
    # Files first, then every directory that got a new entry: the new
    # directories' parents too, so the directories themselves survive.
    assert synced[:3] == files
    assert sorted(synced[3:]) == sorted({root, f"{root}/t", f"{root}/t/dt=1", f"{root}/t/dt=1/hour=0", f"{root}/t/dt=1/hour=1"})
    synced.clear()
    store.sync()
    assert synced == [] and store.get("t/dt=1/hour=0/a.parquet") == b"a2"


def test_a_failed_sync_keeps_the_objects_pending(tmp_path, monkeypatch):
    import consumers.local_object_store as module

    store = LocalObjectStore(tmp_path)
    store.put("x/a", b"1")

    def broken(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(module.os, "fsync", broken)
    with pytest.raises(OSError):
        store.sync()
    store.put("x/b", b"2")
    synced = fsync_recorder(monkeypatch)
    store.sync()
    assert [p.rsplit("/", 1)[1] for p in synced[:2]] == ["a", "b"]


def test_background_puts_are_in_order_seen_by_get_and_list_and_durable_after_sync(tmp_path, monkeypatch):
    import threading
    import time

    store = LocalObjectStore(tmp_path, background=True)
    writers: set[str] = set()
    original = store._write

    def slow_write(key, body):
        writers.add(threading.current_thread().name)
        time.sleep(0.002)
        original(key, body)

    monkeypatch.setattr(store, "_write", slow_write)
    for i in range(30):
        store.put(f"t/dt=1/hour={i % 3}/k", f"v{i}".encode())  # the same three keys, overwritten in turn
    store.put("t/dt=2/hour=0/z", b"z")
    assert store.get("t/dt=1/hour=2/k") == b"v29"  # the last put of the key, though written later
    assert list(store.list("t/")) == ["t/dt=1/hour=0/k", "t/dt=1/hour=1/k", "t/dt=1/hour=2/k", "t/dt=2/hour=0/z"]
    assert [(tmp_path / "t/dt=1" / f"hour={h}" / "k").read_bytes() for h in range(3)] == [b"v27", b"v28", b"v29"]
    assert writers and all(name.startswith("object-put") for name in writers)  # not the caller's thread
    synced = fsync_recorder(monkeypatch)
    store.sync()
    assert synced and store.unsynced == []
    with pytest.raises(ValueError):
        store.put("../escape", b"x")  # a bad key is raised by put itself


def test_a_failed_background_put_is_raised_by_sync_and_written_by_the_next(tmp_path, monkeypatch):
    import consumers.local_object_store as module

    store = LocalObjectStore(tmp_path, background=True)
    original = module.os.replace
    failures = [2]  # x/a's put and sync's own second try

    def flaky_replace(src, dst):
        if str(dst).endswith("/a") and failures[0]:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        original(src, dst)

    monkeypatch.setattr(module.os, "replace", flaky_replace)
    store.put("x/a", b"1")
    store.put("x/b", b"2")
    with pytest.raises(OSError, match="No space"):
        store.sync()  # the checkpoint must not move past x/a
    assert sorted(os.listdir(tmp_path / "x")) == ["b"]  # no temp file left behind
    store.sync()  # x/a written again
    assert (store.get("x/a"), store.get("x/b")) == (b"1", b"2")


def test_a_background_put_waits_while_the_pending_bytes_are_at_the_bound(tmp_path, monkeypatch):
    import time

    store = LocalObjectStore(tmp_path, background=True, max_pending_bytes=3000)
    most = [0]
    original = store._write

    def slow_write(key, body):
        most[0] = max(most[0], store._pending_bytes)
        time.sleep(0.005)
        original(key, body)

    monkeypatch.setattr(store, "_write", slow_write)
    for i in range(20):
        store.put(f"k/{i}", b"x" * 1000)
    store.put("big", b"y" * 5000)  # larger than the bound: goes alone
    store.sync()
    assert 2000 <= most[0] <= 5000
    assert len(list(store.list())) == 21


def test_local_object_store_makes_each_directory_once(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path)
    store.put("t/dt=1/hour=0/a", b"a")
    made = []
    original = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: made.append(os.path.basename(path)) or original(path, *a, **k))
    for i in range(20):
        store.put(f"t/dt=1/hour=0/{i}", b"x")
    store.put("t/dt=1/hour=1/a", b"y")
    assert made == ["hour=1"]
    store.put("t/dt=2/hour=0/b", b"z")  # two new levels: the deeper one is tried first
    assert made == ["hour=1", "hour=0", "dt=2", "hour=0"]
    assert store.get("t/dt=2/hour=0/b") == b"z" and str(tmp_path / "t") in store._unsynced_dirs


def test_list_gives_the_keys_in_s3_order_and_no_temp_files(tmp_path):
    """S3 lists by key: `a-c` before `a/b` ('-' < '/'), which a walk of the
    directory tree in path order would not give."""
    store = LocalObjectStore(tmp_path)
    keys = ["a/b", "a-c", "a/b-1/x", "a/b0", "a.d/e", "z", "a/.hidden-dir/f", "é/1"]
    for key in keys:
        store.put(key, key.encode())
    (tmp_path / "a" / ".b.123-0.tmp").write_bytes(b"a put's temp file")
    assert list(store.list()) == sorted(keys)
    assert list(store.list("a/b")) == sorted(k for k in keys if k.startswith("a/b"))
    assert list(store.list("a/")) == sorted(k for k in keys if k.startswith("a/"))
    assert list(store.list("nothing/")) == [] and list(store.list("../")) == []
    assert [store.get(k) for k in store.list()] == [k.encode() for k in sorted(keys)]


def test_a_put_over_an_existing_directory_level_fails_instead_of_writing_elsewhere(tmp_path):
    store = LocalObjectStore(tmp_path)
    (tmp_path / "t").write_bytes(b"not a directory")
    with pytest.raises(OSError):
        store.put("t/dt=1/a", b"x")
    assert (tmp_path / "t").read_bytes() == b"not a directory"


def event(etype: str, position: int, t: int = 1_614_556_800_000_000) -> Event:
    return Event("c1", etype, f"t{position}", t, NO_PROPERTIES, "file:/in.csv", position)


def written_rows(store: LocalObjectStore) -> list[dict]:
    return [row for k in sorted(store.list()) for row in pl.read_parquet(store.get(k)).to_dicts()]


def test_raw_event_values_stay_columns_and_never_reach_a_key(tmp_path):
    store = LocalObjectStore(tmp_path)
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600)
    types = ["../../evil", "x=y", "a/b", "hour=3"]
    batch = CountedBatch("file:/in.csv", BatchKind.DATA, events=[event(t, 5 + i) for i, t in enumerate(types)])
    writer.write(batch)
    assert writer.pending_floor("file:/in.csv") == 5
    writer.write(_end("file:/in.csv"))
    assert writer.pending_floor("file:/in.csv") is None
    keys = list(store.list())
    assert keys == ["events/dt=2021-03-01/hour=0/part-file%3A%2Fin.csv-000000000005.parquet"]
    assert [r["event_type"] for r in written_rows(store)] == types
    # Deterministic: the same input rewrites the same key with the same bytes.
    body = store.get(keys[0])
    writer.write(batch)
    writer.close()
    assert list(store.list()) == keys and store.get(keys[0]) == body


def _end(partition: str) -> CountedBatch:
    return CountedBatch(partition, BatchKind.EOF)


def test_a_checkpoint_keeps_the_buffers_and_holds_the_source_below_them(tmp_path):
    """`flush` (a checkpoint) makes durable what was written but cuts no
    object: the buffers are cut by age, by their partition's end, and at
    close, and until then `pending_floor` keeps the checkpoint below them."""
    store = LocalObjectStore(tmp_path)
    now = [0.0]
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=60, clock=lambda: now[0])
    a, b = "spool:a", "spool:b"
    for second in range(5):  # five checkpoints a second apart, as `consume` makes them
        now[0] = float(second)
        writer.write(CountedBatch(a, BatchKind.DATA, events=[event("click", 10 + second)]))
        writer.write(CountedBatch(b, BatchKind.DATA, events=[event("view", 20 + second)]))
        writer.flush()
        assert list(store.list()) == []
        assert (writer.pending_floor(a), writer.pending_floor(b)) == (10, 20)
    writer.write(_end(b))  # b ended: its object is cut, a's buffer stays
    assert [k.rsplit("-", 1)[1] for k in store.list()] == ["000000000020.parquet"]
    assert (writer.pending_floor(a), writer.pending_floor(b)) == (10, None)
    now[0] = 60.0  # a's buffer, opened at 0, is a minute old
    writer.write(CountedBatch(a, BatchKind.IDLE))
    assert sorted(k.rsplit("-", 1)[1] for k in store.list()) == ["000000000010.parquet", "000000000020.parquet"]
    assert writer.pending_floor(a) is None
    writer.write(CountedBatch(a, BatchKind.DATA, events=[event("click", 15)]))
    writer.close()
    assert sorted((r["partition"], r["position"]) for r in written_rows(store)) == sorted(
        [(a, p) for p in range(10, 16)] + [(b, p) for p in range(20, 25)])


def test_an_hour_the_watermark_passed_is_written_whole_whatever_the_batches(tmp_path):
    """Once the watermark passes the end of an hour, every event of it would
    be late: its buffer is written then, and holds the same rows however the
    stream was cut into batches (a replay from a checkpoint rewrites the
    same object). The next hour stays buffered."""
    t0, minute = 1_614_556_800_000_000, 60_000_000
    stream = [event("click", 1 + i, t0 + i * 10 * minute) for i in range(12)]  # hour 0: 1-6, hour 1: 7-12

    def objects(sizes: list[int]) -> tuple[dict[str, bytes], int | None]:
        store = LocalObjectStore(tmp_path / "-".join(map(str, sizes)))
        writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600)
        at = 0
        for size in sizes:
            part, at = stream[at:at + size], at + size
            watermark = part[-1].event_time_us - 10 * minute  # lateness 10m: the counter's rule
            writer.write(CountedBatch("p", BatchKind.DATA, events=part, watermark_us=watermark))
        return {k: store.get(k) for k in store.list()}, writer.pending_floor("p")

    whole, floor = objects([12])
    assert list(whole) == ["events/dt=2021-03-01/hour=0/part-p-000000000001.parquet"] and floor == 7
    assert pl.read_parquet(next(iter(whole.values())))["position"].to_list() == [1, 2, 3, 4, 5, 6]
    for sizes in ([5, 7], [7, 5], [1] * 12, [3, 4, 5]):
        assert objects(sizes) == (whole, 7), sizes


def test_a_restarted_partition_archives_its_replay_once(tmp_path):
    """A replay from the checkpoint (a Kinesis lease taken back) with other
    batch boundaries: what was written and what was buffered are each
    archived once, and the other partition is untouched."""
    store = LocalObjectStore(tmp_path)
    now = [0.0]
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=60, clock=lambda: now[0])
    p, other = "kinesis:s/shardId-0", "kinesis:s/shardId-1"
    writer.write(CountedBatch(p, BatchKind.DATA, events=[event("click", 5), event("click", 6)]))
    now[0] += 60
    writer.write(CountedBatch(p, BatchKind.IDLE))  # part-...-5: 5, 6, a minute old
    writer.write(CountedBatch(p, BatchKind.DATA, events=[event("click", 7), event("view", 8)]))
    writer.write(CountedBatch(other, BatchKind.DATA, events=[event("click", 7)]))
    now[0] += 60
    writer.write(CountedBatch(p, BatchKind.IDLE))  # part-...-7: 7, 8
    assert len(list(store.list())) == 3
    writer.write(CountedBatch(p, BatchKind.DATA, events=[event("click", 9)]))  # buffered
    replay = [event("click", 5), event("click", 6), event("click", 7), event("view", 8), event("click", 9),
              event("view", 10)]
    writer.write(CountedBatch(p, BatchKind.DATA, events=replay[:3], restarted=True))
    writer.write(CountedBatch(p, BatchKind.DATA, events=replay[3:]))
    writer.write(CountedBatch(other, BatchKind.DATA, events=[event("view", 8)]))
    writer.close()
    rows = written_rows(store)
    assert sorted((r["partition"], r["position"]) for r in rows) == sorted(
        [(p, position) for position in (5, 6, 7, 8, 9, 10)] + [(other, 7), (other, 8)])
    assert writer.events_written == 8


def test_open_objects_are_bounded_and_the_oldest_is_written_first(tmp_path):
    store = LocalObjectStore(tmp_path)
    writer = RawEventWriter(store, max_bytes=1 << 30, max_age_seconds=3600, max_open_objects=3)
    hour = 3_600_000_000
    writer.write(CountedBatch("p", BatchKind.DATA, events=[event("click", i, 1_614_556_800_000_000 + i * hour) for i in range(1, 6)]))
    assert len(writer._buffers) == 3
    written = sorted(store.list())
    assert [k.split("/")[2] for k in written] == ["hour=1", "hour=2"]
    writer.close()
    assert len(list(store.list())) == 5


def test_a_large_sync_is_one_syncfs_not_one_fsync_per_object(tmp_path, monkeypatch):
    import consumers.local_object_store as module

    store = module.LocalObjectStore(tmp_path)
    for i in range(module.SYNCFS_FROM + 10):
        store.put(f"a/dt=2021-03-01/hour={i % 24}/part-{i}.parquet", b"x" * i)

    def no_fsync(path):
        raise AssertionError(f"fsync of {path}: expected one syncfs for the whole batch")

    monkeypatch.setattr(module, "_fsync_file", no_fsync)
    monkeypatch.setattr(module, "_fsync_dir", no_fsync)
    store.sync()
    assert store.unsynced == []
    assert store.get("a/dt=2021-03-01/hour=3/part-3.parquet") == b"xxx"
