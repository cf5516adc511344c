"""Windows, watermark, lateness, duplicates and flushing, on plain lists and
with `reactivex.testing`."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st
from reactivex.testing import ReactiveTest, TestScheduler

from streams.batches import BatchKind, RecordBatch
from streams.count_windows import count_windows
from streams.csv_parser import EventsCsvParser
from streams.events import Reason
from streams.parse_records import parse_records
from streams.pipeline import make_counter
from streams.utc import format_utc
from streams.window_counts import WINDOW_START
from streams.windowing import WATERMARK_MIN
from tests.oracle import DEFAULT_ROLLUPS, HOUR, MINUTE, run_oracle
from tests.pipeline_harness import FAR_FUTURE_CLOCK, default_rollups, run_counter, window_rows

BASE = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z


def row(customer: str, t_us: int, etype: str = "click", txn: str | None = None) -> str:
    return f"{customer},{etype},{txn or f'{customer}-{t_us}'},{format_utc(t_us)}"


def test_window_boundaries_are_start_inclusive_end_exclusive():
    lines = [row("a", BASE + HOUR - 1), row("a", BASE + HOUR), row("a", BASE + 2 * HOUR - 1)]
    counts, _ = run_counter(lines, timedelta(minutes=10))
    assert counts["customer_hourly"] == {(BASE, "a"): 1, (BASE + HOUR, "a"): 2}
    assert counts["event_type_minutely"] == {
        (BASE + HOUR - MINUTE, "click"): 1, (BASE + HOUR, "click"): 1, (BASE + 2 * HOUR - MINUTE, "click"): 1}


def test_out_of_order_within_lateness_is_counted_and_beyond_is_late():
    lines = [
        row("a", BASE + 30 * MINUTE),
        row("a", BASE + 21 * MINUTE),  # 9 min behind the newest: on time under 10m
        row("a", BASE + 19 * MINUTE),  # 11 min behind: late
        row("a", BASE + 20 * MINUTE),  # exactly at the watermark: on time
    ]
    counts, results = run_counter(lines, timedelta(minutes=10))
    assert counts["customer_hourly"] == {(BASE, "a"): 3}
    late = [d for r in results for d in r.dead_letters if d.reason is Reason.LATE]
    assert [d.position for d in late] == [3]
    assert sum(r.max_late_by_us for r in results) == MINUTE


def test_a_window_closes_once_the_watermark_passes_its_end():
    lines = [row("a", BASE + 5 * MINUTE), row("a", BASE + 70 * MINUTE), row("b", BASE + 71 * MINUTE)]
    counts, results = run_counter(lines, timedelta(minutes=10), sizes=[1, 1, 1])
    # The hour [00:00, 01:00) closes when the watermark (newest - 10m) reaches 01:00,
    # i.e. not at 01:10 (event 2 makes the watermark exactly 01:00)...
    closed_after = [sorted((c.rollup, c.window_start_us) for c in window_rows(r) if c.rollup == "customer_hourly") for r in results]
    assert closed_after[0] == []
    assert closed_after[1] == [("customer_hourly", BASE)]
    assert counts["customer_hourly"][(BASE + HOUR, "a")] == 1  # flushed at EOF
    assert results[-1].kind is BatchKind.EOF


def test_duplicates_across_offsets_are_dropped_and_counted():
    t = BASE + 5 * MINUTE + 123456
    lines = [
        "c1,click,x1,2021-03-01T00:05:00.123456Z",
        "c1,click,x1,2021-03-01 05:35:00.123456+05:30",  # same instant
        "c1,click,x1,2021-03-01T00:05:00.1234569Z",  # 7 digits: truncated to the same microsecond
        "c1,click,x1,2021-03-01T00:05:00.123457Z",  # another instant: not a duplicate
    ]
    counts, results = run_counter(lines, timedelta(minutes=10))
    assert sum(r.duplicates for r in results) == 2
    assert counts["customer_hourly"] == {(BASE, "c1"): 2}
    assert t  # the instant used above


def test_future_events_are_dead_lettered_and_do_not_move_the_watermark():
    now = BASE + HOUR
    lines = [row("a", BASE), row("a", BASE + 400 * 24 * HOUR), row("a", BASE + 1)]
    counts, results = run_counter(lines, timedelta(minutes=10), now_us=now)
    assert [d.reason for r in results for d in r.dead_letters] == [Reason.FUTURE]
    assert counts["customer_hourly"] == {(BASE, "a"): 2}  # the third is not late


def test_idle_ticks_advance_the_watermark_by_wall_time_and_close_windows():
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK).build("s")
    first = counter.on_batch(parser.parse_batch(RecordBatch.data("s", [row("a", BASE + 59 * MINUTE).encode()], [1])))
    assert window_rows(first) == []
    assert window_rows(counter.on_batch(parser.parse_batch(RecordBatch.idle("s", 60)))) == []
    # The newest event is 00:59, the watermark 00:49; 11 more idle minutes pass 01:00.
    out = counter.on_batch(parser.parse_batch(RecordBatch.idle("s", 10 * 60)))
    assert {(c.rollup, c.window_start_us) for c in window_rows(out)} == {
        ("customer_hourly", BASE), ("event_type_minutely", BASE + 59 * MINUTE)}
    assert out.safe_position == 2  # nothing open: every record is reflected


def test_an_idle_tick_before_any_event_does_nothing():
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK).build("s")
    parser = EventsCsvParser()
    counter.on_batch(parser.parse_batch(RecordBatch.idle("s", 10**6)))
    out = counter.on_batch(parser.parse_batch(RecordBatch.data("s", [row("a", BASE).encode()], [1])))
    assert out.late == 0


def test_safe_position_never_passes_the_first_event_of_an_open_window():
    lines = [row("a", BASE + 1), row("b", BASE + 30 * MINUTE), row("c", BASE + 61 * MINUTE)]
    _, results = run_counter(lines, timedelta(minutes=10), sizes=[1, 1, 1])
    assert [r.safe_position for r in results[:3]] == [1, 1, 1]
    assert results[-1].safe_position == 4


def test_stop_flushes_open_windows_as_provisional():
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK).build("s")
    counter.on_batch(parser.parse_batch(RecordBatch.data("s", [row("a", BASE).encode()], [7])))
    out = counter.on_stop()
    assert {(c.rollup, c.count, c.final) for c in window_rows(out)} == {("customer_hourly", 1, False), ("event_type_minutely", 1, False)}
    assert out.safe_position == 7


def test_state_is_bounded_by_open_windows():
    lines = [row(f"c{i % 50}", BASE + i * 1_000_000) for i in range(20_000)]  # 5.5 hours, one per second
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK).build("p")
    peak_seen = peak_windows = 0
    for i in range(0, len(lines), 500):
        chunk = [line.encode() for line in lines[i:i + 500]]
        counter.on_batch(parser.parse_batch(RecordBatch.data("p", chunk, range(i + 1, i + 1 + len(chunk)))))
        peak_seen = max(peak_seen, len(counter.seen))
        peak_windows = max(peak_windows, sum(c.frame[WINDOW_START].n_unique() for c in counter.open_counts()))
    assert peak_seen <= 2 * 11 * 60 + 2 * 500  # two generations of ~11 minutes of keys, plus batches
    assert peak_windows <= 2 + 20


def test_rx_operator_with_test_scheduler():
    scheduler = TestScheduler()
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK)
    b1 = RecordBatch.data("f", [row("a", BASE).encode(), b"garbage"], [1, 2])
    b2 = RecordBatch.data("f", [row("a", BASE + 2 * HOUR).encode()], [3])
    source = scheduler.create_hot_observable(
        ReactiveTest.on_next(210, b1), ReactiveTest.on_next(220, b2), ReactiveTest.on_next(230, RecordBatch.eof("f")),
        ReactiveTest.on_completed(240),
    )
    results = scheduler.start(lambda: source.pipe(parse_records(parser), count_windows(counter)))
    values = [m.value.value for m in results.messages if m.value.kind == "N"]
    assert [v.malformed for v in values] == [1, 0, 0]
    assert {(c.rollup, c.window_start_us) for c in window_rows(values[1])} >= {("customer_hourly", BASE)}
    final_hours = sorted(c.window_start_us for v in values for c in window_rows(v) if c.rollup == "customer_hourly")
    assert final_hours == [BASE, BASE + 2 * HOUR]
    assert results.messages[-1].value.kind == "C"


def test_rx_operator_keeps_partitions_apart():
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK)
    import reactivex

    batches = [
        RecordBatch.data("s1", [row("a", BASE + 3 * HOUR).encode()], [1]),
        RecordBatch.data("s2", [row("a", BASE).encode()], [1]),  # not late: s2 has its own watermark
        RecordBatch.eof("s1"), RecordBatch.eof("s2"),
    ]
    out = []
    reactivex.from_iterable(batches).pipe(parse_records(parser), count_windows(counter)).subscribe(out.append)
    assert sum(b.late for b in out) == 0
    assert sorted((c.partition, c.window_start_us) for b in out for c in window_rows(b) if c.rollup == "customer_hourly") == [
        ("s1", BASE + 3 * HOUR), ("s2", BASE)]


def test_a_child_partition_continues_its_parents_dedup_keys_and_watermark():
    """A reshard: the parents' records come again as INHERITED batches under
    the child's name, from their checkpoints on; they are not counted, but a
    re-send of one of them in the child is a duplicate, and what was late in
    a parent is late in the child. The child's own resume watermark (from its
    checkpoint) applies after them when it is higher."""
    import reactivex

    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK)
    first, second = row("a", BASE + 30 * MINUTE), row("b", BASE + 31 * MINUTE)
    batches = [
        RecordBatch.data("p1", [first.encode()], [0]),
        RecordBatch.data("p2", [second.encode()], [0]),
        RecordBatch.eof("p1"), RecordBatch.eof("p2"),
        dataclasses.replace(RecordBatch.inherited("c", [first.encode()], [0]), resume_watermark_us=BASE),
        RecordBatch.inherited("c", [second.encode(), b"garbage"], [0, 1]),
        dataclasses.replace(RecordBatch.data("c", [first.encode(), second.encode(), row("c", BASE + 20 * MINUTE).encode(),
                                                   row("d", BASE + 32 * MINUTE).encode()], [0, 1, 2, 3]),
                            resume_watermark_us=WATERMARK_MIN),
        RecordBatch.eof("c"),
    ]
    out = []
    reactivex.from_iterable(batches).pipe(parse_records(parser), count_windows(counter)).subscribe(out.append)
    child = [b for b in out if b.partition == "c"]
    assert [b.kind for b in child[:2]] == [BatchKind.INHERITED, BatchKind.INHERITED]
    assert not any(b.read or b.windows or b.dead_letters or len(b.events) for b in child[:2])
    assert child[2].duplicates == 2 and child[2].late == 1  # 00:20 is behind the inherited 00:21
    hourly = Counter()
    for b in out:
        for c in window_rows(b):
            if c.rollup == "customer_hourly":
                hourly[c.key] += c.count
    assert hourly == {("a",): 1, ("b",): 1, ("d",): 1}


def test_a_child_resumed_from_its_checkpoint_takes_the_higher_watermark():
    import reactivex

    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK)
    batches = [
        dataclasses.replace(RecordBatch.inherited("c", [row("a", BASE + 30 * MINUTE).encode()], [0]),
                            resume_watermark_us=BASE),
        dataclasses.replace(RecordBatch.data("c", [row("b", BASE + 25 * MINUTE).encode()], [7]),
                            resume_watermark_us=BASE + 26 * MINUTE),
    ]
    out = []
    reactivex.from_iterable(batches).pipe(parse_records(parser), count_windows(counter)).subscribe(out.append)
    assert out[1].late == 1 and out[1].watermark_us == BASE + 26 * MINUTE


# -- property: any batching gives the oracle's answer ---------------------------


events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["click", "view"]),
        st.integers(0, 5 * 60 * 60),  # seconds within 5 hours
        st.integers(0, 999),  # milliseconds
        st.sampled_from(["Z", "+00", "+05:30", "-0800", "+01"]),
        st.booleans(),  # re-send an earlier event
    ),
    max_size=300,
)


def render(t_us: int, offset: str) -> str:
    from datetime import datetime, timedelta, timezone

    sign = -1 if offset.startswith("-") else 1
    body = offset[1:].replace(":", "") if offset != "Z" else "0000"
    minutes = int(body[:2]) * 60 + int(body[2:] or 0)
    local = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=t_us) + timedelta(minutes=sign * minutes)
    return local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + offset


@settings(max_examples=150, deadline=None)
@given(events, st.lists(st.integers(1, 40), max_size=30), st.sampled_from([0, 60, 600, 3600]))
def test_counts_equal_the_oracle_for_any_batching(items, sizes, lateness_s):
    lines, sent = [], []
    for customer, etype, sec, ms, offset, resend in items:
        if resend and sent:
            lines.append(random.Random(sec).choice(sent))
            continue
        t = BASE + sec * 1_000_000 + ms * 1000
        line = f"{customer},{etype},{customer}{sec}{ms},{render(t, offset)}"
        lines.append(line)
        sent.append(line)
    expected = run_oracle(lines, lateness_s * 1_000_000, DEFAULT_ROLLUPS)
    counts, results = run_counter(lines, timedelta(seconds=lateness_s), sizes)
    for name in DEFAULT_ROLLUPS:
        assert counts[name] == Counter(expected.counts[name])
    assert sum(r.late for r in results) == expected.late
    assert sum(r.duplicates for r in results) == expected.duplicates
    assert sum(len(r.events) for r in results) == expected.valid


def _max_upsert(store: dict, closed) -> None:
    for c in closed:
        key = (c.rollup, c.window_start_us, c.key[0])
        store[key] = max(store.get(key, 0), c.count)


def _crash_and_replay(lines: list[str], size: int, crash_after: int, lateness_s: int) -> tuple[dict, list[int], tuple]:
    """Count `lines` in batches of `size` and crash after `crash_after` of
    them (only the final windows written so far survive), then replay from
    that batch's safe point with its watermark into the same max-upsert
    store: the store, the positions the replay took, and the safe point."""
    from tests.pipeline_harness import batches_of

    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(seconds=lateness_s), lambda: FAR_FUTURE_CLOCK)
    batches = [b for b in batches_of(lines, [size] * len(lines)) if b.kind is BatchKind.DATA]
    store: dict = {}
    first = counter.build("p")
    safe = (1, None)
    for batch in batches[:crash_after]:
        out = first.on_batch(parser.parse_batch(batch))
        _max_upsert(store, window_rows(out))
        safe = (out.safe_position, out.safe_watermark_us)
    replay = counter.build("p", resume_watermark_us=safe[1])
    taken: list[int] = []
    for batch in batches:
        keep = [(r, p) for r, p in zip(batch.records, batch.positions) if p >= safe[0]]
        if keep:
            records, positions = zip(*keep)
            out = replay.on_batch(parser.parse_batch(RecordBatch.data("p", records, positions)))
            taken.extend(out.events.frame["position"].to_list() if len(out.events) else [])
            _max_upsert(store, window_rows(out))
    _max_upsert(store, window_rows(replay.on_eof()))
    return store, taken, safe


@settings(max_examples=120, deadline=None)
@given(events, st.integers(1, 40), st.integers(0, 30), st.sampled_from([0, 60, 600]))
def test_a_crash_and_replay_from_the_safe_point_gives_the_oracle(items, size, crash_after, lateness_s):
    """Crash after some batch (only the final windows written so far survive),
    then replay from that batch's safe point with its watermark into the same
    max-upsert store: the counts must equal the oracle's, and the replay
    must take exactly the events the oracle takes from that point on (a
    re-send whose original lies before the safe point is still a duplicate:
    the raw events' archive and the Optimizely sink see each event once)."""
    lines = []
    for customer, etype, sec, ms, offset, resend in items:
        if resend and lines:
            lines.append(lines[sec % len(lines)])
            continue
        lines.append(f"{customer},{etype},{customer}{sec}{ms},{render(BASE + sec * 1_000_000 + ms * 1000, offset)}")
    store, taken, safe = _crash_and_replay(lines, size, crash_after, lateness_s)
    expected = run_oracle(lines, lateness_s * 1_000_000, DEFAULT_ROLLUPS)
    want = {(name, start, key): n for name in DEFAULT_ROLLUPS for (start, key), n in expected.counts[name].items()}
    assert {k: v for k, v in store.items() if v} == want
    assert taken == [p for p in expected.accepted_positions if p >= safe[0]]


def test_running_counts_of_open_windows_are_emitted_when_they_change():
    from streams.window_counter import WindowCounter
    from streams.windowing import EventClock

    now = [BASE]
    counter = WindowCounter(default_rollups(), EventClock(600_000_000), lambda: now[0],
                            provisional_interval_us=5_000_000).build("s")
    parser = EventsCsvParser()

    def feed(*lines, position=[0]):  # noqa: B006 - a counter kept between calls
        records = [line.encode() for line in lines]
        positions = range(position[0] + 1, position[0] + 1 + len(records))
        position[0] += len(records)
        return counter.on_batch(parser.parse_batch(RecordBatch.data("s", records, positions)))

    assert window_rows(feed(row("a", BASE), row("b", BASE))) == []  # not yet 5 s of wall time
    now[0] = BASE + 5_000_000
    out = feed(row("a", BASE + 1))
    assert sorted((c.rollup, c.key, c.count, c.final) for c in window_rows(out)) == [
        ("customer_hourly", ("a",), 2, False), ("customer_hourly", ("b",), 1, False),
        ("event_type_minutely", ("click",), 3, False)]
    now[0] = BASE + 10_000_000
    out = counter.on_batch(parser.parse_batch(RecordBatch.idle("s", 5)))
    assert window_rows(out) == []  # nothing changed
    now[0] = BASE + 15_000_000
    out = feed(row("b", BASE + 2))
    assert sorted((c.key, c.count) for c in window_rows(out) if c.rollup == "customer_hourly") == [(("b",), 2)]
    assert out.safe_position == 1  # provisional counts never move the safe point


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text(), st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999),
       st.dictionaries(st.text(min_size=1), st.one_of(st.text(), st.integers()), max_size=2))
