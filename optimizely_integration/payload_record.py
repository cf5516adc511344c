"""The transport record of one SDK payload (schema version 1)::

    {"v": 1, "kind": "optimizely_payload", "url": "https://logx.optimizely.com/v1/events",
     "payload": {"account_id": "...", ..., "visitors": [...]}}

One NDJSON line per `LogEvent`, the payload kept whole (every visitor,
snapshot, decision and event, uuids included) so the sink can re-batch it and
a dead-lettered record can be replayed through the transport as is.

Usage::

    line = encode_payload_record(log_event.url, log_event.params)
    record = decode_payload_record(line)   # PayloadRecord(url, payload)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

RECORD_VERSION = 1
RECORD_KIND = "optimizely_payload"

# allow_nan=False: NaN is not JSON and the Event API would reject the body.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class PayloadRecordError(ValueError):
    """Not a valid optimizely payload record; the message says why."""


@dataclass(frozen=True, slots=True)
class PayloadRecord:
    url: str
    payload: dict[str, Any]


def encode_payload_record(url: str, payload: Mapping[str, Any]) -> bytes:
    """The record as compact UTF-8 JSON, without a newline (transports add framing)."""
    return _encode({"v": RECORD_VERSION, "kind": RECORD_KIND, "url": url, "payload": payload}).encode("utf-8")


def record_prefix(url: str) -> bytes:
    """The bytes before the payload object, for building records from pre-serialized payloads."""
    return b'{"v":1,"kind":"optimizely_payload","url":' + _encode(url).encode("utf-8") + b',"payload":'


def _reject_constant(name: str) -> Any:
    raise PayloadRecordError(f"{name} is not valid JSON")


def decode_payload_record(data: bytes | str) -> PayloadRecord:
    try:
        record = json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadRecordError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise PayloadRecordError("not a JSON object")
    if record.get("kind") != RECORD_KIND:
        raise PayloadRecordError(f"kind is {record.get('kind')!r}, expected {RECORD_KIND!r}")
    if record.get("v") != RECORD_VERSION:
        raise PayloadRecordError(f"unsupported record version {record.get('v')!r}")
    url, payload = record.get("url"), record.get("payload")
    if not isinstance(url, str) or not url:
        raise PayloadRecordError("url must be a non-empty string")
    if not isinstance(payload, dict) or not isinstance(payload.get("visitors"), list):
        raise PayloadRecordError("payload must be an object with a visitors list")
    return PayloadRecord(url, payload)
