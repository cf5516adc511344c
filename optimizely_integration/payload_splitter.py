"""Split an Optimizely Event API payload into checked visitor entries, ready
to merge (pure: no I/O, no threads).

A payload (`LogEvent.params`) is a header (`account_id`, `project_id`,
`revision`, `client_name`, `client_version`, `anonymize_ip`,
`enrich_decisions`, ...) plus `visitors`. Visitors of different payloads may
share one request body when every header field and the endpoint are equal
(their `BodyGroup`): the SDK itself takes these fields from the first event of
a batch (`EventFactory.create_log_event`), so merging anything else would
misattribute events. The rule here is stricter than the listed fields: *all*
non-visitor top-level fields must be equal, so an unknown field is never lost
or mixed.

Each visitor is checked against the Event API schema (one bad visitor must not
get a whole body rejected) and serialized once, to compact JSON, and never
modified: every event keeps its uuid (the Event API de-duplicates replays on
it). What will not be sent comes back as `Rejected`, a one-visitor payload.

`"variation_id": null` (the SDK emits it for a flag decision with no variation,
e.g. a user who matched no rollout rule with `sendFlagDecisions`): the Event
API schema types `variation_id` as a string, so such a snapshot would make the
whole body invalid (and, with `X-Optimizely-Strict`, rejected). The default
`null_variation="dead_letter"` splits that snapshot off its visitor and returns
it as `Rejected` (the sink dead-letters it as `sink rejected`, replayable);
`"drop"` discards it (counted in a metric); `"send"` keeps it as the SDK would.

Usage::

    split = split_payload(payload, endpoint, Origin("spool", 42))
    split.group          # the BodyGroup its visitors may share a body with (None: header unusable)
    split.visitors       # PreparedVisitor: compact JSON, event count, origin
    split.rejected       # Rejected: malformed, or a null variation split off
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from streams.events import Reason

NULL_VARIATION_MODES = ("dead_letter", "drop", "send")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode

_HEADER_TYPES: dict[str, type] = {
    "account_id": str,
    "project_id": str,
    "revision": str,
    "client_name": str,
    "client_version": str,
    "anonymize_ip": bool,
    "enrich_decisions": bool,
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a visitor came from: acknowledging it lets its source position be checkpointed."""

    partition: str
    position: int


@dataclass(frozen=True, slots=True)
class BodyGroup:
    """What visitors of one request body share: endpoint and header."""

    endpoint: str
    header: Mapping[str, Any]
    prefix: bytes  # b'{"account_id":"1",...,"visitors":['
    key: tuple[str, str]


@dataclass(frozen=True, slots=True)
class PreparedVisitor:
    data: bytes  # compact JSON of one visitor entry
    events: int
    origin: Origin


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a payload that will not be sent, as a one-visitor payload."""

    reason: Reason
    error: str
    payload: Mapping[str, Any]
    origin: Origin
    events: int
    dead_letter: bool = True  # False: dropped by config (null_variation="drop")


@dataclass(slots=True)
class SplitPayload:
    group: BodyGroup | None
    visitors: list[PreparedVisitor] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def make_group(header: Mapping[str, Any], endpoint: str) -> BodyGroup:
    """The group of a header. Memoized: every payload of one datafile has the
    same header, and encoding it per payload was the sink's main cost."""
    items = tuple(header.items())
    try:
        return _make_group_cached(items, endpoint)
    except TypeError:  # an unhashable (nested) header value: rare, not cached
        return _make_group(items, endpoint)


def _make_group(items: tuple[tuple[str, Any], ...], endpoint: str) -> BodyGroup:
    parts = [_encode(k).encode() + b":" + _encode(v).encode() for k, v in items]
    prefix = b"{" + b"".join(p + b"," for p in parts) + b'"visitors":['
    header = dict(items)
    return BodyGroup(endpoint, header, prefix, (endpoint, _canonical(header)))


_make_group_cached = functools.lru_cache(maxsize=256)(_make_group)


def header_problem(header: Mapping[str, Any]) -> str | None:
    """Why a payload header would make the Event API reject the body, if it would."""
    if not isinstance(header.get("account_id"), str):
        return "account_id must be a string"
    for name, kind in _HEADER_TYPES.items():
        if name in header and not isinstance(header[name], kind):
            return f"{name} must be a {kind.__name__}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _snapshot_problem(snapshot: Any) -> str | None:
    """A cheap structural check mirroring the Event API schema (required fields
    and types): one bad visitor must not get a whole 1,000-visitor body rejected."""
    if not isinstance(snapshot, dict):
        return "snapshot is not an object"
    events = snapshot.get("events")
    if not isinstance(events, list):
        return "snapshot.events must be a list"
    for event in events:
        if not isinstance(event, dict):
            return "event is not an object"
        if not isinstance(event.get("uuid"), str):
            return "event.uuid must be a string"
        if not _is_int(event.get("timestamp")):
            return "event.timestamp must be an integer"
        for name in ("entity_id", "key", "type"):
            if name in event and not isinstance(event[name], str):
                return f"event.{name} must be a string"
        if "revenue" in event and not _is_int(event["revenue"]):
            return "event.revenue must be an integer"
        if "value" in event and (isinstance(event["value"], bool) or not isinstance(event["value"], (int, float))):
            return "event.value must be a number"
        if "tags" in event and not isinstance(event["tags"], dict):
            return "event.tags must be an object"
    decisions = snapshot.get("decisions", [])
    if not isinstance(decisions, list):
        return "snapshot.decisions must be a list"
    for decision in decisions:
        if not isinstance(decision, dict):
            return "decision is not an object"
        for name in ("campaign_id", "experiment_id", "variation_id"):
            value = decision.get(name)
            if value is None and name == "variation_id" and "variation_id" in decision:
                continue  # handled by the null_variation policy
            if not isinstance(value, str):
                return f"decision.{name} must be a string"
    return None


