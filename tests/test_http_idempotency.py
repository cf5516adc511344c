"""Issue 13, items 1 and 10: a resent event_id counts once (the idempotency
ledger), and the collector never answers 200 for an event the daemon would
drop as late."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import pytest

from consumers.sqlite_count_store import SqliteCountStore
from config.transports import open_writer
from service.idempotency import IdempotencyLedger
from tests.test_http_support import Clock, RecordingWriter, drain_spool, make_settings, running_service

pytestmark = pytest.mark.timeout(120)

HOUR_US = 3_600_000_000


def total(data_dir: Path, user: str = "ethan") -> int:
    store = SqliteCountStore(data_dir / "counts.sqlite3")
    try:
        return sum(count for _, count in store.buckets("customer_hourly", (user,), 0, 1 << 62))
    finally:
        store.close()


def dead_letter_reasons(data_dir: Path) -> list[str]:
    path = data_dir / "dead_letters.ndjson"
    if not path.exists():
        return []
    return [json.loads(line)["reason"] for line in path.read_text().splitlines() if line.strip()]


def test_a_retried_click_counts_once(tmp_path: Path) -> None:
    """The issue's reproduction: the same event_id twice, no timestamp."""
    click = {"session_id": "s", "button_id": "B3", "event_id": "retry-1"}
    with running_service(tmp_path) as svc:
        client = svc.client("ethan")
        first = client.post("/button/click", json=click)
        assert first.json() == {"message": "Received", "accepted": 1}
        again = client.post("/button/click", json=click)
        assert again.status_code == 200
        assert again.json() == {"message": "Duplicate", "accepted": 0, "duplicates": 1, "duplicate_event_ids": ["retry-1"]}
        # Another user's event_id is another event.
        assert svc.client("mia").post("/button/click", json=click).json()["accepted"] == 1
        drain_spool(svc.data_dir)
        assert client.get("/button/click/count", params={"button_id": "B3"}).json() == {"count": 1}
    assert total(svc.data_dir) == 1 and total(svc.data_dir, "mia") == 1


def test_bulk_resends_count_once(tmp_path: Path) -> None:
    """2,000 events, 500 of them resent in later batches (and some twice in one
    batch): 2,000 counted, and every resend reported."""
    rng = random.Random(13)
    events = [{"event_type": "view", "event_id": f"e-{i}", "page": i % 7} for i in range(2000)]
    resent = rng.sample(events, 500)
    with running_service(tmp_path) as svc:
        client = svc.client("ethan")
        accepted = duplicates = 0
        for start in range(0, 2000, 250):
            batch = events[start : start + 250]
            answer = client.post("/events", json=batch).json()
            accepted += answer["accepted"]
        order = resent + resent[:20]  # 20 of them twice in the same request
        rng.shuffle(order)
        for start in range(0, len(order), 130):
            answer = client.post("/events", json=order[start : start + 130]).json()
            accepted += answer["accepted"]
            duplicates += answer.get("duplicates", 0)
            assert answer["accepted"] == 0 and answer["message"] == "Duplicate"
        assert accepted == 2000 and duplicates == 520
        drain_spool(svc.data_dir)
    assert total(svc.data_dir) == 2000


def test_a_resend_in_the_same_request_and_new_events_mixed(tmp_path: Path) -> None:
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer) as svc:
        client = svc.client("ethan")
        client.post("/events", json=[{"event_type": "a", "event_id": "one"}])
        answer = client.post("/events", json=[{"event_type": "a", "event_id": "two"}, {"event_type": "a", "event_id": "one"},
                                               {"event_type": "a"}, {"event_type": "a", "event_id": "two"}]).json()
        assert answer == {"message": "Received", "accepted": 2, "duplicates": 2, "duplicate_event_ids": ["one", "two"]}
    ids = [json.loads(r)["transaction_id"] for r in writer.records]
    assert ids[:2] == ["one", "two"] and len(ids) == 3


