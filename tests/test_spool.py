"""The `spool:DIR` transport: durability, offsets, bounds, idling, stopping,
and the transport URI registry."""

from __future__ import annotations

import io
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from producers.console import ConsoleWriter
from producers.spool import SPOOL_FILE, SpoolReader, SpoolWriter
from producers.transport import TransportFull
from config.transports import open_reader, open_writer
from streams.batches import BatchKind, RecordBatch

pytestmark = pytest.mark.timeout(60)

FAST = 0.01  # poll interval for tests: idle polls come quickly


def drain(reader: SpoolReader) -> list[RecordBatch]:
    """Every batch up to and including the first IDLE one (caught up)."""
    batches: list[RecordBatch] = []

    def on_next(batch: RecordBatch) -> None:
        batches.append(batch)
        if batch.kind is BatchKind.IDLE:
            reader.stop()

    reader.batches().subscribe(on_next)
    return batches


def records_of(batches: list[RecordBatch]) -> list[tuple[bytes, int]]:
    return [pair for b in batches if b.kind is BatchKind.DATA for pair in zip(b.records, b.positions)]


def payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


def test_order_positions_and_partition_name(tmp_path: Path) -> None:
    sends = [payloads("a", 5), [], payloads("b", 7)]
    with SpoolWriter(tmp_path) as writer:
        assert [writer.send(s) for s in sends] == [5, 0, 7]
    expected = [(data, seq) for seq, data in enumerate(payloads("a", 5) + payloads("b", 7), start=1)]

    reader = SpoolReader(tmp_path, batch_size=4, poll_interval=FAST)
    batches = drain(reader)
    reader.close()

    assert records_of(batches) == expected
    data_batches = [b for b in batches if b.kind is BatchKind.DATA]
    assert [len(b.records) for b in data_batches] == [4, 4, 4]
    assert {b.partition for b in batches} == {"spool:" + str(tmp_path.resolve())}
    assert batches[-1].kind is BatchKind.IDLE


