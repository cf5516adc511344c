"""The collector: POST /events, /web/page_view and /button/click.

Each request is authenticated, read with a size cap, parsed, validated as a
whole (one bad event refuses the batch, with a reason per field), mapped to
the event model and handed to the transport as NDJSON lines in the
`Event.to_record()` form. The answer `{"message": "Received", "accepted": n}`
is sent only after `send` returned; a full transport is a 503 with
`Retry-After`, never a silent drop.

Mapping: customer_id = the authenticated username; event_type = the route's
(`page_view`, `button_click`) or the body's on /events; transaction_id = the
client's `event_id` or a new UUID; timestamp = the client's or `received_at`.
Properties keep the remaining fields plus `username` and `received_at`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import uuid
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from producers.transport import TransportFull
from service.bodies import bad_text, may_hold_bad_text, parse_json, read_capped
from service.context import ServiceContext
from service.errors import ApiError, reason, validation_error
from service.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED, TRANSPORT_FULL
from streams.events import Event, ParseError, format_utc
from streams.timestamps import parse_timestamp_us

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PROPERTIES = 100
# Stamped or derived by the collector: a client may not set them on /events.
RESERVED = {
    "customer_id": "set from the authenticated user",
    "transaction_id": "send event_id instead",
    "username": "set from the authenticated user",
    "received_at": "set by the collector",
    "v": "the schema version is set by the collector",
}
_MIN_EPOCH_MS, _MAX_EPOCH_MS = -62135596800000, 253402300799999  # years 1..9999
# One encoder for every line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _no_controls(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None
    return value


# Values that become count keys or object-key parts: no control characters.
Ident = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_controls)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_no_controls)]
Text = Annotated[str, StringConstraints(max_length=8192)]  # free text: any Unicode but NUL
TIMESTAMP_DOC = "ISO 8601 with a UTC offset, or epoch milliseconds; default: the time the collector received it"


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Ident | None = Field(None, description="your id of the event: a resend with the same id counts once")
    timestamp: Any = Field(None, description=TIMESTAMP_DOC, json_schema_extra={"type": ["string", "integer"]})


class PageView(_Common):
    """Seed 003's page view."""

    url: Url
    referral_url: Url | None = None
    ipaddress: Annotated[str, StringConstraints(max_length=64), AfterValidator(_ip_address)] | None = None
    useragent: Text | None = None
    session_id: Ident


class ButtonClick(_Common):
    """Seed 003's button click."""

    session_id: Ident
    button_id: Ident


class GenericEvent(_Common):
    """Any event type; other fields are kept as properties."""

    model_config = ConfigDict(extra="allow", strict=True)

    event_type: Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_controls)]


def _schema(model: type[BaseModel], many: bool = False) -> dict[str, Any]:
    one = model.model_json_schema()
    content = {"oneOf": [one, {"type": "array", "items": one}]} if many else one
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": content}}}}


RECEIVED = {
    200: {
        "description": "every event is on the transport",
        "content": {"application/json": {"example": {"message": "Received", "accepted": 1}}},
    },
    401: {"description": "missing or bad Basic credentials"},
    413: {"description": "body or batch over the limit"},
    422: {"description": "field-level reasons"},
    429: {"description": "too many failed logins from this client"},
    503: {"description": "the transport is full or down; retry after Retry-After"},
}


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["collector"])
    user = Depends(ctx.auth)

    @router.post("/events", responses=RECEIVED, openapi_extra=_schema(GenericEvent, many=True))
    async def post_events(request: Request, username: str = user) -> JSONResponse:
        """One JSON event or an array of them (at most `[http] max_batch`)."""
        return await _collect(ctx, request, username, None, GenericEvent, "/events")

    @router.post("/web/page_view", responses=RECEIVED, openapi_extra=_schema(PageView))
    async def post_page_view(request: Request, username: str = user) -> JSONResponse:
        """Seed 003: a page view."""
        return await _collect(ctx, request, username, "page_view", PageView, "/web/page_view")

    @router.post("/button/click", responses=RECEIVED, openapi_extra=_schema(ButtonClick))
    async def post_button_click(request: Request, username: str = user) -> JSONResponse:
        """Seed 003: a button click."""
        return await _collect(ctx, request, username, "button_click", ButtonClick, "/button/click")

    return router