def test_a_dead_letters_record_is_its_events_json(customer, etype, txn, t_us, properties):
    import json

    from streams.events import Event

    event = Event(customer, etype, txn, t_us, properties)
    assert event.to_letter_record() == json.dumps(event.to_record(), default=list).encode()


def test_a_replay_from_the_safe_point_still_knows_a_resend_whose_original_came_before_it():
    """o at 07:59, a new hour opens at 08:00:30, then q re-sends o while the
    07:00 window is open (a duplicate), then 08:10 closes it. The oldest
    open window now starts after o, but a replay from there would not know
    o and would take q: so the safe point stays at o's window."""
    at = lambda hhmmss: BASE + sum(int(v) * m for v, m in zip(hhmmss.split(":"), (3600, 60, 1))) * 1_000_000  # noqa: E731
    lines = [f"c1,click,t1,{format_utc(at('07:59:00'))}", f"c2,click,t2,{format_utc(at('08:00:30'))}",
             f"c1,click,t1,{format_utc(at('07:59:00'))}", f"c3,click,t3,{format_utc(at('08:10:00'))}",
             f"c4,click,t4,{format_utc(at('08:10:30'))}"]
    parser = EventsCsvParser()
    counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK)
    first = counter.build("p")
    safe = None
    for position, line in enumerate(lines[:4], start=1):
        out = first.on_batch(parser.parse_batch(RecordBatch.data("p", [line.encode()], [position])))
        safe = (out.safe_position, out.safe_watermark_us)
    assert safe[0] == 1  # o's window still pins it
    replay = counter.build("p", resume_watermark_us=safe[1])
    taken = []
    for position, line in enumerate(lines, start=1):
        if position >= safe[0]:
            out = replay.on_batch(parser.parse_batch(RecordBatch.data("p", [line.encode()], [position])))
            taken.extend(out.events.frame["position"].to_list() if len(out.events) else [])
    expected = run_oracle(lines, 10 * MINUTE, DEFAULT_ROLLUPS)
    assert expected.accepted_positions == [1, 2, 4, 5]
    assert taken == [p for p in expected.accepted_positions if p >= safe[0]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 4), st.booleans()), max_size=250),
       st.integers(1, 30), st.integers(0, 40), st.sampled_from([60, 300, 600]))
# At 00:59 an event, at 01:00:30 the next hour's first, then the first
# re-sent, then 01:10 closes the 00:00 hour: random steps rarely build it.
@example([(1500, 0, False), (1500, 0, False), (540, 0, False), (90, 1, False), (0, 1, True), (570, 2, False),
          (30, 3, False)], 2, 3, 600)
def test_a_replay_takes_what_the_first_run_took_when_re_sends_follow_their_originals(
        steps, size, crash_after, lateness_s):
    """Times mostly moving forward and re-sends of the last few events: the
    case where a re-send comes after a newer window opened, and its
    original's window closes before the checkpoint. A replay from any
    batch's safe point takes exactly the events the oracle takes from there."""

    lines: list[str] = []
    t = BASE
    for advance_s, back, resend in steps:
        if resend and lines:
            lines.append(lines[-1 - back % min(3, len(lines))])
            continue
        t += advance_s * 1_000_000
        lines.append(f"c{back},click,t{len(lines)},{format_utc(t)}")
    _, taken, safe = _crash_and_replay(lines, size, crash_after, lateness_s)
    expected = run_oracle(lines, lateness_s * 1_000_000, DEFAULT_ROLLUPS)
    assert taken == [p for p in expected.accepted_positions if p >= safe[0]]
