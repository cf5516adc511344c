"""End to end: a real SDK client → BulkEventDispatcher → spool transport →
PayloadForwarder → OptimizelyBulkSink → a real HTTP server on 127.0.0.1;
plus the faults (5xx, 4xx, slow endpoint, full buffer)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from observability.health import PipelineHealth
from optimizely_integration.bulk_event_dispatcher import BulkEventDispatcher
from optimizely_integration.bulk_sink import OptimizelyBulkSink
from optimizely_integration.payload_splitter import Origin
from optimizely_integration.forwarder import PayloadForwarder
from optimizely_integration.payload_record import decode_payload_record, encode_payload_record
from producers.spool import SpoolReader, SpoolWriter
from producers.transport import TransportFull
from streams.events import Reason
from tests.optimizely_support import (
    CapturingDispatcher,
    ListDeadLetters,
    RecordingServer,
    always,
    datafile_text,
    schema_errors,
    sdk_client,
    visitors_by_uuid,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

USERS = 500


def drive_sdk(client: Any, users: int) -> None:
    """activate + decide for every user, track for two thirds: impressions,
    conversions and flag decisions (some with a null variation_id)."""
    for i in range(users):
        user = f"user-{i}"
        attributes = {"tier": ["gold", "platinum", "silver"][i % 3], "member_since_days": i % 60}
        client.activate("checkout_flow_experiment", user, attributes)
        client.create_user_context(user, attributes).decide("checkout_flag")
        if i % 3:
            client.track("purchase", user, attributes, {"revenue": 100 + i, "sku": f"sku-{i % 7}"})


def split_expected(payloads: list[tuple[str, dict]]) -> tuple[dict[str, dict], set[str], dict]:
    """Independent expectation from what the SDK dispatched: uuid → visitor for
    snapshots the sink must send, the uuids it must dead-letter (a decision
    with variation_id null), and the one header every payload shares."""
    send: dict[str, dict] = {}
    dead: set[str] = set()
    headers = set()
    for _, params in payloads:
        headers.add(json.dumps({k: v for k, v in params.items() if k != "visitors"}, sort_keys=True))
        for visitor in params["visitors"]:
            for snapshot in visitor["snapshots"]:
                null = any(d["variation_id"] is None for d in snapshot.get("decisions", []))
                for event in snapshot["events"]:
                    if null:
                        dead.add(event["uuid"])
                    else:
                        send[event["uuid"]] = {**visitor, "snapshots": [snapshot]}
    assert len(headers) == 1
    return send, dead, json.loads(headers.pop())


def run_forwarder(reader: SpoolReader, sink: OptimizelyBulkSink, idle: float = 0.3) -> PayloadForwarder:
    """Forward until the spool has been caught up for `idle` seconds, then drain."""
    forwarder = PayloadForwarder(reader, sink, commit_interval=0.05, drain_timeout=20)

    def watch() -> None:
        wait_for(lambda: reader.caught_up_seconds() >= idle, timeout=30)
        reader.stop()

    threading.Thread(target=watch, daemon=True).start()
    forwarder.run()
    return forwarder


def test_sdk_payloads_reach_the_endpoint_merged_valid_and_exactly_once(tmp_path: Path) -> None:
    server = RecordingServer(always(204))
    dead_letters = ListDeadLetters()
    dispatcher = BulkEventDispatcher(SpoolWriter(tmp_path), max_buffer=100_000)
    capture = CapturingDispatcher(forward=dispatcher)
    # The SDK's own batching (10 per LogEvent) and the forwarding processor
    # (1 per LogEvent) both feed the same dispatcher.
    batched = sdk_client(datafile_text(), capture, batch_size=10)
    single = sdk_client(datafile_text(), capture)
    drive_sdk(batched, USERS // 2)
    drive_sdk(single, USERS // 2)
    batched.close()
    single.close()
    assert dispatcher.flush(timeout=10)
    dispatcher.close()
    assert dispatcher.stats.dropped == 0 and dispatcher.stats.sent == len(capture.events)

    reader = SpoolReader(tmp_path, group="optimizely", poll_interval=0.01)
    sink = OptimizelyBulkSink(dead_letters, endpoint=server.url + "/v1/events", max_visitors=250, flush_interval=0.3)
    try:
        forwarder = run_forwarder(reader, sink)
        sink.close()
        committed = reader.committed()
    finally:
        reader.close()
        server.close()

    expected, expected_dead, header = split_expected(capture.events)
    assert len(expected) > USERS and expected_dead, "the SDK run should produce both kinds"
    bodies = server.accepted_bodies()
    for body in bodies:
        assert schema_errors(body) == []
        assert {k: v for k, v in body.items() if k != "visitors"} == header
    received = visitors_by_uuid(bodies)
    assert all(len(v) == 1 for v in received.values()), "an event uuid was sent twice"
    assert set(received) == set(expected)
    # Every visitor arrives whole: attributes, decisions, tags and all.
    for event_uuid, (visitor,) in received.items():
        assert visitor == expected[event_uuid]
    visitors = sum(len(b["visitors"]) for b in bodies)
    assert len(bodies) < visitors / 100  # merged: hundreds of visitors per request
    assert min(sum(len(s["events"]) for v in b["visitors"] for s in v["snapshots"]) for b in bodies) > 1
    assert len(server.posts()) == len(bodies)  # nothing failed, nothing retried

    # Null variation_id snapshots are dead-lettered, replayable and complete.
    assert {l.reason for l in dead_letters.letters} == {Reason.SINK_REJECTED}
    dead_uuids = [e["uuid"] for l in dead_letters.letters for v in decode_payload_record(l.record).payload["visitors"]
                  for s in v["snapshots"] for e in s["events"]]
    assert sorted(dead_uuids) == sorted(expected_dead)
    # Everything was acknowledged, so the whole spool is committed.
    assert committed == forwarder.records + 1  # spool seqs start at 1
    assert sink.stats.visitors_sent == visitors and sink.stats.events_sent == len(expected)


def sdk_records(users: int) -> tuple[list[bytes], set[str]]:
    """Payload records of a small SDK run (flag decisions disabled: no null
    variations here) and the uuids they hold."""
    capture = CapturingDispatcher()
    client = sdk_client(datafile_text(sendFlagDecisions=False), capture)
    for i in range(users):
        client.activate("checkout_flow_experiment", f"u{i}", {"tier": "gold"})
        client.track("purchase", f"u{i}", None, {"revenue": i})
    client.close()
    records = [encode_payload_record(url, params) for url, params in capture.events]
    uuids = {e["uuid"] for _, p in capture.events for v in p["visitors"] for s in v["snapshots"] for e in s["events"]}
    return records, uuids


def test_503_then_200_loses_nothing_and_holds_the_checkpoint(tmp_path: Path) -> None:
    healthy = threading.Event()
    server = RecordingServer(lambda i, body: (204, b"", 0) if healthy.is_set() else (503, b"busy", 0))
    records, uuids = sdk_records(60)
    with SpoolWriter(tmp_path) as writer:
        writer.send(records)
    reader = SpoolReader(tmp_path, group="optimizely", poll_interval=0.01)
    health = PipelineHealth()
    sink = OptimizelyBulkSink(
        ListDeadLetters(), endpoint=server.url + "/v1/events", max_visitors=20, flush_interval=0.05,
        backoff_base=0.01, backoff_cap=0.05, health=health,
    )
    forwarder = PayloadForwarder(reader, sink, commit_interval=0.02)
    thread = threading.Thread(target=forwarder.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(server.posts()) >= 10)
        # Failing: the source must not be checkpointed past the first record.
        assert sink.pending_floor(reader.partition) == 1
        assert reader.committed() == 1
        assert "optimizely" in health.problems()  # readiness and the watchdog hear of the outage
        healthy.set()
        assert wait_for(lambda: sink.outstanding == 0 and reader.committed() == len(records) + 1)
        assert health.problems() == {}
    finally:
        reader.stop()
        thread.join(10)
        sink.close()
        reader.close()
        server.close()
    received = visitors_by_uuid(server.accepted_bodies())
    assert set(received) == uuids and all(len(v) == 1 for v in received.values())
    assert sink.stats.failures >= 10 and sink.stats.batches_rejected == 0
    assert all(schema_errors(b) == [] for b in server.accepted_bodies())


def test_400_dead_letters_the_batch_with_the_response_without_retrying() -> None:
    server = RecordingServer(lambda i, body: (400, b'{"error": "invalid visitor payload xyz"}', 0))
    records, uuids = sdk_records(15)  # one visitor per uuid; not every user is bucketed
    dead_letters = ListDeadLetters()
    sink = OptimizelyBulkSink(dead_letters, endpoint=server.url + "/v1/events", max_visitors=10, flush_interval=60)
    try:
        sink.write_payload_records("p", records, list(range(100, 100 + len(records))))
        assert sink.pending_floor("p") == 100
        assert sink.drain(timeout=10)
    finally:
        sink.close()
        server.close()
    assert len(server.posts()) == -(-len(uuids) // 10)  # bodies of 10, each tried once
    assert server.accepted_bodies() == []
    assert len(dead_letters.letters) == len(uuids) > 20
    for letter in dead_letters.letters:
        assert letter.reason is Reason.SINK_REJECTED
        assert "HTTP 400" in letter.error and "invalid visitor payload xyz" in letter.error
        assert letter.source == "p" and 100 <= letter.position < 100 + len(records)
        assert schema_errors(decode_payload_record(letter.record).payload) == []
    dead_uuids = {e["uuid"] for l in dead_letters.letters for v in decode_payload_record(l.record).payload["visitors"]
                  for s in v["snapshots"] for e in s["events"]}
    assert dead_uuids == uuids
    assert dead_letters.flushes >= 1  # durable before the positions were acknowledged
    assert sink.pending_floor("p") is None
    assert sink.stats.batches_rejected == len(server.posts()) and sink.stats.visitors_sent == 0


def test_timeouts_and_connection_errors_are_retried(tmp_path: Path) -> None:
    # The first POST outlives the client timeout, then success; below, a
    # closed port refuses every connection.
    server = RecordingServer(lambda i, body: (204, b"", 1.0) if i == 0 else (204, b"", 0))
    records, uuids = sdk_records(5)
    sink = OptimizelyBulkSink(
        ListDeadLetters(), endpoint=server.url + "/v1/events", flush_interval=60, request_timeout=0.3,
        backoff_base=0.01, backoff_cap=0.02,
    )
    try:
        sink.write_payload_records("p", records, list(range(len(records))))
        assert sink.drain(timeout=10)
    finally:
        sink.close()
        server.close()
    assert sink.stats.failures >= 1
    # The timed-out request may have been recorded too (the server finished
    # it late): the Event API de-duplicates on uuid, and uuids are unchanged.
    received = visitors_by_uuid(server.accepted_bodies())
    assert set(received) == uuids

    refused = OptimizelyBulkSink(
        ListDeadLetters(), endpoint="http://127.0.0.1:9/v1/events", flush_interval=60, backoff_base=0.01, backoff_cap=0.02
    )
    refused.write_payload_records("p", records[:1], [7])
    assert not refused.drain(timeout=0)  # seals and queues the body; nothing can be acknowledged
    assert wait_for(lambda: refused.stats.failures >= 3)
    assert refused.pending_floor("p") == 7  # still not acknowledged, still retrying
    refused.close(timeout=0.1)
    assert refused.pending_floor("p") == 7


def test_slow_endpoint_does_not_block_dispatch_event(tmp_path: Path) -> None:
    """The whole chain runs while the endpoint takes 0.5 s per request:
    dispatch_event stays in the microseconds."""
    server = RecordingServer(always(204, delay=0.5))
    dispatcher = BulkEventDispatcher(SpoolWriter(tmp_path), max_buffer=100_000)
    reader = SpoolReader(tmp_path, group="optimizely", poll_interval=0.01)
    sink = OptimizelyBulkSink(ListDeadLetters(), endpoint=server.url + "/v1/events", max_visitors=40, flush_interval=0.1)
    forwarder = PayloadForwarder(reader, sink, commit_interval=0.05)
    thread = threading.Thread(target=forwarder.run, daemon=True)
    thread.start()
    timings: list[float] = []

    class Timed:
        def dispatch_event(self, log_event: Any) -> None:
            started = time.perf_counter()
            dispatcher.dispatch_event(log_event)
            timings.append(time.perf_counter() - started)

    client = sdk_client(datafile_text(sendFlagDecisions=False), Timed())
    try:
        for i in range(150):
            client.activate("checkout_flow_experiment", f"u{i}", None)
            client.track("purchase", f"u{i}")
        delivered_when_done = sink.stats.visitors_sent
        assert wait_for(lambda: sink.stats.visitors_sent == len(timings), timeout=20)
    finally:
        client.close()
        dispatcher.close()
        reader.stop()
        thread.join(30)
        sink.close()
        reader.close()
        server.close()
    assert len(timings) > 250  # one LogEvent per activation of a bucketed user and per track
    assert max(timings) < 0.05, f"dispatch_event took {max(timings):.3f}s"
    # Dispatching finished while the slow endpoint had most of the work ahead.
    assert delivered_when_done < len(timings) / 2
    assert len(server.posts()) >= len(timings) // 40


def test_sink_write_returns_before_a_slow_post_finishes() -> None:
    server = RecordingServer(always(204, delay=0.5))
    records, uuids = sdk_records(30)
    sink = OptimizelyBulkSink(ListDeadLetters(), endpoint=server.url + "/v1/events", max_visitors=10, flush_interval=60)
    try:
        started = time.monotonic()
        sink.write_payload_records("p", records, list(range(len(records))))  # seals several bodies
        elapsed = time.monotonic() - started
        assert elapsed < 0.3, f"write took {elapsed:.2f}s"
        assert sink.pending_floor("p") == 0  # taken, not yet acknowledged
        assert sink.drain(timeout=20)
    finally:
        sink.close()
        server.close()
    assert sink.stats.visitors_sent == len(uuids) and sink.stats.batches_sent >= 5


class BlockingWriter:
    """A transport writer whose send blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.records: list[bytes] = []

    def send(self, records: list[bytes]) -> int:
        self.entered.set()
        self.release.wait(10)
        self.records.extend(records)
        return len(records)

    def close(self) -> None:
        pass