def test_partition_name_and_arrival_clock_are_injectable(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send([b"x"])
    reader = SpoolReader(tmp_path, poll_interval=FAST, partition_name="orders", wall_clock_us=lambda: 1234)
    batches = drain(reader)
    reader.close()
    assert [(b.partition, b.kind, b.arrival_us) for b in batches] == [
        ("orders", BatchKind.DATA, 1234),
        ("orders", BatchKind.IDLE, 0),
    ]


def test_commit_then_reopen_resumes_after_commit(tmp_path: Path) -> None:
    data = payloads("r", 10)
    with SpoolWriter(tmp_path) as writer:
        writer.send(data)

    first = SpoolReader(tmp_path, poll_interval=FAST)
    seen = records_of(drain(first))
    assert len(seen) == 10
    sixth_position = seen[5][1]
    first.commit(first.partition, sixth_position + 1)
    first.close()

    second = SpoolReader(tmp_path, poll_interval=FAST)
    assert second.committed() == sixth_position + 1
    assert records_of(drain(second)) == seen[6:]
    second.close()


def test_uncommitted_records_are_redelivered_after_reopen(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send(payloads("u", 6))
    first = SpoolReader(tmp_path, poll_interval=FAST)
    delivered = records_of(drain(first))
    first.close()  # crash-like: nothing committed

    second = SpoolReader(tmp_path, poll_interval=FAST)
    assert records_of(drain(second)) == delivered
    assert [d for d, _ in delivered] == payloads("u", 6)
    second.close()


def test_commit_never_moves_backwards(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send(payloads("c", 10))
    reader = SpoolReader(tmp_path, poll_interval=FAST)
    reader.commit(reader.partition, 8)
    reader.commit(reader.partition, 3)
    reader.close()

    again = SpoolReader(tmp_path, poll_interval=FAST)
    assert [pos for _, pos in records_of(drain(again))] == [8, 9, 10]
    again.close()


def test_commit_of_a_foreign_partition_is_rejected(tmp_path: Path) -> None:
    reader = SpoolReader(tmp_path)
    with pytest.raises(ValueError, match="unknown partition"):
        reader.commit("spool:/somewhere/else", 5)
    reader.close()


def test_two_groups_have_independent_offsets(tmp_path: Path) -> None:
    data = payloads("g", 4)
    with SpoolWriter(tmp_path) as writer:
        writer.send(data)

    a = SpoolReader(tmp_path, group="a", poll_interval=FAST)
    b = SpoolReader(tmp_path, group="b", poll_interval=FAST)
    a_seen = records_of(drain(a))
    a.commit(a.partition, a_seen[-1][1] + 1)
    a.close()
    assert [d for d, _ in records_of(drain(b))] == data
    b.close()

    a2 = SpoolReader(tmp_path, group="a", poll_interval=FAST)
    b2 = SpoolReader(tmp_path, group="b", poll_interval=FAST)
    assert records_of(drain(a2)) == []
    assert [d for d, _ in records_of(drain(b2))] == data
    a2.close()
    b2.close()


def produce_in_child(directory: str, name: str, sends: int, per_send: int, start: "threading.Event") -> None:
    start.wait(30)
    with SpoolWriter(directory, block_timeout=30) as writer:
        for i in range(sends):
            writer.send([f"{name}-{i}-{j}".encode() for j in range(per_send)])


def test_concurrent_producers_in_two_processes_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    sends, per_send = 40, 25
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=produce_in_child, args=(str(tmp_path), name, sends, per_send, start))
        for name in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(50)
    assert [p.exitcode for p in procs] == [0, 0]

    reader = SpoolReader(tmp_path, batch_size=300, poll_interval=FAST)
    seen = records_of(drain(reader))
    reader.close()

    positions = [pos for _, pos in seen]
    assert positions == sorted(set(positions))
    got = [d.decode() for d, _ in seen]
    for name in ("p1", "p2"):
        expected = [f"{name}-{i}-{j}" for i in range(sends) for j in range(per_send)]
        # each producer's records arrive whole and in its own order
        assert [g for g in got if g.startswith(name + "-")] == expected
    assert len(got) == 2 * sends * per_send


def test_send_raises_transport_full_when_bounded_and_nobody_consumes(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, max_pending=10, block_timeout=0.2)
    assert writer.send(payloads("f", 8)) == 8
    started = time.monotonic()
    with pytest.raises(TransportFull):
        writer.send(payloads("g", 3))  # 8 + 3 > 10: all or none
    assert time.monotonic() - started >= 0.2
    assert writer.pending() == 8
    assert writer.send(payloads("h", 2)) == 2
    with pytest.raises(TransportFull):
        writer.send([b"one more"])

    # A consumer committing frees room: pending counts from the slowest group.
    reader = SpoolReader(tmp_path, poll_interval=FAST)
    reader.commit(reader.partition, 6)
    assert writer.pending() == 5
    assert writer.send(payloads("i", 5)) == 5
    writer.close()
    reader.close()

    reopened = SpoolReader(tmp_path, poll_interval=FAST)
    assert [d for d, _ in records_of(drain(reopened))] == (payloads("f", 8) + payloads("h", 2) + payloads("i", 5))[5:]
    reopened.close()


def test_unbounded_writer_never_refuses(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, max_pending=0, block_timeout=0) as writer:
        assert sum(writer.send(payloads(str(i), 100)) for i in range(5)) == 500
        assert writer.pending() == 500


class StepClock:
    """Each call advances by one more second than the last: 100, 101, 103, 106, ..."""

    def __init__(self) -> None:
        self.now = 100.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        self.step += 1.0
        return self.now


def test_idle_batches_carry_the_seconds_since_the_previous_poll(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path)
    reader = SpoolReader(tmp_path, poll_interval=0, clock=StepClock())
    log: list[tuple[BatchKind, float, float]] = []

    def on_next(batch: RecordBatch) -> None:
        log.append((batch.kind, batch.idle_seconds, reader.caught_up_seconds()))
        if len(log) == 2:
            writer.send([b"late record"])
        if len(log) == 5:
            reader.stop()

    reader.batches().subscribe(on_next)
    writer.close()
    reader.close()

    # clock: 100 at start, polls at 101, 103, 106 (data), 110, 115
    assert log == [
        (BatchKind.IDLE, 1.0, 1.0),
        (BatchKind.IDLE, 2.0, 3.0),
        (BatchKind.DATA, 0.0, 0.0),
        (BatchKind.IDLE, 4.0, 4.0),
        (BatchKind.IDLE, 5.0, 9.0),
    ]


def test_stop_from_another_thread_completes_the_observable(tmp_path: Path) -> None:
    reader = SpoolReader(tmp_path, poll_interval=FAST)
    completed = threading.Event()
    idles: list[RecordBatch] = []
    threading.Timer(0.3, reader.stop).start()

    reader.batches().subscribe(idles.append, on_completed=completed.set)  # blocks until stopped

    assert completed.is_set()
    assert idles and all(b.kind is BatchKind.IDLE for b in idles)
    reader.close()


def test_stop_ends_a_reader_running_on_a_background_thread(tmp_path: Path) -> None:
    reader = SpoolReader(tmp_path, poll_interval=5.0)  # stop must not wait out the sleep
    completed = threading.Event()
    thread = threading.Thread(target=lambda: reader.batches().subscribe(on_completed=completed.set))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    reader.stop()
    thread.join(3)
    assert not thread.is_alive()
    assert completed.is_set()
    assert time.monotonic() - started < 1.0
    reader.close()


def crash_mid_transaction(directory: str) -> None:
    conn = sqlite3.connect(os.path.join(directory, SPOOL_FILE), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO records (data) VALUES (?)", [(b"torn",)] * 1000)
    os._exit(1)  # die without commit or rollback, like a SIGKILLed producer


def test_a_producer_crashing_mid_write_leaves_the_spool_intact(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send([b"before"])
    child = multiprocessing.get_context("spawn").Process(target=crash_mid_transaction, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 1
    with SpoolWriter(tmp_path, block_timeout=1) as writer:
        writer.send([b"after"])

    reader = SpoolReader(tmp_path, poll_interval=FAST)
    assert [d for d, _ in records_of(drain(reader))] == [b"before", b"after"]
    reader.close()


def test_prune_keeps_what_the_slowest_group_needs_and_seqs_are_never_reused(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send(payloads("p", 10))
    fast = SpoolReader(tmp_path, group="fast", poll_interval=FAST)
    slow = SpoolReader(tmp_path, group="slow", poll_interval=FAST)
    fast.commit(fast.partition, 11)
    slow.commit(slow.partition, 4)
    assert fast.prune() == 3  # seqs 1..3
    slow.commit(slow.partition, 11)
    assert fast.prune() == 7
    assert slow.prune() == 0
    with SpoolWriter(tmp_path) as writer:
        writer.send([b"next"])
    assert records_of(drain(slow)) == [(b"next", 11)]
    fast.close()
    slow.close()


def test_open_writer_and_reader_by_uri(tmp_path: Path) -> None:
    writer = open_writer(f"spool:{tmp_path}")
    assert isinstance(writer, SpoolWriter)
    writer.send([b"via uri"])
    writer.close()
    reader = open_reader(f"spool:{tmp_path}", group="uri", poll_interval=FAST)
    assert isinstance(reader, SpoolReader)
    assert [d for d, _ in records_of(drain(reader))] == [b"via uri"]
    reader.close()


def test_console_writer_writes_one_line_per_record() -> None:
    out = io.StringIO()
    writer = open_writer("console", stream=out)
    assert isinstance(writer, ConsoleWriter)
    assert writer.send([b'{"a": 1}', "é".encode(), b"\xff"]) == 3
    writer.close()
    assert out.getvalue() == '{"a": 1}\né\n\\xff\n'


EXPECTED_MESSAGE = "expected spool:DIR, console, kinesis:STREAM or sqs:QUEUE"


@pytest.mark.parametrize("uri", ["nope:x", "spool:", "spool", "", "console:extra", "/tmp/dir"])
def test_bad_writer_uri_raises_value_error(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        open_writer(uri)
    assert str(info.value) == f"unknown transport URI {uri!r}: {EXPECTED_MESSAGE}"


@pytest.mark.parametrize("uri", ["nope:x", "spool:", "kinesis:", "sqs:"])
def test_bad_reader_uri_raises_value_error(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        open_reader(uri)
    assert str(info.value) == f"unknown transport URI {uri!r}: {EXPECTED_MESSAGE}"


def test_console_is_write_only() -> None:
    with pytest.raises(ValueError, match="write-only"):
        open_reader("console")


def test_the_committed_watermark_comes_back_on_the_first_batch_after_a_restart(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path) as writer:
        writer.send(payloads("w", 6))
    first = SpoolReader(tmp_path, poll_interval=FAST)
    seen = records_of(drain(first))
    first.commit(first.partition, seen[2][1], watermark_us=123_456)
    first.commit(first.partition, seen[1][1], watermark_us=999)  # backwards: ignored, watermark too
    first.close()
    second = SpoolReader(tmp_path, poll_interval=FAST)
    batches = [b for b in drain(second) if b.kind is BatchKind.DATA]
    assert batches[0].resume_watermark_us == 123_456
    assert all(b.resume_watermark_us is None for b in batches[1:])
    assert records_of(batches) == seen[2:]
    second.close()


ODD_RECORDS = [b"", b"a", b"\n", b"\x00\xff", b"", "é\u2028".encode(), b"x" * 70_000, b"", b'{"k": "v"}']


@pytest.mark.parametrize("max_pending", [0, 1000])
@pytest.mark.parametrize("statement_bytes", [None, 10])
def test_records_come_back_byte_for_byte_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pending: int, statement_bytes: int | None
) -> None:
    """A send is cut back into its records by SQLite (one statement, or several
    in one transaction when it is large): every record comes back as sent."""
    if statement_bytes is not None:
        monkeypatch.setattr("producers.spool.MAX_STATEMENT_BYTES", statement_bytes)
    sends = [ODD_RECORDS, [b""], [b"", b""], [bytearray(b"ba"), memoryview(b"mv")], payloads("n", 300)]
    with SpoolWriter(tmp_path, max_pending=max_pending) as writer:
        assert [writer.send(s) for s in sends] == [len(s) for s in sends]
        assert writer.pending() == sum(map(len, sends))
    reader = SpoolReader(tmp_path, batch_size=100, poll_interval=FAST)
    seen = records_of(drain(reader))
    reader.close()
    assert [d for d, _ in seen] == [bytes(r) for s in sends for r in s]
    assert [p for _, p in seen] == list(range(1, len(seen) + 1))
    with sqlite3.connect(tmp_path / SPOOL_FILE) as conn:
        assert conn.execute("SELECT DISTINCT typeof(data), partition FROM records").fetchall() == [("blob", "spool")]


@pytest.mark.parametrize("statement_bytes", [None, 10])
def test_a_send_past_the_bound_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement_bytes: int | None) -> None:
    if statement_bytes is not None:
        monkeypatch.setattr("producers.spool.MAX_STATEMENT_BYTES", statement_bytes)
    with SpoolWriter(tmp_path, max_pending=5, block_timeout=0) as writer:
        assert writer.send(payloads("a", 7)) == 7  # an empty spool takes any send
        with pytest.raises(TransportFull):
            writer.send([b"one more"])
        assert writer.pending() == 7
        reader = SpoolReader(tmp_path, poll_interval=FAST)
        reader.commit(reader.partition, 6)  # 2 left: room for 3
        with pytest.raises(TransportFull):
            writer.send(payloads("b", 4))
        assert writer.send(payloads("c", 3)) == 3
        reader.close()
    with sqlite3.connect(tmp_path / SPOOL_FILE) as conn:
        assert [d for (d,) in conn.execute("SELECT data FROM records ORDER BY seq")] == payloads("a", 7) + payloads("c", 3)


def test_a_spool_locked_by_another_writer_is_full_not_an_error(tmp_path: Path) -> None:
    with SpoolWriter(tmp_path, block_timeout=0) as writer:
        writer.send([b"first"])
        writer._conn.execute("PRAGMA busy_timeout = 50")  # type: ignore[union-attr]
        other = sqlite3.connect(tmp_path / SPOOL_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(TransportFull, match="locked"):
                writer.send([b"blocked"])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert writer.send([b"after"]) == 1
        assert writer.pending() == 2


def test_the_bound_of_a_send_follows_pending(tmp_path: Path) -> None:
    """The one-statement send checks the bound with its own reading of the
    pending count: it admits exactly the sends `pending()` leaves room for,
    with no group, with a group behind, and after pruning."""
    bound = 20

    def spool_in(state: int, directory: Path) -> SpoolWriter:
        writer = SpoolWriter(directory, max_pending=bound, block_timeout=0)
        if state >= 1:
            writer.send(payloads("a", 8))
        if state >= 2:
            reader = SpoolReader(directory, group="g", poll_interval=FAST)  # registered at the oldest record
            if state >= 3:
                reader.commit(reader.partition, 5)
            if state >= 4:
                assert reader.prune() == 4
            if state >= 5:
                reader.commit(reader.partition, 9)
                assert reader.prune() == 4  # every record read and pruned
            reader.close()
        return writer

    for state in range(6):
        for n in range(1, bound + 3):
            directory = tmp_path / f"{state}-{n}"
            with spool_in(state, directory) as writer:
                pending = writer.pending()
                fits = pending == 0 or pending + n <= bound
                try:
                    took = writer.send(payloads("t", n)) == n
                except TransportFull:
                    took = False
                assert took == fits, (state, pending, n)
                assert writer.pending() == pending + (n if took else 0)
