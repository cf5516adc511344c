"""The pure splitting and merging of Event API payloads (payload_splitter.py, event_batcher.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from optimizely_integration.event_batcher import EventBatcher, OversizeVisitor
from optimizely_integration.payload_splitter import Origin, split_payload
from streams.events import Reason
from tests.optimizely_support import FIXTURES, schema_errors

HEADER = {
    "account_id": "10001",
    "project_id": "20002",
    "revision": "7",
    "client_name": "python-sdk",
    "client_version": "5.7.0",
    "anonymize_ip": True,
    "enrich_decisions": True,
}
ENDPOINT = "https://logx.example/v1/events"


def impression(user: str, variation_id: str | None = "70001", n: int = 0) -> dict[str, Any]:
    return {
        "snapshots": [
            {
                "events": [{"entity_id": "60001", "uuid": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{user}/{n}")),
                            "key": "campaign_activated", "timestamp": 1_700_000_000_000 + n}],
                "decisions": [{"campaign_id": "60001", "experiment_id": "50001", "variation_id": variation_id,
                               "metadata": {"flag_key": "", "rule_key": "e", "rule_type": "experiment",
                                            "variation_key": "v", "enabled": True}}],
            }
        ],
        "attributes": [{"entity_id": "30001", "key": "tier", "type": "custom", "value": "gold"}],
        "visitor_id": user,
    }


def payload(visitors: list[dict], **header: Any) -> dict[str, Any]:
    return {**HEADER, **header, "visitors": visitors}


def uuids(visitors: list[dict]) -> list[str]:
    return [e["uuid"] for v in visitors for s in v["snapshots"] for e in s["events"]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(batcher: EventBatcher, payloads: list[dict], endpoint: str = ENDPOINT) -> list:
    bodies = []
    for i, p in enumerate(payloads):
        split = split_payload(p, endpoint, Origin("p", i))
        assert not split.rejected
        for visitor in split.visitors:
            bodies.extend(batcher.add(split.group, visitor))
    return bodies


def test_count_flush_keeps_every_visitor_in_order() -> None:
    visitors = [impression(f"u{i}", n=i) for i in range(2500)]
    batcher = EventBatcher(max_visitors=1000, max_bytes=10_000_000, flush_interval=10)
    sealed = feed(batcher, [payload([v]) for v in visitors])
    assert [len(b.visitors) for b in sealed] == [1000, 1000]
    rest = batcher.drain()
    assert [len(b.visitors) for b in rest] == [500]
    bodies = [json.loads(b.body()) for b in sealed + rest]
    assert [v for b in bodies for v in b["visitors"]] == visitors
    assert all(b == {**HEADER, "visitors": b["visitors"]} for b in bodies)
    assert [o.position for b in sealed + rest for o in b.origins] == list(range(2500))


def test_size_flush_never_exceeds_max_bytes_and_size_is_exact() -> None:
    visitors = [impression(f"user-{i:04d}", n=i) for i in range(300)]
    batcher = EventBatcher(max_visitors=1000, max_bytes=8_000, flush_interval=10)
    bodies = feed(batcher, [payload(visitors[i:i + 7]) for i in range(0, 300, 7)]) + batcher.drain()
    assert len(bodies) > 10
    for body in bodies:
        data = body.body()
        assert len(data) == body.size <= 8_000
        # A body is sealed only when the next visitor would not fit.
    assert all(b.size + 1 + len(nb.visitors[0]) > 8_000 for b, nb in zip(bodies, bodies[1:]))
    assert [v for b in bodies for v in json.loads(b.body())["visitors"]] == visitors


def test_interval_flush_uses_the_injected_clock() -> None:
    clock = FakeClock()
    batcher = EventBatcher(max_visitors=1000, max_bytes=1_000_000, flush_interval=10, clock=clock)
    feed(batcher, [payload([impression("a")])])
    clock.now += 9.99
    feed(batcher, [payload([impression("b")])])  # joins the open body: its age counts from "a"
    assert batcher.due() == []
    assert batcher.next_due() == pytest.approx(110.0)
    clock.now += 0.01
    (body,) = batcher.due()
    assert [json.loads(v)["visitor_id"] for v in body.visitors] == ["a", "b"]
    assert batcher.due() == [] and batcher.open_visitors == 0


@pytest.mark.parametrize(
    "field,value",
    [("account_id", "99"), ("project_id", "99"), ("revision", "8"), ("client_name", "other"),
     ("client_version", "9.9"), ("anonymize_ip", False), ("enrich_decisions", False), ("endpoint", None)],
)
def test_only_compatible_payloads_merge(field: str, value: Any) -> None:
    batcher = EventBatcher()
    feed(batcher, [payload([impression("a")]), payload([impression("b")])])
    if field == "endpoint":
        feed(batcher, [payload([impression("c")])], endpoint="https://eu.example/v1/events")
    else:
        feed(batcher, [payload([impression("c")], **{field: value})])
    bodies = sorted((json.loads(b.body()) for b in batcher.drain()), key=lambda b: len(b["visitors"]))
    assert [[v["visitor_id"] for v in b["visitors"]] for b in bodies] == [["c"], ["a", "b"]]
    if field != "endpoint":
        assert bodies[0][field] == value and bodies[1][field] == HEADER[field]


def test_null_variation_dead_letter_splits_the_snapshot_off() -> None:
    good = impression("u1", n=1)
    mixed = impression("u2", n=2)
    mixed["snapshots"].append(impression("u2", variation_id=None, n=3)["snapshots"][0])
    only_null = impression("u3", variation_id=None, n=4)
    split = split_payload(payload([good, mixed, only_null]), ENDPOINT, Origin("p", 5))
    sent = [json.loads(v.data) for v in split.visitors]
    assert [v["visitor_id"] for v in sent] == ["u1", "u2"]
    assert sent[1]["snapshots"] == mixed["snapshots"][:1]  # the good snapshot stays, uuid and all
    assert [r.reason for r in split.rejected] == [Reason.SINK_REJECTED, Reason.SINK_REJECTED]
    assert all(r.dead_letter and r.origin == Origin("p", 5) for r in split.rejected)
    rejected_uuids = [u for r in split.rejected for u in uuids(r.payload["visitors"])]
    assert rejected_uuids == [mixed["snapshots"][1]["events"][0]["uuid"]] + uuids([only_null])
    # Sent + rejected = everything, nothing twice.
    assert sorted(uuids(sent) + rejected_uuids) == sorted(uuids([good, mixed, only_null]))
    body = json.loads(b"".join([b'{"account_id":"1","visitors":[', b",".join(v.data for v in split.visitors), b"]}"]))
    assert schema_errors(body) == []


def test_null_variation_drop_and_send_modes() -> None:
    p = payload([impression("u", variation_id=None)])
    dropped = split_payload(p, ENDPOINT, Origin("p", 0), null_variation="drop")
    assert dropped.visitors == [] and [r.dead_letter for r in dropped.rejected] == [False]
    sent = split_payload(p, ENDPOINT, Origin("p", 0), null_variation="send")
    assert sent.rejected == [] and json.loads(sent.visitors[0].data)["snapshots"][0]["decisions"][0]["variation_id"] is None


def test_malformed_visitor_is_rejected_alone() -> None:
    bad_timestamp = impression("bad")
    bad_timestamp["snapshots"][0]["events"][0]["timestamp"] = "yesterday"
    no_id = impression("x")
    del no_id["visitor_id"]
    split = split_payload(payload([impression("ok"), bad_timestamp, no_id]), ENDPOINT, Origin("p", 1))
    assert [json.loads(v.data)["visitor_id"] for v in split.visitors] == ["ok"]
    assert [(r.reason, r.error) for r in split.rejected] == [
        (Reason.MALFORMED, "event.timestamp must be an integer"),
        (Reason.MALFORMED, "visitor_id must be a string"),
    ]


def test_bad_header_rejects_the_payload() -> None:
    split = split_payload({"visitors": [impression("u")]}, ENDPOINT, Origin("p", 1))
    assert split.group is None and split.visitors == []
    assert [(r.reason, r.error, r.events) for r in split.rejected] == [(Reason.MALFORMED, "account_id must be a string", 1)]


def test_oversize_visitor_raises() -> None:
    huge = impression("u")
    huge["snapshots"][0]["events"][0]["tags"] = {"blob": "x" * 5000}
    batcher = EventBatcher(max_bytes=2000)
    split = split_payload(payload([huge]), ENDPOINT, Origin("p", 0))
    with pytest.raises(OversizeVisitor):
        batcher.add(split.group, split.visitors[0])


def test_seed_batch_request_body_passes_through_unchanged() -> None:
    seed = json.loads((FIXTURES / "seed_batch_request_body.json").read_text())
    split = split_payload(seed, ENDPOINT, Origin("p", 0))
    batcher = EventBatcher()
    for v in split.visitors:
        assert batcher.add(split.group, v) == []
    (body,) = batcher.drain()
    assert json.loads(body.body()) == seed  # header fields it lacks are not invented
    assert body.events == 3
    assert schema_errors(seed) == []


def test_per_visitor_origins() -> None:
    p = payload([impression("a"), impression("b")])
    split = split_payload(p, ENDPOINT, [Origin("s", 3), Origin("s", 9)])
    assert [v.origin.position for v in split.visitors] == [3, 9]
    with pytest.raises(ValueError):
        split_payload(p, ENDPOINT, [Origin("s", 3)])