def _dropped_metric() -> float:
    return REGISTRY.get_sample_value("rivulet_optimizely_dispatch_total", {"outcome": "dropped"}) or 0.0


class Event:
    def __init__(self, i: int) -> None:
        self.url = "https://logx.optimizely.com/v1/events"
        self.params = {"account_id": "1", "visitors": [{"visitor_id": f"v{i}", "snapshots": []}]}


def test_full_buffer_counts_drops_and_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    writer = BlockingWriter()
    dispatcher = BulkEventDispatcher(writer, max_buffer=5, flush_interval=0.0)
    before = _dropped_metric()
    caplog.set_level(logging.ERROR, logger="optimizely_integration.bulk_event_dispatcher")
    dispatcher.dispatch_event(Event(0))
    assert writer.entered.wait(5)  # the sender holds event 0 in a blocked send
    started = time.perf_counter()
    for i in range(1, 16):
        dispatcher.dispatch_event(Event(i))
    assert time.perf_counter() - started < 0.1  # full buffer: no waiting
    assert dispatcher.stats.dropped == 10
    assert _dropped_metric() - before == 10
    assert any("dropped" in r.getMessage() and "buffer full" in r.getMessage() for r in caplog.records)
    writer.release.set()
    assert dispatcher.flush(timeout=5)
    dispatcher.close()
    sent = [decode_payload_record(r).payload["visitors"][0]["visitor_id"] for r in writer.records]
    assert sent == [f"v{i}" for i in range(6)]  # the first, plus the five buffered
    assert dispatcher.stats.sent == 6


