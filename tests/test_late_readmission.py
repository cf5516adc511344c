"""Re-admitting late events counts each event once.

A late event whose key its partition has already counted (the raw-event
archive holds it) is a re-sent duplicate: the summary says so instead of
naming a lateness that "would have kept" it, and `replay-dead-letter` does not
send it. For genuinely new late events, the summary names the lateness that
counts every one of them; re-running with it gives the oracle's counts at that
lateness, and so does replaying them into a spool and consuming it.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from bench.generate_events import generate_sparse, write_events
from consumers.counted_keys import CountedKeys, RunKeys, keys_frame, keys_of_records
from consumers.local_object_store import LocalObjectStore
from consumers.raw_event_writer import RawEventWriter
from consumers.run_summary import format_lateness, round_up_lateness
from streams.batches import BatchKind, CountedBatch
from streams.event_columns import EventColumns
from streams.events import Event, Reason
from streams.pipeline import make_counter
from streams.rollups import RollupSpec
from streams.utc import MIN_US, format_utc
from streams.windowing import TumblingWindower
from tests.conftest import run_cli
from tests.oracle import DEFAULT_ROLLUPS, HOUR, MINUTE, event_of_line, file_lines, run_oracle, stamp_to_us
from tests.pipeline_harness import FAR_FUTURE_CLOCK, batches_of, default_rollups, run_counter, window_rows

LATENESS = 10 * MINUTE


def exported(data_dir: Path, rollup: str, *extra: str) -> Counter:
    result = run_cli("export", "--rollup", rollup, "--data-dir", str(data_dir), *extra)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    return Counter({(stamp_to_us(r[0]), r[1]): int(r[2]) for r in rows})


def assert_counts_equal_oracle(data_dir: Path, expected) -> None:
    for rollup in DEFAULT_ROLLUPS:
        assert exported(data_dir, rollup) == Counter(expected.counts[rollup]), rollup


def run_json(path: Path, data_dir: Path, *extra: str) -> dict:
    result = run_cli("run", "--input", str(path), "--data-dir", str(data_dir), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def late_note(path: Path, data_dir: Path, *extra: str) -> str:
    result = run_cli("run", "--input", str(path), "--data-dir", str(data_dir), *extra)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, result.stdout
    return notes[0]


def replay_and_consume(data_dir: Path, lateness: str = "3h") -> dict[str, int]:
    """The README's recipe: re-send the late dead letters to a spool, then
    consume it with a larger lateness into the same data directory."""
    spool = f"spool:{data_dir / 'replay-spool'}"
    replay = run_cli("replay-dead-letter", str(data_dir / "dead_letters.ndjson"), "--to", spool, "--reason", "late",
                     "--data-dir", str(data_dir))
    assert replay.returncode == 0, replay.stderr
    counts = {name.strip(): int(n.replace(",", "")) for name, n in
              (part.split(":") for part in replay.stdout.strip().split(", "))}
    consume = run_cli("consume", "--from", spool, "--drain", "0.5", "--lateness", lateness, "--data-dir", str(data_dir),
                      "--json")
    assert consume.returncode == 0, consume.stderr
    return counts


def late_events(lines: list[bytes], lateness_us: int) -> list[tuple[tuple, int]]:
    """(key, lag) of every late event of a file, one record at a time: the lag
    is how far it is behind the newest earlier event, the smallest lateness
    that admits it. Written from the oracle's rules, not from Rivulet's."""
    newest = None
    out = []
    for raw in lines:
        event = event_of_line(raw)
        if not event:
            continue
        t = event[3]
        if newest is not None and t < newest - lateness_us:
            out.append((event, newest - t))
            continue
        newest = t if newest is None else max(newest, t)
    return out


def counted_keys_of(lines: list[bytes], lateness_us: int) -> set[tuple]:
    """The keys the oracle counts at `lateness_us`."""
    newest, seen = None, set()
    for raw in lines:
        event = event_of_line(raw)
        if not event:
            continue
        if newest is not None and event[3] < newest - lateness_us:
            continue
        seen.add(event)
        newest = event[3] if newest is None else max(newest, event[3])
    return seen


# -- the scenario: a sparse file whose late events are all re-sent duplicates -------


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "sparse.csv"
    write_events(str(path), 200_000, shape="sparse")
    return path, file_lines(path.read_bytes())


def test_sparse_late_events_are_reported_as_resent_duplicates_and_replay_adds_nothing(sparse, tmp_path):
    path, lines = sparse
    expected = run_oracle(lines, LATENESS, DEFAULT_ROLLUPS)
    assert expected.late > 1000
    counted = counted_keys_of(lines, LATENESS)
    assert all(key in counted for key, _ in late_events(lines, LATENESS)), "the generator's late rows are re-sends"

    summary = run_json(path, tmp_path)
    assert (summary["valid"], summary["late"]) == (expected.valid, expected.late)
    assert summary["late_duplicates"] == expected.late
    assert summary["lateness_needed"] is None
    note = late_note(path, tmp_path / "again")
    assert note == (f"note: {expected.late:,} late event(s) were dead-lettered under --lateness 10m: "
                    "all are re-sent duplicates of events already counted (nothing lost)")
    letters = [json.loads(line) for line in (tmp_path / "dead_letters.ndjson").read_text().splitlines()]
    late = [d for d in letters if d["reason"] == "late"]
    assert len(late) == expected.late and all(d["late_by_us"] > 0 for d in late)

    counts = replay_and_consume(tmp_path)
    assert counts["replayed"] == 0 and counts["already counted"] == expected.late
    assert_counts_equal_oracle(tmp_path, expected)
    assert expected.counts == run_oracle(lines, 3 * HOUR, DEFAULT_ROLLUPS).counts


# -- a file with genuinely new late events -----------------------------------------------------


NEW_LATE = 12
LARGEST_LAG = timedelta(minutes=46, seconds=30)  # rounds up to 47m


@pytest.fixture(scope="module")
def with_new_late(tmp_path_factory):
    """A sparse file with 12 new late events (never sent on time), lags from
    15 minutes to 46m30s behind the newest earlier row, three of them re-sent
    once more later (later still, so even more behind)."""
    rng = random.Random(3)
    lines = list(generate_sparse(30_000, seed=8))
    spots = sorted(rng.sample(range(2_000, len(lines) - 2_000), NEW_LATE))
    lags = [LARGEST_LAG] + [timedelta(seconds=rng.randrange(15 * 60, 46 * 60)) for _ in range(NEW_LATE - 1)]
    rng.shuffle(lags)
    inserts: list[tuple[int, str]] = []
    for n, (spot, lag) in enumerate(zip(spots, lags)):
        newest = max(e[3] for e in map(event_of_line, lines[:spot]) if e)
        line = f"c{n:05d},purchase,new-late-{n},{format_utc(newest - lag // timedelta(microseconds=1))}"
        inserts.append((spot, line))
        if n % 4 == 0:
            inserts.append((spot + 500, line))
    for spot, line in sorted(inserts, reverse=True):
        lines.insert(spot, line)
    path = tmp_path_factory.mktemp("new-late") / "new-late.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, file_lines(path.read_bytes())


def test_new_late_events_name_the_lateness_that_counts_them(with_new_late, tmp_path):
    path, lines = with_new_late
    expected = run_oracle(lines, LATENESS, DEFAULT_ROLLUPS)
    counted = counted_keys_of(lines, LATENESS)
    lags: dict[tuple, int] = {}
    for key, lag in late_events(lines, LATENESS):
        if key not in counted:
            lags[key] = min(lag, lags.get(key, lag))
    assert len(lags) == NEW_LATE and max(lags.values()) == LARGEST_LAG // timedelta(microseconds=1)

    summary = run_json(path, tmp_path)
    assert summary["late"] == expected.late
    assert summary["late_duplicates"] == expected.late - NEW_LATE
    assert summary["lateness_needed"] == "47m"
    note = late_note(path, tmp_path / "again")
    assert note.endswith(f"{expected.late - NEW_LATE:,} are re-sent duplicates, {NEW_LATE} are new; "
                         "--lateness 47m would have counted them")

    # The named lateness counts every new one: the oracle at 47m has them
    # all, and re-running with it gives the oracle's counts.
    at_named = run_oracle(lines, 47 * MINUTE, DEFAULT_ROLLUPS)
    assert at_named.valid == expected.valid + NEW_LATE
    assert run_oracle(lines, 46 * MINUTE, DEFAULT_ROLLUPS).valid < at_named.valid  # and it is the smallest
    rerun = run_json(path, tmp_path / "rerun", "--lateness", "47m")
    assert rerun["valid"] == at_named.valid and rerun["late"] == at_named.late
    assert rerun["late_duplicates"] == rerun["late"] and rerun["lateness_needed"] is None
    assert_counts_equal_oracle(tmp_path / "rerun", at_named)

    # Replaying the late dead letters sends only the new ones, once each.
    counts = replay_and_consume(tmp_path)
    assert counts["replayed"] == NEW_LATE and counts["already counted"] == expected.late - NEW_LATE
    assert_counts_equal_oracle(tmp_path, at_named)

    # Replaying the same file again sends nothing: the first replay's events
    # are archived under the spool partition that consumed them.
    again = replay_and_consume(tmp_path)
    assert again["replayed"] == 0 and again["already counted"] == expected.late
    assert_counts_equal_oracle(tmp_path, at_named)


# -- the parts ------------------------------------------------------------------------------------


def test_late_letters_carry_how_far_behind_they_were_whatever_the_batching():
    base = stamp_to_us("2021-03-01T00:00:00Z")
    lines = [f"a,click,t{i},{format_utc(base + t)}" for i, t in
             enumerate([30 * MINUTE, 21 * MINUTE, 19 * MINUTE, 5 * MINUTE, 40 * MINUTE, 12 * MINUTE])]
    for sizes in ([1] * 6, [6], [2, 4], [3, 3]):
        _, results = run_counter(lines, timedelta(minutes=10), sizes=sizes)
        late = [(d.position, d.late_by_us) for r in results for d in r.dead_letters if d.reason is Reason.LATE]
        # behind the watermark (newest − 10m): 20m − 19m, 20m − 5m, 30m − 12m
        assert late == [(3, MINUTE), (4, 15 * MINUTE), (6, 18 * MINUTE)], sizes
    other = [d for r in results for d in r.dead_letters if d.reason is not Reason.LATE]
    assert all(d.late_by_us is None for d in other)


def test_dead_letter_lines_without_late_by_still_replay(tmp_path):
    """Files written before `late_by_us` existed replay as before; a letter
    whose key its partition already counted is not sent."""
    sample = tmp_path / "in.csv"
    sample.write_text("a,click,t1,2021-03-01T00:30:00Z\na,click,t2,2021-03-01T00:31:00Z\n")
    assert run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path)).returncode == 0
    source = pl.read_parquet(next((tmp_path / "store" / "events").rglob("*.parquet")))["partition"][0]
    old = tmp_path / "old.ndjson"
    record = lambda txn: json.dumps({"v": 1, "customer_id": "a", "event_type": "click", "transaction_id": txn,  # noqa: E731
                                     "timestamp": "2021-03-01T00:30:00.000000Z"})
    old.write_text("".join(json.dumps({"reason": "late", "error": "older than the partition watermark",
                                       "source": source, "position": n, "record": record(txn)}) + "\n"
                           for n, txn in [(3, "t1"), (4, "t9"), (5, "t9")]))
    result = run_cli("replay-dead-letter", str(old), "--to", f"spool:{tmp_path / 'spool'}", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "replayed: 1, still failing: 0, skipped: 0, already counted: 2"


def test_without_raw_events_late_letters_are_refused_and_the_summary_says_it_did_not_check(tmp_path):
    env = {"RIVULET__RAW_EVENTS__ENABLED": "false"}
    sample = tmp_path / "in.csv"
    sample.write_text("a,click,t1,2021-03-01T00:30:00Z\na,click,t2,2021-03-01T00:01:00Z\n")
    result = run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert ("1 late event(s) were dead-lettered under --lateness 10m; --lateness 29m would have admitted them, "
            "but re-sent duplicates among them (which count once) were not told apart: raw events are not archived"
            ) in result.stdout
    summary = json.loads(run_cli("run", "--input", str(sample), "--data-dir", str(tmp_path / "j"), "--json",
                                 env=env).stdout)
    assert summary["late_duplicates"] is None and summary["lateness_needed"] is None
    spool = tmp_path / "spool"
    refused = run_cli("replay-dead-letter", str(tmp_path / "dead_letters.ndjson"), "--to", f"spool:{spool}",
                      "--data-dir", str(tmp_path), env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "raw events are not archived" in refused.stderr and not spool.exists()
    other = run_cli("replay-dead-letter", str(tmp_path / "dead_letters.ndjson"), "--to", f"spool:{spool}",
                    "--reason", "malformed", "--data-dir", str(tmp_path), env=env)
    assert other.returncode == 0 and "replayed: 0" in other.stdout


def _event(customer: str, txn: str, t: int, partition: str, position: int) -> Event:
    return Event(customer, "click", txn, t, {}, partition, position)


@pytest.mark.parametrize("fmt", ["parquet", "ndjson-gzip"])
def test_counted_keys_reads_only_its_partition_and_hours(tmp_path, fmt):
    store = LocalObjectStore(tmp_path)
    writer = RawEventWriter(store, format=fmt)
    base = stamp_to_us("2021-03-01T04:59:59.999999Z")
    for partition, events in {
        "a": [_event("c", "t1", base, "a", 1), _event("c", "t2", base + 1, "a", 2)],
        "a-1": [_event("c", "t3", base, "a-1", 1)],  # its object names start like those of "a"
        "b/x": [_event("c", "t1", base + 1, "b/x", 1)],
    }.items():
        writer.write(CountedBatch(partition, BatchKind.DATA, EventColumns.from_events(partition, events)))
    writer.close()
    keys = keys_frame([("c", "click", "t1", base), ("c", "click", "t2", base + 1), ("c", "click", "t3", base),
                       ("c", "click", "t1", base + 1), ("c", "click", "t2", base + 2), None])
    counted = CountedKeys(store)
    assert counted.counted("a", keys).to_list() == [True, True, False, False, False, False]
    assert counted.counted("a-1", keys).to_list() == [False, False, True, False, False, False]
    assert counted.counted("b/x", keys).to_list() == [False, False, False, True, False, False]
    assert counted.counted("nothing", keys).to_list() == [False] * 6
    reads = counted.objects_read
    counted.counted("a", keys.head(1))
    assert counted.objects_read - reads == 1  # one hour, one object of that partition
    records = [json.dumps(_event("c", "t1", base, "a", 1).to_record()).encode(), b"not json", b'{"customer_id": 1}']
    assert counted.counted("a", keys_of_records(records)).to_list() == [True, False, False]


def test_lateness_is_rounded_up_to_what_people_write():
    assert format_lateness(round_up_lateness(1)) == "1s"
    assert format_lateness(round_up_lateness(59_500_000)) == "1m"
    assert format_lateness(round_up_lateness(46 * MINUTE + 30_000_000)) == "47m"
    assert format_lateness(round_up_lateness(2 * HOUR - 1)) == "2h"
    assert format_lateness(round_up_lateness(50 * HOUR + 1)) == "51h"


# -- windows that do not divide back to year 1 ---------------------------------------------------


WEEK = 7 * 24 * HOUR


def test_a_window_that_would_start_before_year_one_starts_at_year_one():
    assert TumblingWindower(WEEK).start_of(MIN_US) == MIN_US
    assert TumblingWindower(WEEK).start_of(MIN_US + 10 * 24 * HOUR) % WEEK == 0
    spec = RollupSpec("customer_weekly", ("customer_id",), TumblingWindower(WEEK))
    properties = RollupSpec("plan_weekly", ("plan",), TumblingWindower(WEEK))  # the per-record path
    counter = make_counter((spec, properties, *default_rollups()), timedelta(minutes=10),
                           lambda: FAR_FUTURE_CLOCK).build("p")
    lines = [f'{{"customer_id":"a","event_type":"x","transaction_id":"t{i}","timestamp":"{format_utc(MIN_US + t)}",'
             f'"plan":"p"}}' for i, t in enumerate([0, 2 * 24 * HOUR, 3 * 24 * HOUR - 1, 9 * 24 * HOUR])]
    from streams.formats import make_parser

    parser = make_parser("ndjson", None, 1 << 20)
    results = [counter.on_batch(parser.parse_batch(b)) for b in batches_of(lines, [4])]
    weekly = {(c.rollup, c.window_start_us): c.count for r in results for c in window_rows(r) if c.rollup.endswith("weekly")}
    # 0001-01-01 is a Monday; epoch weeks start on Thursdays: the first one is Mon to Wed.
    first_thursday = MIN_US + 3 * 24 * HOUR
    assert weekly == {("customer_weekly", MIN_US): 3, ("customer_weekly", first_thursday): 1,
                      ("plan_weekly", MIN_US): 3, ("plan_weekly", first_thursday): 1}


def test_a_weekly_rollup_over_year_one_runs_and_exports(tmp_path):
    config = tmp_path / "week.toml"
    config.write_text('[pipeline]\nbackend = "local"\n[rollups.customer_weekly]\nkey = ["customer_id"]\nwindow = "7d"\n'
                      '[query]\nrollup = "customer_weekly"\n')
    sample = tmp_path / "y1.csv"
    sample.write_text("c1,view,t1,0001-01-01T00:00:00Z\nc1,view,t2,0001-01-03T00:00:00Z\n"
                      "c1,view,t3,0001-01-04T00:00:00Z\n")
    result = run_cli("run", "--config", str(config), "--input", str(sample), "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] == 3
    exported_rows = run_cli("export", "--config", str(config), "--rollup", "customer_weekly", "--data-dir", str(tmp_path))
    assert exported_rows.stdout.splitlines() == ["window_start,customer_id,count", "0001-01-01T00:00:00Z,c1,2",
                                                 "0001-01-04T00:00:00Z,c1,1"]
    assert list((tmp_path / "store" / "aggregates" / "customer_weekly").glob("dt=0001-01-01/hour=0/*.parquet"))


@pytest.mark.timeout(60)
def test_counted_keys_over_s3(aws_env):
    from consumers.s3_object_store import S3ObjectStore
    from aws.resources import ensure_bucket
    from tests.aws_fixtures import client, unique

    s3, name = client("s3", aws_env), unique("bkt")
    ensure_bucket(s3, name, True)
    store = S3ObjectStore(s3, name, prefix="rivulet")
    writer = RawEventWriter(store)
    base = stamp_to_us("2021-03-01T04:00:00Z")
    events = [_event("c", f"t{i}", base + i * HOUR, "shard-1", i) for i in range(3)]
    writer.write(CountedBatch("shard-1", BatchKind.DATA, EventColumns.from_events("shard-1", events)))
    writer.close()
    keys = keys_frame([e.dedup_key for e in events] + [("c", "click", "t0", base + 1)])
    assert CountedKeys(store).counted("shard-1", keys).to_list() == [True, True, True, False]
    assert CountedKeys(store).counted("shard-10", keys).to_list() == [False] * 4


def test_without_an_archive_to_check_late_events_are_only_counted():
    """Counts-only (no raw events): no check will come, so the summary keeps
    nothing of the late events but their number."""
    from consumers.run_summary import RunSummary

    base = stamp_to_us("2021-03-01T00:00:00Z")
    lines = [f"a,click,t{i},{format_utc(base + t)}" for i, t in enumerate([HOUR, 1, 2, 3])]
    _, results = run_counter(lines, timedelta(minutes=10))
    keeping, counting = RunSummary(), RunSummary(keep_late=False)
    for result in results:
        keeping.add(result)
        counting.add(result)
    assert keeping.late == counting.late == 3
    assert keeping.late_kept == 3 and sum(keys.height for _, keys in keeping.late_keys) == 3
    assert counting.late_seen == counting.late_kept == 0 and not counting.late_keys


def test_past_the_limit_the_summary_says_it_did_not_check(monkeypatch, tmp_path):
    import consumers.run_summary as run_summary

    monkeypatch.setattr(run_summary, "MAX_LATE_CHECKED", 2)
    base = stamp_to_us("2021-03-01T00:00:00Z")
    lines = [f"a,click,t{i},{format_utc(base + t)}" for i, t in enumerate([HOUR, 1, 2, 3])]
    _, results = run_counter(lines, timedelta(minutes=10))
    summary = run_summary.RunSummary()
    for result in results:
        summary.add(result)
    summary.check_late(CountedKeys(LocalObjectStore(tmp_path)), timedelta(minutes=10))
    assert summary.late == 3 and summary.late_duplicates is None and not summary.late_keys
    assert summary.render(timedelta(minutes=10)).splitlines()[-2].endswith(
        "--lateness 1h would have admitted them, but re-sent duplicates among them (which count once) were not "
        "told apart: more than 2 late events")


# -- the run's own keys answer the late check as the archive would ------------------------------


def _keys_batch(partition: str, events: list[Event], restarted: bool = False) -> CountedBatch:
    return CountedBatch(partition, BatchKind.DATA, EventColumns.from_events(partition, events), restarted=restarted)


def test_run_keys_keep_to_their_budget_counting_each_strings_view():
    """A String value is a 16-byte view (its text inline up to 12 bytes:
    Arrow's BinaryView layout), which polars' size estimate leaves out: on
    short keys, counted by the estimate alone, the keys took more than
    twice their budget."""
    budget = 200_000
    run = RunKeys(max_bytes=budget)
    base = stamp_to_us("2021-03-01T00:00:00Z")
    for batch in range(20):
        events = [Event(f"c{i % 97}", "view", f"t{batch}-{i}", base + i, {}, "p", batch * 1_000 + i)
                  for i in range(1_000)]
        run.add(_keys_batch("p", events))
    held = sum(frame.height for _, frame, _ in run._frames)
    text = sum(frame.select(pl.col(pl.String).str.len_bytes().cast(pl.Int64).sum()).sum_horizontal().item()
               for _, frame, _ in run._frames)
    assert 0 < held < 20_000
    assert held * (3 * 16 + 8) + text <= budget * 1.05


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_run_keys_answer_every_key_as_the_archive_does(tmp_path, seed):
    """Per key, `counted(partition, keys, run)` equals reading the archive and
    a plain set of what the test archived: with keys of an earlier run (only
    in the archive), of this run, of the other partition, new ones and nulls;
    a partition that restarts from its checkpoint and replays what the
    writer took, both flushed and buffered (archived once); and budgets that
    forget some or all keys."""
    rng = random.Random(seed)
    base = stamp_to_us("2021-03-01T00:00:00Z")
    parts = ("kinesis:s/shardId-0", "kinesis:s/shardId-1")
    serial = iter(range(1, 1 << 30))

    def events(partition: str, n: int, hours: int) -> list[Event]:
        return [Event(f"c{rng.randrange(40)}", rng.choice(["click", "view"]), f"t{next(serial)}",
                      base + rng.randrange(hours * HOUR), {}, partition, next(serial)) for _ in range(n)]

    store = LocalObjectStore(tmp_path)
    now = [0.0]
    writer = RawEventWriter(store, clock=lambda: now[0])  # buffers age out only when `cut` says

    def cut() -> None:  # every buffer a minute old: written
        now[0] += 60
        writer.write(CountedBatch(parts[0], BatchKind.IDLE))

    archive: dict[str, set] = {p: set() for p in parts}
    for partition in parts:  # an earlier run
        earlier = events(partition, 120, 6)
        writer.write(_keys_batch(partition, earlier))
        archive[partition].update(e.dedup_key for e in earlier)
    cut()

    runs = [RunKeys(), RunKeys(max_bytes=4_000), RunKeys(max_bytes=0)]
    this_run: dict[str, list[Event]] = {p: [] for p in parts}
    since_restart: dict[str, list[Event]] = {p: [] for p in parts}

    def feed(batch: CountedBatch) -> None:  # as the fan-out does: the sinks, then the summary
        writer.write(batch)
        for run in runs:
            run.add(batch)

    for step in range(6):
        for partition in parts:
            batch = events(partition, 40, 8)
            restarted = partition == parts[1] and step == 4
            if restarted:  # a replay from step 2 (written) on: step 3 is still buffered
                batch = this_run[partition][-80:] + batch
            feed(_keys_batch(partition, batch, restarted=restarted))
            this_run[partition].extend(batch)
            since_restart[partition] = (batch if restarted else since_restart[partition] + batch)
            archive[partition].update(e.dedup_key for e in batch)
        if step == 2:
            cut()
    writer.close()
    # The replay is archived once: each (partition, position) in one row.
    rows = pl.concat([pl.read_parquet(store.get(key)) for key in store.list()])
    assert rows.select("partition", "position").is_unique().all()
    assert rows.height == 2 * 120 + sum(len({e.position for e in this_run[p]}) for p in parts)

    asked = [e.dedup_key for p in parts for e in this_run[p]]
    asked += [key for p in parts for key in archive[p]]
    asked += [("c1", "click", f"new{i}", base + rng.randrange(8 * HOUR)) for i in range(30)]
    asked += [(c, t, x, us + 1) for c, t, x, us in asked[:20]]
    rng.shuffle(asked)
    keys = keys_frame(asked + [None])
    for partition in parts:
        expected = [key in archive[partition] for key in asked] + [False]
        read_old = CountedKeys(store)
        assert read_old.counted(partition, keys).to_list() == expected
        reads = []
        for run in runs:
            read_new = CountedKeys(store)
            assert read_new.counted(partition, keys, run).to_list() == expected, run.max_bytes
            reads.append(read_new.objects_read)
        assert reads[0] <= reads[1] <= reads[2] == read_old.objects_read
        # What this run counted since the partition last restarted needs no read with the whole run remembered.
        mine = keys_frame([e.dedup_key for e in since_restart[partition]])
        read_mine = CountedKeys(store)
        assert read_mine.counted(partition, mine, runs[0]).all() and read_mine.objects_read == 0
    assert runs[1].holds(parts[0], keys).sum() < runs[0].holds(parts[0], keys).sum()


def test_summary_with_run_keys_splits_late_events_as_the_oracle_does(tmp_path):
    """A second run whose late events are re-sends of its own events, re-sends
    of the earlier run's (only in the archive) and new ones: the summary that
    remembers its keys reads fewer archive objects and says what the summary
    reading the archive says, and both what a plain computation over the two
    files says."""
    from consumers.run_summary import RunSummary

    rng = random.Random(11)
    lines = list(generate_sparse(8_000, seed=5))
    first, second = lines[:4_000], lines[4_000:]
    for _ in range(25):  # re-sends of the first run's events, days behind
        second.insert(rng.randrange(100, len(second)), rng.choice(first[:3_000]))
    for n in range(8):  # new late events, 15 to 50 minutes behind the newest earlier row
        spot = rng.randrange(500, len(second))
        newest = max(e[3] for e in map(event_of_line, second[:spot]) if e)
        second.insert(spot, f"c{n:05d},purchase,fresh-{n},{format_utc(newest - rng.randrange(15, 50) * MINUTE)}")
    store = LocalObjectStore(tmp_path)

    def run(rows: list[str], summaries: list) -> None:
        writer = RawEventWriter(store)
        counter = make_counter(default_rollups(), timedelta(minutes=10), lambda: FAR_FUTURE_CLOCK).build("p")
        from streams.csv_parser import EventsCsvParser

        parser = EventsCsvParser()
        for batch in batches_of(rows, [500] * 100):
            result = counter.on_batch(parser.parse_batch(batch))
            writer.write(result)
            for summary in summaries:
                summary.add(result)
        writer.close()

    run(first, [])
    remembering, reading = RunSummary(run_keys=RunKeys()), RunSummary()
    # About 1,000 keys: by the end it has forgotten most of the run, but not
    # the originals of the run's own re-sends when each came.
    forgetting = RunSummary(run_keys=RunKeys(max_bytes=60_000))
    run(second, [remembering, reading, forgetting])
    by_run_keys, by_archive, by_recent_keys = CountedKeys(store), CountedKeys(store), CountedKeys(store)
    remembering.check_late(by_run_keys, timedelta(minutes=10))
    reading.check_late(by_archive, timedelta(minutes=10))
    forgetting.check_late(by_recent_keys, timedelta(minutes=10))

    archived = counted_keys_of(file_lines("\n".join(first).encode()), LATENESS) | counted_keys_of(
        file_lines("\n".join(second).encode()), LATENESS)
    late = late_events(file_lines("\n".join(second).encode()), LATENESS)
    lags: dict[tuple, int] = {}
    for key, lag in late:
        if key not in archived:
            lags[key] = min(lag, lags.get(key, lag))
    assert len(lags) == 8 and len(late) > 60
    for summary in (remembering, reading, forgetting):
        assert summary.late == len(late)
        assert summary.late_duplicates == len(late) - len(lags)
        assert summary.lateness_needed == round_up_lateness(max(lags.values()))
    assert 0 < by_run_keys.objects_read < by_archive.objects_read
    assert by_recent_keys.objects_read == by_run_keys.objects_read
    assert forgetting.late_resent > len(late) - len(lags) - 25  # the run's own re-sends, told apart as they came
