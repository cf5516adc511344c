"""The collector: seed 003's requests, the event mapping, limits, 422
reasons, Unicode and control characters, a full transport, garbage input."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from producers.transport import TransportFull
from streams.batches import RecordBatch
from streams.ndjson_parser import NdjsonParser
from streams.timestamps import parse_timestamp_us
from streams.utc import format_utc
from tests.test_http_support import SEED_DATA, Clock, RecordingWriter, Service, running_service

pytestmark = pytest.mark.timeout(60)


def records(writer: RecordingWriter) -> list[dict[str, Any]]:
    return [json.loads(r) for r in writer.records]


def reasons(response: Any) -> dict[tuple, str]:
    body = response.json()
    assert body["error"] == "Validation Error"
    return {tuple(d["loc"]): d["msg"] for d in body["detail"]}


def test_seed_003_requests(tmp_path: Path) -> None:
    cases = [c for c in json.loads((SEED_DATA / "serverless-event-collector" / "http_requests.json").read_text()) if c["method"] == "POST"]
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer) as svc:
        client = svc.client("ethan")
        for case in cases:
            headers = {"Authorization": case["auth"]} if "auth" in case else {}
            r = svc.client(None).post(case["path"], json=case["body"], headers=headers) if headers else client.post(case["path"], json=case["body"])
            assert r.status_code == case["response"]["status"], r.text
            if r.status_code == 200:
                assert r.json() == {**case["response"]["body"], "accepted": 1}
    page_view, click = records(writer)
    assert page_view["event_type"] == "page_view" and click["event_type"] == "button_click"
    assert page_view["customer_id"] == page_view["username"] == "ethan"
    assert page_view["url"] == "http://something.com" and page_view["referral_url"] == "/" and page_view["useragent"] == "some-string"
    assert click["button_id"] == "ABC" and click["session_id"] == "XYZ"


def test_mapping_to_the_event_model(tmp_path: Path) -> None:
    writer = RecordingWriter()
    # Client timestamps must lie within the lateness behind the collector's clock.
    clock = Clock("2021-03-01T00:30:00Z")
    with running_service(tmp_path, writer=writer, clock_us=clock, pipeline={"lateness": '"3h"'}) as svc:
        client = svc.client("mia")
        body = [
            {"event_type": "signup", "plan": "pro", "nested": {"a": [1, 2.5, None]}},
            {"event_type": "signup", "event_id": "client-42", "timestamp": "2021-03-01 00:10:05.657+01:30"},
            {"event_type": "purchase", "timestamp": 1614557405657, "amount": 3},
        ]
        r = client.post("/events", json=body)
        assert r.json() == {"message": "Received", "accepted": 3}
        assert client.post("/events", json={"event_type": "single"}).json()["accepted"] == 1
    first, second, third, single = records(writer)
    for record in (first, second, third, single):
        assert record["customer_id"] == record["username"] == "mia"
        assert record["v"] == 1
        parse_timestamp_us(record["received_at"])
    assert first["plan"] == "pro" and first["nested"] == {"a": [1, 2.5, None]}
    uuid.UUID(first["transaction_id"])  # a new UUID when no event_id
    assert first["timestamp"] == first["received_at"]  # no timestamp: received_at
    assert second["transaction_id"] == "client-42"
    assert second["timestamp"] == "2021-02-28T22:40:05.657000Z"  # normalised to UTC
    assert third["timestamp"] == format_utc(1614557405657 * 1000) and third["amount"] == 3
    # What the collector writes is exactly what the daemon's parser reads.
    parsed = NdjsonParser().parse_batch(RecordBatch.data("p", writer.records, list(range(4))))
    assert not parsed.dead_letters and [e.event_type for e in parsed.events] == ["signup", "signup", "purchase", "single"]


def test_body_size_limit_counts_received_bytes(tmp_path: Path) -> None:
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer, max_body_bytes=4096) as svc:
        client = svc.client("ethan")
        big = {"event_type": "x", "blob": "a" * 5000}
        r = client.post("/events", json=big)
        assert r.status_code == 413 and "4096" in r.json()["error"]

        def chunks():  # chunked: no Content-Length to trust
            for _ in range(10):
                yield b" " * 1000
            yield json.dumps({"event_type": "x"}).encode()

        r = client.post("/events", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        ok = client.post("/events", content=iter([b'{"event_type":', b'"x"}']))
        assert ok.status_code == 200, ok.text
    assert len(writer.records) == 1


def test_batch_size_limit(tmp_path: Path) -> None:
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer, max_batch=5) as svc:
        client = svc.client("ethan")
        assert client.post("/events", json=[{"event_type": "x"}] * 6).status_code == 413
        assert client.post("/events", json=[{"event_type": "x"}] * 5).json()["accepted"] == 5
    assert len(writer.records) == 5


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, RecordingWriter]]:
    """One server for the many small malformed-input cases."""
    writer = RecordingWriter()
    with running_service(tmp_path_factory.mktemp("shared"), writer=writer) as svc:
        yield svc, writer


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"event_type": "x",}', b"\xff\xfe{}", b"", b"   ", b'{"event_type": NaN}', b'{"event_type": "x", "n": 1e999}',
     b"[" * 100_000 + b"]" * 100_000, b'{"event_type": "x", "n": ' + b"9" * 5000 + b"}", b"null\x00"],
)
def test_malformed_json_is_a_4xx(shared_service: tuple[Service, RecordingWriter], body: bytes) -> None:
    svc, writer = shared_service
    r = svc.client("ethan").post("/events", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    assert writer.records == []


def test_422_reasons_name_the_field(tmp_path: Path) -> None:
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer) as svc:
        client = svc.client("ethan")
        r = client.post("/button/click", json={"button_id": "ABC"})
        assert r.status_code == 422 and reasons(r) == {("body", "session_id"): "Field required"}

        r = client.post("/web/page_view", json={"url": 5, "session_id": "s", "ipaddress": "300.1.1.1", "extra": 1})
        got = reasons(r)
        assert set(got) == {("body", "url"), ("body", "ipaddress"), ("body", "extra")}
        assert "IPv4 or IPv6" in got[("body", "ipaddress")]

        batch = [
            {"event_type": "ok"},
            "not an object",
            {"event_type": ""},
            {"event_type": "x", "timestamp": "yesterday"},
            {"event_type": "x", "timestamp": "2021-03-01T00:00:00"},
            {"event_type": "x", "timestamp": "2999-01-01T00:00:00Z"},
            {"event_type": "x", "customer_id": "someone-else"},
            {"event_type": "x", "transaction_id": "t"},
            {"event_type": "x", "timestamp": True},
        ]
        r = client.post("/events", json=batch)
        assert r.status_code == 422
        got = reasons(r)
        assert ("body", 0) not in got and ("body", 0, "event_type") not in got
        assert "expected a JSON object" in got[("body", 1)]
        assert ("body", 2, "event_type") in got
        assert "ISO 8601" in got[("body", 3, "timestamp")]
        assert "UTC offset" in got[("body", 4, "timestamp")]
        assert "future" in got[("body", 5, "timestamp")]
        assert "authenticated user" in got[("body", 6, "customer_id")]
        assert "event_id" in got[("body", 7, "transaction_id")]
        assert ("body", 8, "timestamp") in got

        r = client.post("/events", json=[])
        assert r.status_code == 422 and ("body",) in reasons(r)
        r = client.post("/events", json={"timestamp": "2021-03-01T00:00:00Z"})
        assert reasons(r) == {("body", "event_type"): "Field required"}
    assert writer.records == []  # one bad event refuses the whole batch


def test_unicode_and_control_characters(tmp_path: Path) -> None:
    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer) as svc:
        client = svc.client("ethan")
        view = {"url": "https://例え.jp/パス?q=ü&e=🎉", "useragent": "tab\there\x07bell\x1b[31m", "session_id": "séance-Ω", "referral_url": "/ŝ"}
        assert client.post("/web/page_view", json=view).status_code == 200
        assert client.post("/events", content='{"event_type": "é\u2028x", "note": "\\u0001\\u007f"}'.encode()).status_code == 200

        bad = {
            "NUL in free text": ('{"url": "u", "session_id": "s", "useragent": "a\\u0000b"}', "/web/page_view", ("body", "useragent")),
            "lone surrogate": ('{"url": "u\\ud800", "session_id": "s"}', "/web/page_view", ("body", "url")),
            "surrogate in a key": ('{"event_type": "x", "k\\udc00": 1}', "/events", None),
            "control char in an id": ('{"button_id": "a\\nb", "session_id": "s"}', "/button/click", ("body", "button_id")),
            "control char in event_type": ('{"event_type": "a\\u0007"}', "/events", ("body", "event_type")),
        }
        for name, (text, path, loc) in bad.items():
            r = client.post(path, content=text.encode())
            assert r.status_code == 422, name
            if loc:
                assert loc in reasons(r), (name, r.text)
    first, second = records(writer)
    assert first["url"] == view["url"] and first["useragent"] == view["useragent"] and first["session_id"] == "séance-Ω"
    assert second["event_type"] == "é\u2028x" and second["note"] == "\x01\x7f"
    assert all(b"\n" not in line for line in writer.records)  # one record per line, always


class FullWriter(RecordingWriter):
    def __init__(self, error: Exception | None, accept: int | None = None) -> None:
        super().__init__()
        self.error, self.accept = error, accept

    def send(self, records: Sequence[bytes]) -> int:
        if self.error is not None:
            raise self.error
        return self.accept if self.accept is not None else len(records)


@pytest.mark.parametrize(
    "writer, text",
    [
        (FullWriter(TransportFull("spool is full")), "transport full"),
        (FullWriter(ConnectionError("kinesis down")), "transport unavailable"),
        (FullWriter(None, accept=1), "accepted 1 of 2"),
        (None, "no transport"),
    ],
)
def test_a_transport_that_cannot_take_events_gets_503(tmp_path: Path, writer: Any, text: str) -> None:
    with running_service(tmp_path, writer=writer, retry_after_seconds=7) as svc:
        r = svc.client("ethan").post("/events", json=[{"event_type": "a"}, {"event_type": "b"}])
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert text in r.json()["error"] and "Received" not in r.text


def test_no_input_crashes_the_server(tmp_path: Path) -> None:
    rng = random.Random(6)
    atoms: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x" * 300, "\u0000", "../../etc", "🎉", [], {}, "2021-03-01T00:00:00Z"]
    fields = ["event_type", "url", "session_id", "button_id", "timestamp", "event_id", "ipaddress", "useragent", "v", "username", ""]

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth < 3 and roll < 0.15:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 3 and roll < 0.35:
            return {rng.choice(fields): value(depth + 1) for _ in range(rng.randint(0, 5))}
        return rng.choice(atoms)

    writer = RecordingWriter()
    with running_service(tmp_path, writer=writer) as svc:
        client = svc.client("ethan")
        paths = ["/events", "/web/page_view", "/button/click"]
        for i in range(300):
            if i % 5 == 0:
                body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            else:
                body = json.dumps(value(), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
            r = client.post(rng.choice(paths), content=body)
            assert r.status_code in (200, 400, 413, 422), (r.status_code, body[:200], r.text)
        for path in ["/events/customers/%00/buckets?start=%ff&end=x", "/web/page_view/count?url=%00", "/button/click/count?button_id="]:
            assert client.get(path).status_code < 500
        assert client.get("/healthz").status_code == 200
    # Whatever was accepted is parseable by the daemon.
    parsed = NdjsonParser().parse_batch(RecordBatch.data("p", writer.records, list(range(len(writer.records)))))
    assert not parsed.dead_letters