class FailingWriter:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.records: list[bytes] = []

    def send(self, records: list[bytes]) -> int:
        if self.failures:
            self.failures -= 1
            raise TransportFull("spool full")
        self.records.extend(records)
        return len(records)

    def close(self) -> None:
        pass


def test_transport_failures_are_retried_then_counted_at_close(caplog: pytest.LogCaptureFixture) -> None:
    writer = FailingWriter(failures=3)
    dispatcher = BulkEventDispatcher(writer, flush_interval=0.0, backoff_base=0.01, backoff_cap=0.02)
    for i in range(4):
        dispatcher.dispatch_event(Event(i))
    assert dispatcher.flush(timeout=5)
    assert len(writer.records) == 4 and dispatcher.stats.send_failures >= 3 and dispatcher.stats.dropped == 0
    dispatcher.close()

    down = FailingWriter(failures=10**9)
    dispatcher = BulkEventDispatcher(down, flush_interval=0.0, backoff_base=0.01, backoff_cap=0.02)
    caplog.set_level(logging.ERROR, logger="optimizely_integration.bulk_event_dispatcher")
    for i in range(3):
        dispatcher.dispatch_event(Event(i))
    dispatcher.close(timeout=0.3)
    assert dispatcher.stats.dropped == 3  # counted, not silently lost
    assert any("still failing at close" in r.getMessage() for r in caplog.records)
    dispatcher.dispatch_event(Event(9))  # after close
    assert dispatcher.stats.dropped == 4