def _has_null_variation(snapshot: dict) -> bool:
    return any(d.get("variation_id", "") is None for d in snapshot.get("decisions", ()))


def _visitor_problem(visitor: Any) -> str | None:
    if not isinstance(visitor, dict):
        return "visitor is not an object"
    if not isinstance(visitor.get("visitor_id"), str):
        return "visitor_id must be a string"
    if "session_id" in visitor and not isinstance(visitor["session_id"], str):
        return "session_id must be a string"
    attributes = visitor.get("attributes", [])
    if not isinstance(attributes, list):
        return "attributes must be a list"
    for attribute in attributes:
        if not isinstance(attribute, dict) or not isinstance(attribute.get("type"), str) or "value" not in attribute:
            return "attribute needs a string type and a value"
    snapshots = visitor.get("snapshots")
    if not isinstance(snapshots, list):
        return "snapshots must be a list"
    for snapshot in snapshots:
        problem = _snapshot_problem(snapshot)
        if problem:
            return problem
    return None


def _count_events(visitor: Any) -> int:
    try:
        return sum(len(s.get("events", ())) for s in visitor.get("snapshots", ()))
    except (AttributeError, TypeError):
        return 0


def split_payload(
    payload: Mapping[str, Any],
    endpoint: str,
    origins: Origin | Sequence[Origin],
    null_variation: str = "dead_letter",
) -> SplitPayload:
    """The payload's visitors, serialized and checked, plus what will not be sent.

    `origins` is one origin for all visitors (a transport record) or one per
    visitor (conversions built from stream events).
    """
    if null_variation not in NULL_VARIATION_MODES:
        raise ValueError(f"null_variation must be one of {NULL_VARIATION_MODES}")
    visitors = payload.get("visitors")
    header = {k: v for k, v in payload.items() if k != "visitors"}
    per_visitor = not isinstance(origins, Origin)
    if per_visitor and (not isinstance(visitors, list) or len(origins) != len(visitors)):
        raise ValueError("need one origin per visitor")

    def origin_of(i: int) -> Origin:
        return origins[i] if per_visitor else origins  # type: ignore[index,return-value]

    problem = header_problem(header) if isinstance(visitors, list) else "visitors must be a list"
    group = None
    if not problem:
        try:
            group = make_group(header, endpoint)
        except (ValueError, TypeError) as exc:
            problem = f"header not serializable as JSON: {exc}"
    if group is None:
        first = origin_of(0) if per_visitor and visitors else origins
        events = sum(_count_events(v) for v in visitors) if isinstance(visitors, list) else 0
        return SplitPayload(None, [], [Rejected(Reason.MALFORMED, str(problem), payload, first, events)])  # type: ignore[arg-type]
    out = SplitPayload(group)
    for i, visitor in enumerate(visitors):
        origin = origin_of(i)
        problem = _visitor_problem(visitor)
        if problem:
            out.rejected.append(
                Rejected(Reason.MALFORMED, problem, {**header, "visitors": [visitor]}, origin, _count_events(visitor))
            )
            continue
        if null_variation != "send" and any(_has_null_variation(s) for s in visitor["snapshots"]):
            bad = [s for s in visitor["snapshots"] if _has_null_variation(s)]
            good = [s for s in visitor["snapshots"] if not _has_null_variation(s)]
            out.rejected.append(
                Rejected(
                    Reason.SINK_REJECTED,
                    "decision variation_id is null; the Event API schema requires a string",
                    {**header, "visitors": [{**visitor, "snapshots": bad}]},
                    origin,
                    sum(len(s["events"]) for s in bad),
                    dead_letter=null_variation == "dead_letter",
                )
            )
            if not good:
                continue
            visitor = {**visitor, "snapshots": good}
        try:
            data = _encode(visitor).encode("utf-8")
        except (ValueError, TypeError) as exc:  # NaN / Infinity, or a non-JSON value
            out.rejected.append(
                Rejected(
                    Reason.MALFORMED, f"not serializable as JSON: {exc}", {**header, "visitors": [visitor]}, origin,
                    _count_events(visitor),
                )
            )
            continue
        out.visitors.append(PreparedVisitor(data, _count_events(visitor), origin))
    return out
