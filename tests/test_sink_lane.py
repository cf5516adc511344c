"""Sink lanes: each sink on its own thread, in order, with checkpoints that
wait for every lane, and a sink's error raised on the caller's thread."""

from __future__ import annotations

import threading
import time

import pytest

from consumers.fan_out import SAFE_POINTS_MAX, SinkFanOut
from consumers.ports import Sink
from consumers.run_summary import RunSummary
from consumers.sink_lane import SinkLane
from streams.batches import BatchKind, CountedBatch


def _batch(position: int) -> CountedBatch:
    return CountedBatch("p", BatchKind.DATA, read=1, safe_position=position)


class _Recording(Sink):
    """Records its calls and the thread of each; holds `pending` positions
    until a flush, like a buffering writer."""

    def __init__(self, name: str, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.name = name
        self.delay = delay
        self.fail_at = fail_at
        self.calls: list[tuple[str, int | None]] = []
        self.threads: set[str] = set()
        self.pending: list[int] = []
        self.durable: list[int] = []

    def write(self, batch: CountedBatch) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if batch.safe_position == self.fail_at:
            raise OSError(f"{self.name}: disk full at {batch.safe_position}")
        self.calls.append(("write", batch.safe_position))
        self.pending.append(batch.safe_position)

    def send(self) -> None:
        self.calls.append(("send", None))

    def flush(self) -> None:
        time.sleep(self.delay)
        self.calls.append(("flush", None))
        self.durable.extend(self.pending)
        self.pending.clear()

    def pending_floor(self, partition: str) -> int | None:
        return min(self.pending, default=None)

    def close(self) -> None:
        self.flush()
        self.calls.append(("close", None))


def test_each_sink_takes_every_batch_in_order_on_a_thread_of_its_own():
    sinks = [_Recording("slow", delay=0.002), _Recording("fast")]
    lanes = [SinkLane(sink, max_behind=2) for sink in sinks]
    for position in range(50):
        for lane in lanes:
            lane.write(_batch(position))
    for lane in lanes:
        lane.close()
    for sink in sinks:
        assert sink.calls == [("write", p) for p in range(50)] + [("flush", None), ("close", None)]
        assert sink.threads == {f"sink-{sink.name}"}
    assert sinks[0].threads != sinks[1].threads


def test_flush_returns_only_once_every_batch_before_it_is_durable():
    sink = _Recording("slow", delay=0.01)
    lane = SinkLane(sink, max_behind=8)
    for position in range(6):
        lane.write(_batch(position))
    lane.flush()  # the lane was up to six writes behind
    assert sink.durable == list(range(6))
    assert lane.pending_floor("p") is None
    lane.close()


def test_the_fan_out_commits_only_what_every_lane_holds_durably():
    """A checkpoint through lanes: the commit comes after every sink's
    flush, at the position every sink made durable."""
    sinks = [_Recording("raw", delay=0.003), _Recording("counts")]
    commits: list[tuple[str, int]] = []
    durable_at_commit: list[list[list[int]]] = []

    def commit(partition, position, watermark):
        commits.append((partition, position))
        durable_at_commit.append([list(s.durable) for s in sinks])

    fan_out = SinkFanOut([SinkLane(s) for s in sinks], RunSummary(), commit, checkpoint_interval=0.0)
    for position in range(1, 21):
        fan_out.on_next(_batch(position))
    fan_out.close()
    assert commits and commits[-1] == ("p", 20)
    for (_, position), durable in zip(commits, durable_at_commit):
        for held in durable:  # every sink had made every batch up to the commit durable
            assert held[:position] == list(range(1, position + 1))


def test_a_sink_error_is_raised_on_the_callers_thread_and_the_lane_takes_nothing_more():
    sink = _Recording("raw", delay=0.01, fail_at=3)
    lane = SinkLane(sink, max_behind=4)  # writes 4 to 7 are queued behind the failing one
    with pytest.raises(OSError, match="disk full at 3"):
        for position in range(100):
            lane.write(_batch(position))
    assert sink.calls == [("write", p) for p in range(3)]
    with pytest.raises(OSError, match="disk full at 3"):
        lane.flush()
    with pytest.raises(OSError, match="disk full at 3"):
        lane.close()
    # close() joined the lane: what was queued behind the failure was dropped, not written past the hole
    assert sink.calls == [("write", p) for p in range(3)]
    assert not any(t.name == "sink-raw" for t in threading.enumerate()), "the lane's thread is still running"


def test_metrics_time_each_write_on_its_lane_and_count_it_once():
    """Behind a lane the fan-out's own timing would measure the hand-off: the
    lane times the write where it runs, and the fan-out leaves it alone."""
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"sink": "lane-metrics"}) or 0.0

    writes, seconds = value("rivulet_sink_writes_total"), value("rivulet_sink_latency_seconds_sum")
    failures = value("rivulet_sink_failures_total")
    sink = _Recording("lane-metrics", delay=0.02, fail_at=5)
    fan_out = SinkFanOut([SinkLane(sink, max_behind=8)], RunSummary())
    for position in range(5):
        fan_out.on_next(_batch(position))
    with pytest.raises(OSError):
        fan_out.on_next(_batch(5))
        fan_out.close()
    assert value("rivulet_sink_writes_total") - writes == 5
    assert value("rivulet_sink_latency_seconds_sum") - seconds >= 5 * 0.02  # the writes, not the hand-offs
    assert value("rivulet_sink_failures_total") - failures == 1