def test_the_ledger_is_durable_and_has_a_retention(tmp_path: Path) -> None:
    clock = Clock("2026-01-01T00:00:00Z")
    click = {"session_id": "s", "button_id": "B", "event_id": "k"}
    with running_service(tmp_path, clock_us=clock) as svc:
        assert svc.client("ethan").post("/button/click", json=click).json()["accepted"] == 1
    # A new server process on the same data directory still knows the key ...
    with running_service(tmp_path, clock_us=clock) as svc:
        clock.advance(23 * 3600)
        assert svc.client("ethan").post("/button/click", json=click).json()["message"] == "Duplicate"
        # ... until the retention (24 h from the first attempt) has passed.
        clock.advance(3600 + 1)
        assert svc.client("ethan").post("/button/click", json=click).json() == {"message": "Received", "accepted": 1}
    with running_service(tmp_path, clock_us=clock, idempotency_retention="1h") as svc:
        clock.advance(1800)
        assert svc.client("ethan").post("/button/click", json=click).json()["message"] == "Duplicate"
        clock.advance(1801)
        assert svc.client("ethan").post("/button/click", json=click).json()["accepted"] == 1


class FlakyWriter(RecordingWriter):
    """Fails the first `failures` sends after writing them (a Kinesis put
    that timed out on the way back): the collector cannot know they arrived."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, records: Sequence[bytes]) -> int:
        self.records.extend(records)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("timed out")
        return len(records)


def test_an_unknown_outcome_is_resent_byte_for_byte(tmp_path: Path) -> None:
    """After a send that may have arrived, the retry sends the very same
    record (same transaction id and time), which the daemon counts once."""
    writer = FlakyWriter(failures=1)
    clock = Clock("2026-01-01T00:00:00Z")
    with running_service(tmp_path, writer=writer, clock_us=clock) as svc:
        client = svc.client("ethan")
        event = {"event_type": "pay", "event_id": "p-1"}
        assert client.post("/events", json=event).status_code == 503
        clock.advance(5)
        assert client.post("/events", json=event).json() == {"message": "Received", "accepted": 1}
        assert client.post("/events", json=event).json()["message"] == "Duplicate"
    first, second = writer.records
    assert first == second


def test_a_failed_spool_send_forgets_the_claim(tmp_path: Path) -> None:
    """A spool send is all-or-nothing: after a failed one the retry is new."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir)
    spool = open_writer(f"spool:{data_dir / 'spool'}", settings=settings, create_resources=False, max_pending=1)
    spool.send([b'{"filler": 1}'])  # a reader group ahead of nothing: the spool is full
    from producers.spool import SpoolReader

    SpoolReader(data_dir / "spool", group="default").close()
    spool.block_timeout = 0.1
    with running_service(tmp_path, writer=spool) as svc:
        client = svc.client("ethan")
        click = {"session_id": "s", "button_id": "B", "event_id": "k"}
        assert client.post("/button/click", json=click).status_code == 503
        spool.max_pending = 0  # room again
        assert client.post("/button/click", json=click).json() == {"message": "Received", "accepted": 1}


