"""The `multiprocessing` queue transport used by `run --processes 2`."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time

import pytest

from producers.mp_queue import END_MARKER, MpQueueReader, MpQueueWriter, make_queue
from producers.transport import TransportFull
from config.transports import open_reader, open_writer
from streams.batches import BatchKind, RecordBatch

pytestmark = pytest.mark.timeout(60)

SENDS = [17, 1, 0, 40, 5]  # record counts per send() in the child


def child_records() -> list[bytes]:
    return [f"rec-{i}-{j}".encode() for i, n in enumerate(SENDS) for j in range(n)]


def produce_in_child(queue, batch_size: int) -> None:
    writer = MpQueueWriter(queue, batch_size=batch_size)
    offset = 0
    for n in SENDS:
        writer.send(child_records()[offset : offset + n])
        offset += n
    writer.close()


def collect(reader: MpQueueReader) -> tuple[list[RecordBatch], bool]:
    batches: list[RecordBatch] = []
    completed = threading.Event()
    reader.batches().subscribe(batches.append, on_completed=completed.set)
    return batches, completed.is_set()


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_round_trip_across_a_child_process_ends_with_eof(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    queue = make_queue(maxsize=2)  # smaller than the number of micro-batches: puts must block
    batch_size = 7
    child = ctx.Process(target=produce_in_child, args=(queue, batch_size))
    child.start()

    batches, completed = collect(MpQueueReader(queue, "mp", poll_interval=0.05))
    child.join(30)

    assert child.exitcode == 0
    assert completed
    expected = child_records()
    data = [b for b in batches if b.kind is BatchKind.DATA]
    assert [r for b in data for r in b.records] == expected
    assert [p for b in data for p in b.positions] == list(range(1, len(expected) + 1))
    assert [len(b.records) for b in data[:-1]] == [batch_size] * (len(data) - 1)
    assert len(data) == math.ceil(len(expected) / batch_size)
    assert {b.partition for b in batches} == {"mp"}
    assert batches[-1] == RecordBatch.eof("mp")
    assert [b.kind for b in batches].count(BatchKind.EOF) == 1


def test_writer_puts_micro_batches_and_the_end_marker_once() -> None:
    queue = make_queue(maxsize=10)
    writer = MpQueueWriter(queue, batch_size=2)
    assert writer.send([b"a", b"b", b"c"]) == 3
    assert writer.send([b"d", b"e"]) == 2
    writer.flush()
    writer.flush()  # nothing buffered: puts nothing
    writer.close()
    writer.close()
    items = [queue.get(timeout=5) for _ in range(4)]
    assert items == [[b"a", b"b"], [b"c", b"d"], [b"e"], END_MARKER]
    time.sleep(0.1)  # the queue's feeder thread would have delivered a second marker by now
    assert queue.empty()
    with pytest.raises(ValueError):
        writer.send([b"late"])


def test_full_queue_raises_transport_full_after_put_timeout() -> None:
    queue = make_queue(maxsize=1)
    writer = MpQueueWriter(queue, batch_size=1, put_timeout=0.2)
    writer.send([b"first"])
    started = time.monotonic()
    with pytest.raises(TransportFull):
        writer.send([b"second"])
    assert time.monotonic() - started >= 0.2
    assert queue.get(timeout=5) == [b"first"]
    writer.flush()  # the record that did not fit is still buffered, not lost
    assert queue.get(timeout=5) == [b"second"]


def test_positions_continue_across_micro_batches() -> None:
    queue = make_queue()
    writer = MpQueueWriter(queue, batch_size=3)
    writer.send([b"1", b"2", b"3", b"4"])
    writer.close()
    batches, completed = collect(MpQueueReader(queue, "p", poll_interval=0.05))
    data = [b for b in batches if b.kind is BatchKind.DATA]
    assert [list(zip(b.records, b.positions)) for b in data] == [
        [(b"1", 1), (b"2", 2), (b"3", 3)],
        [(b"4", 4)],
    ]
    assert completed and batches[-1].kind is BatchKind.EOF


class StepClock:
    """Each call advances by one more second than the last: 0, 1, 3, 6, ..."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        self.step += 1.0
        return self.now


def test_empty_queue_emits_idle_with_increasing_seconds_and_stop_completes() -> None:
    queue = make_queue()
    reader = MpQueueReader(queue, "idle", poll_interval=0.01, clock=StepClock())
    seen: list[tuple[float, float]] = []
    completed = threading.Event()

    def on_next(batch: RecordBatch) -> None:
        assert batch.kind is BatchKind.IDLE
        seen.append((batch.idle_seconds, reader.caught_up_seconds()))
        if len(seen) == 3:
            reader.stop()

    reader.batches().subscribe(on_next, on_completed=completed.set)
    assert seen == [(1.0, 1.0), (2.0, 3.0), (3.0, 6.0)]
    assert completed.is_set()


def test_stop_from_another_thread_completes_without_eof() -> None:
    reader = MpQueueReader(make_queue(), "s", poll_interval=0.05)
    threading.Timer(0.2, reader.stop).start()
    batches, completed = collect(reader)
    assert completed
    assert BatchKind.EOF not in {b.kind for b in batches}


def test_commit_is_a_no_op_and_uri_opens_mpqueue() -> None:
    queue = make_queue()
    writer = open_writer("mpqueue", queue=queue, batch_size=5)
    assert isinstance(writer, MpQueueWriter)
    writer.send([b"x"])
    writer.close()
    reader = open_reader("mpqueue", queue=queue, partition="m", poll_interval=0.05)
    assert isinstance(reader, MpQueueReader)
    reader.commit("m", 1)
    batches, completed = collect(reader)
    assert [b.kind for b in batches] == [BatchKind.DATA, BatchKind.EOF]
    assert completed