async def _collect(
    ctx: ServiceContext, request: Request, username: str, event_type: str | None, model: type[_Common], route: str
) -> JSONResponse:
    body = await read_capped(request, ctx.http.max_body_bytes)
    # Parsing, validating and sending take milliseconds for a large batch: off
    # the event loop, so that other requests (and /healthz) keep flowing.
    accepted = await run_in_threadpool(_accept, ctx, body, username, event_type, model)
    EVENTS_ACCEPTED.labels(route).inc(accepted)
    return JSONResponse({"message": "Received", "accepted": accepted})


def _accept(ctx: ServiceContext, body: bytes, username: str, event_type: str | None, model: type[_Common]) -> int:
    """Parse, validate, encode and send one request's events; the number sent."""
    parsed = parse_json(body)
    many = event_type is None and isinstance(parsed, list)
    items = parsed if many else [parsed]
    if many and not items:
        EVENTS_REJECTED.labels("invalid").inc()
        raise validation_error(422, [reason(["body"], "the batch is empty", "too_short")])
    if len(items) > ctx.http.max_batch:
        EVENTS_REJECTED.labels("batch_too_large").inc()
        raise ApiError(413, f"batch of {len(items)} events is over the limit of {ctx.http.max_batch}")
    check_text = may_hold_bad_text(body)
    lines, reasons = _encode_all(ctx, items, many, username, event_type, model, ctx.clock_us(), check_text)
    if reasons:
        EVENTS_REJECTED.labels("invalid").inc()
        raise validation_error(422, reasons)
    return _send(ctx, lines)


