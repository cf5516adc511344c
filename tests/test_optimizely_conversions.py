"""Stream events as conversions: through the Sink protocol, under SinkFanOut's
checkpointing, compared with what the SDK's own `track` sends."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from consumers.fan_out import SinkFanOut
from consumers.run_summary import RunSummary
from optimizely_integration.bulk_sink import OptimizelyBulkSink
from optimizely_integration.conversions import ConversionBuilder, conversion_uuid
from optimizely_integration.datafile import DatafileManager
from streams.batches import BatchKind, CountedBatch
from streams.events import Event, Reason
from tests.optimizely_support import (
    DATAFILE_PATH,
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

T0_US = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z
PARTITION = "spool:events"


def stream_events(n: int, first_position: int = 0) -> list[Event]:
    types = ["purchase", "page_view", "signup", "button_click"]
    return [
        Event(f"cust-{i % 37}", types[i % 4], f"tx-{i}", T0_US + i * 1_000_000,
              {"revenue": 100 + i, "url": "/x"} if i % 4 == 0 else {}, PARTITION, first_position + i)
        for i in range(n)
    ]


def batch_of(events: list[Event]) -> CountedBatch:
    return CountedBatch(PARTITION, BatchKind.DATA, events=list(events), read=len(events),
                        safe_position=events[-1].position + 1 if events else 0)


@pytest.fixture
def manager() -> DatafileManager:
    m = DatafileManager(str(DATAFILE_PATH))
    m.load()
    return m


def test_mapped_events_become_sdk_shaped_conversions(manager: DatafileManager) -> None:
    server = RecordingServer(always(204))
    builder = ConversionBuilder({"purchase": "purchase", "signup": "signup"}, manager.project_config, ["revenue"])
    sink = OptimizelyBulkSink(ListDeadLetters(), conversions=builder, endpoint=server.url + "/v1/events", flush_interval=60)
    events = stream_events(400)
    try:
        for i in range(0, 400, 50):
            sink.write(batch_of(events[i:i + 50]))
        assert sink.drain(timeout=10)
    finally:
        sink.close()
        server.close()
    bodies = server.accepted_bodies()
    assert len(bodies) == 1 and schema_errors(bodies[0]) == []
    received = visitors_by_uuid(bodies)
    mapped = [e for e in events if e.event_type in ("purchase", "signup")]
    # Independent expectation: uuid5 over the dedup key, computed here.
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "rivulet:optimizely:conversion")
    expected_ids = {str(uuid.uuid5(namespace, repr((e.customer_id, e.event_type, e.transaction_id, e.event_time_us)))): e
                    for e in mapped}
    assert set(received) == set(expected_ids) and len(received) == 200
    for event_uuid, (visitor,) in received.items():
        source = expected_ids[event_uuid]
        (snapshot,) = visitor["snapshots"]
        (event,) = snapshot["events"]
        assert visitor["visitor_id"] == source.customer_id
        assert event["timestamp"] == source.event_time_us // 1000
        assert event["key"] == source.event_type
        assert event["entity_id"] == {"purchase": "80001", "signup": "80002"}[source.event_type]
        if source.event_type == "purchase":
            assert event["revenue"] == source.properties["revenue"] and event["tags"] == {"revenue": source.properties["revenue"]}
        else:
            assert "tags" not in event
    assert bodies[0]["account_id"] == "10001" and bodies[0]["revision"] == "7"


def test_conversion_matches_what_sdk_track_sends(manager: DatafileManager) -> None:
    capture = CapturingDispatcher()
    client = sdk_client(datafile_text(), capture)
    client.track("purchase", "cust-1", None, {"revenue": 4200})
    client.close()
    ((url, sdk_payload),) = capture.events
    event = Event("cust-1", "purchase", "tx-9", T0_US, {"revenue": 4200, "other": "x"})
    built = ConversionBuilder({"purchase": "purchase"}, manager.project_config, ["revenue"]).build([event])
    ((ours_url, ours, kept),) = built.payloads
    assert kept == [event] and ours_url == url
    sdk_event = sdk_payload["visitors"][0]["snapshots"][0]["events"][0]
    our_event = ours["visitors"][0]["snapshots"][0]["events"][0]
    assert our_event["uuid"] == conversion_uuid(event.dedup_key) != sdk_event["uuid"]
    assert our_event["timestamp"] == T0_US // 1000
    for payload in (sdk_payload, ours):
        payload["visitors"][0]["snapshots"][0]["events"][0].update(uuid="U", timestamp=0)
    assert ours == sdk_payload  # same shape, header and attributes as track()


def test_unmapped_events_pass_and_unknown_keys_are_dead_lettered(manager: DatafileManager) -> None:
    dead_letters = ListDeadLetters()
    builder = ConversionBuilder({"purchase": "no_such_event"}, manager.project_config)
    sink = OptimizelyBulkSink(dead_letters, conversions=builder, endpoint="http://127.0.0.1:9/unused", flush_interval=60)
    try:
        sink.write(batch_of(stream_events(8)))
    finally:
        sink.close(timeout=0.1)
    assert [(l.reason, l.position) for l in dead_letters.letters] == [(Reason.SINK_REJECTED, 0), (Reason.SINK_REJECTED, 4)]
    assert "no_such_event" in dead_letters.letters[0].error
    assert json.loads(dead_letters.letters[0].record)["transaction_id"] == "tx-0"
    assert sink.pending_floor(PARTITION) is None


def test_fan_out_checkpoints_only_after_a_2xx(manager: DatafileManager) -> None:
    healthy = threading.Event()
    server = RecordingServer(lambda i, body: (204, b"", 0) if healthy.is_set() else (500, b"", 0))
    commits: list[int] = []
    builder = ConversionBuilder({"purchase": "purchase"}, manager.project_config)
    sink = OptimizelyBulkSink(
        ListDeadLetters(), conversions=builder, endpoint=server.url + "/v1/events", flush_interval=0.05,
        backoff_base=0.01, backoff_cap=0.03,
    )
    fan_out = SinkFanOut([sink], RunSummary(), commit=lambda p, pos, watermark=None: commits.append(pos), checkpoint_interval=0)
    events = stream_events(40, first_position=1000)  # purchases at 1000, 1004, ...
    try:
        fan_out.on_next(CountedBatch(PARTITION, BatchKind.DATA, read=1, safe_position=1000))  # the records before
        fan_out.on_next(batch_of(events[:20]))
        assert wait_for(lambda: len(server.posts()) >= 3)
        fan_out.on_next(batch_of(events[20:]))
        fan_out.checkpoint()
        assert commits and max(commits) == 1000  # held at the safe point at the first unacknowledged conversion
        healthy.set()
        assert wait_for(lambda: sink.outstanding == 0)
        fan_out.checkpoint()
        assert commits[-1] == 1040
    finally:
        fan_out.close()
        server.close()
    received = visitors_by_uuid(server.accepted_bodies())
    assert set(received) == {conversion_uuid(e.dedup_key) for e in events if e.event_type == "purchase"}
    assert all(len(v) == 1 for v in received.values())


def test_replayed_events_keep_their_uuids(manager: DatafileManager) -> None:
    """A crash before the checkpoint replays events: the same uuids go out again
    and the Event API de-duplicates them."""
    builder = ConversionBuilder({"purchase": "purchase"}, manager.project_config)
    events = stream_events(12)
    first = builder.build(events).payloads[0][1]
    again = builder.build(stream_events(12)).payloads[0][1]
    assert first == again