def test_ledger_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Two ledgers on one file (two worker processes): each key is new once."""
    from service.idempotency import Claim

    a = IdempotencyLedger(tmp_path / "l.sqlite3", 24 * HOUR_US)
    b = IdempotencyLedger(tmp_path / "l.sqlite3", 24 * HOUR_US)
    claims = [Claim("u", f"k{i}", b"r", 0) for i in range(500)]

    def run(ledger: IdempotencyLedger, part: list[Claim]) -> int:
        return sum(v.kind == "new" for v in ledger.claim(part))

    with ThreadPoolExecutor(4) as pool:
        news = list(pool.map(run, [a, b, a, b], [claims[::2], claims, claims[1::2], claims[::-1]]))
    assert sum(news) == 500
    assert a.size() == 500
    assert a.prune(now_us=a.clock_us() + 25 * HOUR_US) == 500 and b.size() == 0
    a.close()
    b.close()


# -- item 10: nothing answered 200 is dropped as late ---------------------------------------


def iso_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_timestamp_the_daemon_would_drop_is_refused(tmp_path: Path) -> None:
    clock = Clock("2026-01-01T12:00:00Z")
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer, clock_us=clock) as svc:
        client = svc.client("ethan")
        now = clock()
        old = {"event_type": "x", "timestamp": iso_us(now - 11 * 60 * 1_000_000)}  # the lateness is 10m
        r = client.post("/events", json=[{"event_type": "ok"}, old])
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail[0]["loc"] == ["body", 1, "timestamp"] and detail[0]["type"] == "late"
        assert "late" in detail[0]["msg"] and "produce --input" in detail[0]["msg"]
        epoch_ms = (now - 9 * 60 * 1_000_000) // 1000
        r = client.post("/events", json={"event_type": "x", "timestamp": epoch_ms})  # epoch ms too
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "late"
        ahead = {"event_type": "x", "timestamp": iso_us(now + 2 * 60 * 1_000_000)}
        r = client.post("/events", json=ahead)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "future"
        fine = {"event_type": "x", "timestamp": iso_us(now - 8 * 60 * 1_000_000)}
        assert client.post("/events", json=fine).json()["accepted"] == 1
    assert len(writer.records) == 1


def test_no_accepted_event_is_dead_lettered_as_late(tmp_path: Path) -> None:
    """Clients with skewed clocks post concurrently, on the real clock; the
    daemon then counts exactly what the collector accepted, nothing late."""
    rng = random.Random(10)

    def post(client_id: int) -> tuple[int, int]:
        client = svc.client("ethan" if client_id % 2 else "mia")
        accepted = refused = 0
        for _ in range(15):
            batch = []
            for _ in range(rng.randint(1, 30)):
                offset = rng.choice([0, rng.uniform(-12 * 60, 2 * 60), rng.uniform(-8 * 60, 50)])
                event: dict[str, Any] = {"event_type": "tick"}
                if offset:
                    event["timestamp"] = (datetime.now(timezone.utc) + timedelta(seconds=offset)).isoformat()
                batch.append(event)
            r = client.post("/events", json=batch)
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                assert r.status_code == 422 and {d["type"] for d in r.json()["detail"]} <= {"late", "future"}, r.text
                refused += 1
        return accepted, refused

    with running_service(tmp_path) as svc:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(post, range(6)))
        drain_spool(svc.data_dir)
    accepted = sum(a for a, _ in results)
    assert accepted > 0 and sum(r for _, r in results) > 0
    assert "late" not in dead_letter_reasons(svc.data_dir)
    assert total(svc.data_dir) + total(svc.data_dir, "mia") == accepted


def test_pending_rows_of_a_crash_are_in_the_file(tmp_path: Path) -> None:
    """A claim is on disk before the send: what a crash would leave behind."""
    ledger = IdempotencyLedger(tmp_path / "l.sqlite3", HOUR_US)
    from service.idempotency import Claim

    assert [v.kind for v in ledger.claim([Claim("u", "k", b"rec", 5)])] == ["new"]
    rows = sqlite3.connect(tmp_path / "l.sqlite3").execute("SELECT username, event_id, state, record FROM http_idempotency").fetchall()
    assert rows == [("u", "k", 0, b"rec")]
    again = IdempotencyLedger(tmp_path / "l.sqlite3", HOUR_US)
    verdict = again.claim([Claim("u", "k", b"other", 9)])[0]
    assert (verdict.kind, verdict.record, verdict.event_us) == ("resend", b"rec", 5)
    again.confirm([("u", "k")])
    assert again.claim([Claim("u", "k", b"other", 9)])[0].kind == "duplicate"
    ledger.close()
    again.close()


def test_expired_keys_are_pruned_in_the_background(tmp_path: Path) -> None:
    from service.idempotency import Claim

    now = [1_000 * HOUR_US]
    ledger = IdempotencyLedger(tmp_path / "l.sqlite3", HOUR_US, clock_us=lambda: now[0])
    ledger.claim([Claim("u", f"old-{i}", b"r", 0) for i in range(12_000)])  # prunes nothing: none expired
    now[0] += 2 * HOUR_US
    ledger._pruned_at = 0.0  # due
    assert ledger.claim([Claim("u", "old-1", b"r", 0), Claim("u", "new", b"r", 0)])[0].kind == "new"  # expired: new again
    deadline = time.monotonic() + 10
    while ledger.size() > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger.size() == 2
    ledger.close()