def test_eu_payloads_use_their_own_endpoint() -> None:
    us, eu = RecordingServer(always(204)), RecordingServer(always(204))
    capture = CapturingDispatcher()
    for region in (None, "EU"):
        extra = {"region": region} if region else {}
        client = sdk_client(datafile_text(sendFlagDecisions=False, **extra), capture)
        client.activate("checkout_flow_experiment", "user-2")
        client.close()
    assert [url for url, _ in capture.events] == [
        "https://logx.optimizely.com/v1/events", "https://eu.logx.optimizely.com/v1/events"
    ]
    sink = OptimizelyBulkSink(ListDeadLetters(), endpoint=us.url + "/us", eu_endpoint=eu.url + "/eu", flush_interval=60)
    try:
        sink.write_payload_records("p", [encode_payload_record(u, p) for u, p in capture.events], [0, 1])
        assert sink.drain(timeout=10)
    finally:
        sink.close()
        us.close()
        eu.close()
    assert [r.path for r in us.posts()] == ["/us"] and [r.path for r in eu.posts()] == ["/eu"]


def test_malformed_records_are_dead_lettered() -> None:
    dead_letters = ListDeadLetters()
    sink = OptimizelyBulkSink(dead_letters, endpoint="http://127.0.0.1:9/unused", flush_interval=60)
    try:
        sink.write_payload_records("p", [b"not json", b'{"v":1,"kind":"other"}'], [3, 4])
    finally:
        sink.close(timeout=0.1)
    assert [(l.reason, l.position, l.record) for l in dead_letters.letters] == [
        (Reason.MALFORMED, 3, b"not json"), (Reason.MALFORMED, 4, b'{"v":1,"kind":"other"}')
    ]
    assert sink.pending_floor("p") is None