class _Meeting(Sink):
    """Its last writes (`send`) wait, up to a few seconds, for the other
    sink's to have started: they meet only if neither waits for the other
    to be closed first."""

    def __init__(self, name: str, started: dict[str, threading.Event]) -> None:
        self.name = name
        self.started = started
        self.met: bool | None = None
        self.closed_after_send = False

    def write(self, batch: CountedBatch) -> None:
        pass

    def send(self) -> None:
        self.started[self.name].set()
        other = next(event for name, event in self.started.items() if name != self.name)
        self.met = other.wait(timeout=3)

    def close(self) -> None:
        self.closed_after_send = self.met is not None


def test_closing_starts_every_lanes_last_writes_before_waiting_on_any():
    """At the end of a run, as at a checkpoint, one lane's last objects are
    encoded beside another's instead of after them."""
    started = {"a": threading.Event(), "b": threading.Event()}
    sinks = [_Meeting("a", started), _Meeting("b", started)]
    fan_out = SinkFanOut([SinkLane(sink) for sink in sinks], RunSummary())
    fan_out.on_next(_batch(1))
    began = time.monotonic()
    fan_out.close()
    assert [sink.met for sink in sinks] == [True, True]
    assert all(sink.closed_after_send for sink in sinks)
    assert time.monotonic() - began < 2.5


class _Holding(Sink):
    """A sink that keeps a buffer across checkpoints (as the raw events'
    writer does), from position `floor` on."""

    name = "holding"

    def __init__(self) -> None:
        self.floor: int | None = None

    def write(self, batch: CountedBatch) -> None:
        pass

    def pending_floor(self, partition: str) -> int | None:
        return self.floor


def test_a_buffer_kept_across_checkpoints_holds_the_commit_at_an_earlier_safe_point_with_its_watermark():
    """The commit is the newest safe point at or below what a sink still
    holds, with that point's own watermark (a replay from it decides as the
    first run did), never a bare position."""
    holding = _Holding()
    commits: list[tuple[str, int, int | None]] = []
    fan_out = SinkFanOut([holding], RunSummary(), lambda p, pos, wm: commits.append((p, pos, wm)),
                         checkpoint_interval=3600)

    def batch(position: int, watermark: int, restarted: bool = False) -> CountedBatch:
        return CountedBatch("p", BatchKind.DATA, read=1, safe_position=position, safe_watermark_us=watermark,
                            restarted=restarted)

    for position in (10, 20, 30):
        fan_out.on_next(batch(position, position * 1000))
    holding.floor = 25  # a record at 25 is still buffered
    fan_out.checkpoint()
    assert commits == [("p", 20, 20_000)]
    holding.floor = 5  # below every safe point since: nothing to commit
    fan_out.checkpoint()
    assert commits == [("p", 20, 20_000)]
    holding.floor = 30
    fan_out.checkpoint()
    assert commits[-1] == ("p", 30, 30_000)
    fan_out.on_next(batch(40, 40_000))
    fan_out.on_next(batch(50, 50_000))
    holding.floor = None
    fan_out.checkpoint()
    assert commits[-1] == ("p", 50, 50_000)
    # A restart from the checkpoint starts over lower; nothing goes below what was committed.
    fan_out.on_next(batch(45, 45_000, restarted=True))
    fan_out.on_next(batch(60, 60_000))
    holding.floor = 55
    fan_out.checkpoint()
    assert commits[-1] == ("p", 50, 50_000) and len(commits) == 3
    holding.floor = None
    fan_out.checkpoint()
    assert commits[-1] == ("p", 60, 60_000)


def test_safe_points_held_by_a_stuck_sink_stay_bounded_and_each_commit_is_one_of_them():
    """A sink stuck for long (an API down) while batches keep coming: the
    fan-out keeps a bounded set of safe points, and what it commits once the
    sink moves on is still a real safe point with its own watermark, at or a
    little below the sink's floor."""
    holding = _Holding()
    commits: list[tuple[str, int, int | None]] = []
    fan_out = SinkFanOut([holding], RunSummary(), lambda p, pos, wm: commits.append((p, pos, wm)),
                         checkpoint_interval=3600)
    holding.floor = 1
    for position in range(1, 20_001):
        fan_out.on_next(CountedBatch("p", BatchKind.DATA, read=1, safe_position=position,
                                     safe_watermark_us=position * 1000))
    fan_out.checkpoint()
    assert commits == [("p", 1, 1000)]
    assert len(fan_out._safe["p"]) <= SAFE_POINTS_MAX
    holding.floor = 17_777
    fan_out.checkpoint()
    _, position, watermark = commits[-1]
    assert 17_777 - 64 < position <= 17_777 and watermark == position * 1000
    holding.floor = None
    fan_out.checkpoint()
    assert commits[-1] == ("p", 20_000, 20_000_000)