def _encode_all(
    ctx: ServiceContext,
    items: list[Any],
    many: bool,
    username: str,
    event_type: str | None,
    model: type[_Common],
    now_us: int,
    check_text: bool = True,
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """NDJSON lines of every event, or the reasons why some are invalid."""
    lines: list[bytes] = []
    reasons: list[dict[str, Any]] = []
    received_at = format_utc(now_us)
    for index, item in enumerate(items):
        loc: list[str | int] = ["body", index] if many else ["body"]
        found = _validate(ctx, item, loc, username, event_type, model, now_us, received_at, check_text)
        if isinstance(found, list):
            reasons.extend(found)
        elif not reasons:
            lines.append(found)
    return lines, reasons


def _validate(
    ctx: ServiceContext,
    item: Any,
    loc: list[str | int],
    username: str,
    event_type: str | None,
    model: type[_Common],
    now_us: int,
    received_at: str,
    check_text: bool = True,
) -> bytes | list[dict[str, Any]]:
    """One event's NDJSON line, or its reasons."""
    if not isinstance(item, dict):
        return [reason(loc, f"expected a JSON object, got {_json_type(item)}", "model_type")]
    reasons = list(bad_text(item, loc)) if check_text else []
    if reasons:
        return reasons
    try:
        parsed = model.model_validate(item)
    except ValidationError as exc:
        return [
            reason([*loc, *e["loc"]], e["msg"], e["type"])
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
    event_time_us = _event_time(ctx, parsed.timestamp, [*loc, "timestamp"], now_us, reasons)
    properties = _properties(parsed, loc, reasons)
    if reasons:
        return reasons
    event = Event(
        customer_id=username,
        event_type=event_type or getattr(parsed, "event_type"),
        transaction_id=parsed.event_id or _new_id(),
        event_time_us=now_us if event_time_us is None else event_time_us,
        properties={**properties, "username": username, "received_at": received_at},
    )
    line = _encode(event.to_record()).encode("utf-8")
    if len(line) > ctx.settings.max_record_bytes:
        return [reason(loc, f"the event is {len(line)} bytes as a record; the limit is {ctx.settings.max_record_bytes}", "too_long")]
    return line


def _new_id() -> str:
    """A random (version 4) UUID. The randomness is fetched in blocks, per
    thread (a shared block could hand two threads the same id, and a duplicate
    transaction id would be dropped as a duplicate event): one getrandom call
    per event costs more than the rest of its encoding."""
    pool = _random
    offset = getattr(pool, "offset", _POOL_BYTES)
    if offset >= _POOL_BYTES:
        pool.block, offset = os.urandom(_POOL_BYTES), 0
    pool.offset = offset + 16
    return str(uuid.UUID(bytes=pool.block[offset : offset + 16], version=4))


_POOL_BYTES = 16 * 256
_random = threading.local()


def _properties(parsed: _Common, loc: list[str | int], reasons: list[dict[str, Any]]) -> dict[str, Any]:
    """Declared optional fields that were given, plus /events' extra fields."""
    declared = {
        name: value
        for name, value in parsed.__dict__.items()
        if name not in ("event_id", "timestamp", "event_type") and value is not None
    }
    extra = parsed.model_extra or {}
    if len(extra) > MAX_PROPERTIES:
        reasons.append(reason(loc, f"at most {MAX_PROPERTIES} extra properties, got {len(extra)}", "too_long"))
    for name in extra:
        if name in RESERVED:
            reasons.append(reason([*loc, name], f"reserved field: {RESERVED[name]}", "reserved"))
        elif not name or len(name) > 128 or _CONTROL.search(name):
            reasons.append(reason([*loc, name[:128]], "field names need 1-128 characters, no control characters", "bad_name"))
    return {**declared, **extra}


def _event_time(
    ctx: ServiceContext, value: Any, loc: list[str | int], now_us: int, reasons: list[dict[str, Any]]
) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            event_us = parse_timestamp_us(value, ctx.settings.naive_timezone)
        except ParseError as exc:
            reasons.append(reason(loc, str(exc), exc.reason.value.replace(" ", "_")))
            return None
    elif isinstance(value, int) and not isinstance(value, bool):
        if not _MIN_EPOCH_MS <= value <= _MAX_EPOCH_MS:
            reasons.append(reason(loc, f"epoch milliseconds out of range: {value}", "bad_timestamp"))
            return None
        event_us = value * 1000
    else:
        reasons.append(reason(loc, f"expected an ISO 8601 string or epoch milliseconds, got {_json_type(value)}", "bad_timestamp"))
        return None
    tolerance = ctx.settings.future_tolerance
    if event_us > now_us + tolerance.total_seconds() * 1_000_000:
        # The daemon would dead-letter it as `future`; say so while the client listens.
        reasons.append(reason(loc, f"timestamp is more than {tolerance} in the future", "future"))
        return None
    return event_us


def _json_type(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _send(ctx: ServiceContext, lines: list[bytes]) -> int:
    """Hand every line to the transport; 503 when it cannot take them all."""
    retry = {"Retry-After": str(ctx.http.retry_after_seconds)}
    if ctx.writer is None:
        raise ApiError(503, f"the collector has no transport: {ctx.writer_error or 'not configured'}", headers=retry)
    send: Callable[[list[bytes]], int] = ctx.writer.send
    try:
        # Blocks (an fsync, a network call, a full spool's wait) on a worker thread.
        accepted = send(lines)
    except TransportFull as exc:
        TRANSPORT_FULL.inc()
        EVENTS_REJECTED.labels("transport_full").inc()
        raise ApiError(503, f"transport full, retry later: {exc}", headers=retry) from None
    except Exception as exc:  # a transport outage must be a 503, never a crash
        log.warning("http: transport send failed: %s", exc, exc_info=True)
        EVENTS_REJECTED.labels("transport_error").inc()
        raise ApiError(503, f"transport unavailable, retry later: {type(exc).__name__}", headers=retry) from None
    if accepted != len(lines):
        EVENTS_REJECTED.labels("transport_partial").inc()
        raise ApiError(
            503,
            f"the transport accepted {accepted} of {len(lines)} events; resend with event_id set so the resent ones count once",
            headers=retry,
        )
    return accepted