def test_close_during_an_outage_is_bounded_and_keeps_positions_unacknowledged() -> None:
    server = RecordingServer(always(503))
    records, _ = sdk_records(30)
    sink = OptimizelyBulkSink(
        ListDeadLetters(), endpoint=server.url + "/v1/events", max_visitors=5, flush_interval=60, senders=1,
        send_queue=1, backoff_base=0.01, backoff_cap=0.02,
    )
    try:
        # 13 one-visitor payloads: a body retrying in the sender, one in the
        # full queue, 3 visitors open in the batcher that close() cannot queue.
        for i, record in enumerate(records[:13]):
            decoded = decode_payload_record(record)
            sink.submit(decoded.url, decoded.payload, Origin("p", i))
        assert wait_for(lambda: len(server.posts()) >= 2)
        started = time.monotonic()
        sink.close(timeout=0.5)
        assert time.monotonic() - started < 3.0
    finally:
        server.close()
    assert sink.pending_floor("p") == 0 and sink.outstanding == 13
    assert server.accepted_bodies() == []


def test_oversize_visitor_is_dead_lettered_as_a_replayable_record() -> None:
    records, _ = sdk_records(3)
    payload = decode_payload_record(records[0]).payload
    payload["visitors"][0]["snapshots"][0]["events"][0]["tags"] = {"blob": "x" * 5000}
    dead_letters = ListDeadLetters()
    sink = OptimizelyBulkSink(dead_letters, endpoint="http://127.0.0.1:9/unused", max_body_bytes=4000, flush_interval=60)
    try:
        sink.submit("https://logx.optimizely.com/v1/events", payload, Origin("p", 11))
    finally:
        sink.close(timeout=0.1)
    (letter,) = dead_letters.letters
    assert (letter.reason, letter.position) == (Reason.OVERSIZE, 11)
    replay = decode_payload_record(letter.record)
    assert replay.url == "http://127.0.0.1:9/unused" and replay.payload == payload
    assert sink.pending_floor("p") is None
