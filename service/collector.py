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

Two rules beyond the fields (docs/http.md):

- idempotency: an `event_id` the same user sent within
  `[http] idempotency_retention` is a duplicate, answered as such and not sent
  again (`service.idempotency`);
- no late events: a client timestamp the daemon would drop as late, measured
  against the collector's clock, is refused with 422 (`late`), and one more
  than `[http] max_clock_skew` ahead is refused as `future`.

Speed: a request is parsed with orjson and checked by a plain loop over the
events (`_fast_lines`), on the event loop, without a worker thread. That
path only accepts: anything it is not sure about (an unusual value, any
invalid event, a body with a `\\u0000` escape or a very long number) goes to
the reference path (`_slow_lines`: json + the pydantic models), which gives
the 4xx answer with its reasons. A property test holds the two paths to the
same records.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import os
import re
import threading
import time
from datetime import timedelta
from typing import Annotated, Any, Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema

from producers.transport import TransportFull
from service.bodies import bad_text, may_hold_bad_text, parse_json
from service.context import ServiceContext
from service.errors import ApiError, error_response, reason, validation_error
from service.group_commit import LateError, LedgerError, PartialSend, Submission
from service.metrics import EVENTS_ACCEPTED, EVENTS_DUPLICATE, EVENTS_REJECTED, LATENCY, REQUESTS, TRANSPORT_FULL
from streams.events import Event, ParseError
from streams.timestamps import MAX_EPOCH_MS, MIN_EPOCH_MS, epoch_ms_to_us, future_limit_us, parse_timestamp_us
from streams.utc import format_utc

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_has_control = _CONTROL.search
MAX_PROPERTIES = 100
# Stamped or derived by the collector: a client may not set them on /events.
RESERVED = {
    "customer_id": "set from the authenticated user",
    "transaction_id": "send event_id instead",
    "username": "set from the authenticated user",
    "received_at": "set by the collector",
    "v": "the schema version is set by the collector",
}
# Between the acceptance check and the consumer reading the event: a spool
# commit, a poll. Part of the margin that keeps accepted events from being late.
LATE_GUARD = timedelta(seconds=30)
# Bodies above this are parsed on a worker thread, so that a 1 MB batch does
# not hold up the event loop (and /healthz) for milliseconds.
OFFLOAD_BYTES = 128 * 1024
# One encoder for every line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
_NO_NUL = r"^[^\x00]*$"
ISO_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
)


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


def _text_schema(low: int, high: int, pattern: str, **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "minLength": low, "maxLength": high, "pattern": pattern, **extra})


# Values that become count keys: no control characters. The JSON schema says
# what the validators check, so that the OpenAPI document tells the truth.
Ident = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_controls), _text_schema(1, 256, _NO_CONTROLS)
]
Url = Annotated[
    str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_no_controls), _text_schema(1, 4096, _NO_CONTROLS)
]
Text = Annotated[str, StringConstraints(max_length=8192), _text_schema(0, 8192, _NO_NUL)]  # any Unicode but NUL
IpAddress = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_ip_address),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]}),
]
TIMESTAMP_DOC = (
    "ISO 8601 with a UTC offset, or epoch milliseconds (an integer, `1614557405657.0` too);"
    " default: the time the collector received it."
    " It must lie within the lateness behind the collector's clock and at most `[http] max_clock_skew`"
    " ahead of it (otherwise 422 `late` or `future`)"
)
TIMESTAMP_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": ISO_PATTERN},
        {"type": "integer", "minimum": MIN_EPOCH_MS, "maximum": MAX_EPOCH_MS},
        {"type": "null"},
    ],
    "description": TIMESTAMP_DOC,
}
EVENT_ID_DOC = (
    "your id of the event: the same id from the same user within `[http] idempotency_retention` (24 h)"
    " counts once, and a resend is answered as a duplicate"
)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: Ident | None = Field(None, description=EVENT_ID_DOC)
    timestamp: Annotated[Any, WithJsonSchema(TIMESTAMP_SCHEMA)] = None


class PageView(_Common):
    """Seed 003's page view."""

    url: Url
    referral_url: Url | None = None
    ipaddress: IpAddress | None = None
    useragent: Text | None = None
    session_id: Ident


class ButtonClick(_Common):
    """Seed 003's button click."""

    session_id: Ident
    button_id: Ident


_RESERVED_NAMES = sorted(RESERVED)
PROPERTY_MARKER = {"description": "kept as a property of the event"}


class GenericEvent(_Common):
    """Any event type; other fields (at most 100) are kept as properties."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            # At most 100 fields besides event_type, event_id and timestamp.
            "if": {"required": ["event_id", "timestamp"]},
            "then": {"maxProperties": MAX_PROPERTIES + 3},
            "else": {
                "if": {"anyOf": [{"required": ["event_id"]}, {"required": ["timestamp"]}]},
                "then": {"maxProperties": MAX_PROPERTIES + 2},
                "else": {"maxProperties": MAX_PROPERTIES + 1},
            },
            "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": _NO_CONTROLS, "not": {"enum": _RESERVED_NAMES}},
            "additionalProperties": PROPERTY_MARKER,  # service.openapi puts its `Property` schema here
        },
    )

    event_type: Annotated[
        str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_controls), _text_schema(1, 128, _NO_CONTROLS)
    ]


def _schema(model: type[BaseModel], max_batch: int | None = None) -> dict[str, Any]:
    one = model.model_json_schema()
    content = (
        {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": max_batch}]} if max_batch else one
    )
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": content}}}}


RECEIVED_SCHEMA = {
    "type": "object",
    "required": ["message", "accepted"],
    "properties": {
        "message": {"type": "string", "enum": ["Received", "Duplicate"]},
        "accepted": {"type": "integer", "minimum": 0, "description": "events put on the transport by this request"},
        "duplicates": {"type": "integer", "minimum": 1, "description": "events whose event_id was received before"},
        "duplicate_event_ids": {"type": "array", "items": {"type": "string"}},
    },
}


def collector_responses(error_schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    def error(text: str, **more: Any) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": error_schema}}, **more}

    retry = {"headers": {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}}
    return {
        200: {
            "description": "every new event is on the transport (durable); resent event_ids are counted once",
            "content": {
                "application/json": {
                    "schema": RECEIVED_SCHEMA,
                    "example": {"message": "Received", "accepted": 1},
                }
            },
        },
        400: error("the body is not UTF-8 strict JSON"),
        401: error("missing or bad Basic credentials"),
        413: error("body or batch over the limit"),
        422: error("field-level reasons, including `late` and `future` timestamps"),
        429: error("too many failed logins from this client", **retry),
        503: error("the transport is full or down; retry after Retry-After", **retry),
    }


def build_router(ctx: ServiceContext, error_schema: dict[str, Any]) -> APIRouter:
    router = APIRouter(tags=["collector"])
    responses = collector_responses(error_schema)
    # The routes call the auth themselves rather than declare it as a FastAPI
    # dependency: solving dependencies was a third of the framework's time
    # per request. The document still says they need it.
    secured = {"security": [{"basic": []}]}

    @router.post("/events", responses=responses, openapi_extra={**_schema(GenericEvent, ctx.http.max_batch), **secured})
    async def post_events(request: Request) -> Response:
        """One JSON event or an array of them (at most `[http] max_batch`)."""
        return await _collect(ctx, request, None, "/events")

    @router.post("/web/page_view", responses=responses, openapi_extra={**_schema(PageView), **secured})
    async def post_page_view(request: Request) -> Response:
        """Seed 003: a page view."""
        return await _collect(ctx, request, "page_view", "/web/page_view")

    @router.post("/button/click", responses=responses, openapi_extra={**_schema(ButtonClick), **secured})
    async def post_button_click(request: Request) -> Response:
        """Seed 003: a button click."""
        return await _collect(ctx, request, "button_click", "/button/click")

    return router


_MODELS: dict[str | None, type[_Common]] = {None: GenericEvent, "page_view": PageView, "button_click": ButtonClick}
_LANES: dict[str, str | None] = {"/events": None, "/web/page_view": "page_view", "/button/click": "button_click"}


class CollectorLane:
    """ASGI middleware: a POST to a collector route goes straight to
    `_collect`, past FastAPI's routing, dependency solving and middleware
    stack, which cost as much per request as checking 100 events. Everything
    else, and the document, stays FastAPI's (the routes above are the same
    handler). It answers errors and counts requests itself, as the exception
    handlers and `service.app._Metrics` do for the other routes."""

    def __init__(self, app: Any, ctx: ServiceContext, plain: dict[tuple[str, str], Any] | None = None) -> None:
        self.app = app
        self.ctx = ctx
        # (method, path) -> endpoint(request) of routes that need nothing from
        # FastAPI (the bucketer's): filled by build_app once they are mounted.
        self.plain = plain if plain is not None else {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"]
        method = scope["method"]
        if method == "POST" and route in _LANES:
            handle = None
        else:
            handle = self.plain.get((method, route))
            if handle is None:
                await self.app(scope, receive, send)
                return
        started = time.perf_counter()
        try:
            if handle is None:
                # The collector's answer: its JSON, sent as two ASGI messages
                # (what starlette's Response sends, without building one).
                answer = await _accept(self.ctx, scope, receive, _LANES[route], route)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"%d" % len(answer)), _JSON_TYPE]})
                await send({"type": "http.response.body", "body": answer})
                _observe(route, method, 200, started)
                return
            response = await handle(Request(scope, receive))
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.detail, exc.headers)
        except StarletteHTTPException as exc:
            message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
            response = error_response(exc.status_code, message, headers=getattr(exc, "headers", None))
        except Exception:  # never a traceback to the client, never a dead server
            log.exception("http: unexpected error on %s %s", method, route)
            response = error_response(500, "internal error")
        await response(scope, receive, send)
        _observe(route, method, response.status_code, started)


_JSON_TYPE = (b"content-type", b"application/json")
# The labelled children of the request metrics, per (route, method, status):
# `labels()` takes a lock and checks its values on every call. Bounded: the
# lane's routes and methods are fixed, and so are the statuses it answers.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _observe(route: str, method: str, status: int, started: float) -> None:
    children = _CHILDREN.get((route, method, status))
    if children is None:
        children = _CHILDREN[route, method, status] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
    children[0].inc()
    children[1].observe(time.perf_counter() - started)


def plain_routes(router: APIRouter) -> dict[tuple[str, str], Any]:
    """The routes of `router` that `CollectorLane` may call directly: no
    dependencies, no path parameters, and an endpoint that takes the request
    alone (it reads its query and calls its auth itself)."""
    found: dict[tuple[str, str], Any] = {}
    for route in router.routes:
        if not isinstance(route, APIRoute) or route.dependant.dependencies or "{" in route.path:
            continue
        if not inspect.iscoroutinefunction(route.endpoint):
            continue
        parameters = list(inspect.signature(route.endpoint).parameters.values())
        if len(parameters) == 1 and parameters[0].annotation in (Request, "Request"):
            for method in route.methods:
                found[method, route.path] = route.endpoint
    return found


async def _collect(ctx: ServiceContext, request: Request, event_type: str | None, route: str) -> Response:
    answer = await _accept(ctx, request.scope, request.receive, event_type, route)
    return Response(answer, media_type="application/json")


async def _accept(ctx: ServiceContext, scope: Any, receive: Any, event_type: str | None, route: str) -> bytes:
    """The JSON answer to a collector request whose events are on the
    transport, or ApiError."""
    username = await ctx.auth.authenticate(scope)
    body = await _read_body(scope, receive, ctx.http.max_body_bytes)
    if ctx.committer is None:
        retry = {"Retry-After": str(ctx.http.retry_after_seconds)}
        raise ApiError(503, f"the collector has no transport: {ctx.writer_error or 'not configured'}", headers=retry)
    if len(body) > OFFLOAD_BYTES:
        sub = await run_in_threadpool(prepare, ctx, body, username, event_type)
    else:
        sub = prepare(ctx, body, username, event_type)
    await ctx.committer.commit(sub)
    if sub.error is not None:
        raise _send_error(ctx, sub)
    accepted = _ACCEPTED.get(route)
    if accepted is None:
        accepted = _ACCEPTED[route] = EVENTS_ACCEPTED.labels(route)
    accepted.inc(sub.accepted)
    if not sub.duplicates:
        return b'{"message":"Received","accepted":%d}' % sub.accepted
    EVENTS_DUPLICATE.labels(route).inc(len(sub.duplicates))
    answer = {
        "message": "Received" if sub.accepted else "Duplicate",
        "accepted": sub.accepted,
        "duplicates": len(sub.duplicates),
        "duplicate_event_ids": sub.duplicates,
    }
    return orjson.dumps(answer)


_ACCEPTED: dict[str, Any] = {}  # route -> its EVENTS_ACCEPTED child


def _too_large(limit: int) -> ApiError:
    EVENTS_REJECTED.labels("too_large").inc()
    return ApiError(413, f"request body is larger than {limit} bytes")


async def _read_body(scope: Any, receive: Any, limit: int) -> bytes:
    """The whole body, or 413 as soon as more than `limit` bytes arrived
    (`service.bodies.read_capped`, from the ASGI messages themselves)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# -- parse and validate ------------------------------------------------------------------


class Limits:
    """What the checks of one request need, computed once per app."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.max_batch = ctx.http.max_batch
        self.max_record_bytes = ctx.events.max_record_bytes
        self.naive_timezone = ctx.events.naive_timezone
        self.future_us = int(min(ctx.events.future_tolerance, ctx.http.max_clock_skew).total_seconds() * 1_000_000)
        self.future_text = _duration_text(min(ctx.events.future_tolerance, ctx.http.max_clock_skew))
        window = ctx.events.lateness - ctx.http.max_clock_skew - LATE_GUARD
        self.window_us = max(0, int(window.total_seconds() * 1_000_000))
        self.window_text = _duration_text(max(window, timedelta(0)))
        self.lateness_text = _duration_text(ctx.events.lateness)


def _duration_text(span: timedelta) -> str:
    """`8m30s`, `1d2h`, `0s`: the config's own way of writing durations."""
    seconds = int(span.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def acceptance_floor(ctx: ServiceContext) -> Callable[[], int]:
    """The oldest event time the collector sends, as of now (see LATE_GUARD)."""
    window_us = Limits(ctx).window_us
    clock = ctx.clock_us
    return lambda: clock() - window_us


def prepare(ctx: ServiceContext, body: bytes, username: str, event_type: str | None) -> Submission:
    """The request's records, or ApiError (400, 413, 422) with the reasons."""
    limits: Limits = ctx.limits
    now_us = ctx.clock_us()
    received_at = format_utc(now_us)
    fast = _fast_lines(body, username, event_type, now_us, received_at, limits)
    if fast is not None:
        return fast
    return _slow_lines(ctx, body, username, event_type, now_us, received_at, limits)


# Integers past 64 bits become floats in orjson (json keeps them exact), so a
# body with a run of 19 digits takes the reference path. Found by mapping
# every digit to "9" and everything else to a space: one C pass, no regex.
_DIGITS_ONLY = bytes(57 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"9" * 19
# Strict JSON has no raw control characters in strings: the only way to one is
# an escape (or a raw DEL). A body without them needs no per-field check.
_CONTROL_ESCAPE = re.compile(rb"\\(?:[nrtbf]|u00[01][0-9a-fA-F]|u007[fF])").search
_ORJSON_ERRORS = (orjson.JSONDecodeError, orjson.JSONEncodeError, ValueError, TypeError)


def _fast_lines(
    body: bytes, username: str, event_type: str | None, now_us: int, received_at: str, limits: Limits
) -> Submission | None:
    """The records when every event is plainly valid, else None (never an error).

    A record is the event's properties as orjson writes them, followed by
    the stamped fields, written once per request: the same JSON object as the
    reference path's (the keys in another order)."""
    escapes = b"\\" in body
    if escapes and may_hold_bad_text(body):
        return None
    if _LONG_RUN in body.translate(_DIGITS_ONLY):
        return None
    try:
        parsed = orjson.loads(body)
    except _ORJSON_ERRORS:
        return None
    if event_type is None and type(parsed) is list:
        items = parsed
        if not 0 < len(items) <= limits.max_batch:
            return None
    else:
        items = [parsed]
    controls = b"\x7f" in body or (escapes and _CONTROL_ESCAPE(body) is not None)
    check = _CHECKS[event_type]
    lines: list[bytes] = []
    keys: list[str | None] = []
    times: list[int] = []
    low = now_us - limits.window_us
    high = future_limit_us(now_us, limits.future_us)
    naive = limits.naive_timezone
    max_bytes = limits.max_record_bytes
    dumps = orjson.dumps
    user = dumps(username)
    stamped = b"".join((b',"username":', user, b',"received_at":"', received_at.encode(), b'","v":1,"customer_id":', user))
    if event_type is not None:
        stamped += b',"event_type":"' + event_type.encode() + b'"'
    stamped += b',"transaction_id":"'  # the id's opening quote: a new UUID goes in as it is
    now_text = b'","timestamp":"' + received_at.encode() + b'"}'
    new_ids: list[bytes] = []
    keyed = stamped_times = False  # any event_id, any client timestamp
    generic = event_type is None
    good_names = _GOOD_NAMES
    append = lines.append
    for item in items:
        if type(item) is not dict:
            return None
        if generic:  # _check_generic, inlined: this loop is the collector's hot path
            name = item.get("event_type")
            if type(name) is not str or not 0 < len(name) <= 128 or (controls and _has_control(name)):
                return None
            if not item.keys() <= good_names and not _good_names(item.keys()):
                return None
            if len(item) > MAX_PROPERTIES + 1 and len(item) - ("event_id" in item) - ("timestamp" in item) > MAX_PROPERTIES + 1:
                return None
        elif not check(item, controls):
            return None
        event_id = item.pop("event_id", None)
        if event_id is None:
            if not new_ids:
                new_ids = _uuids(len(items) - len(lines))
            transaction = new_ids.pop()
        elif type(event_id) is not str or not 0 < len(event_id) <= 256 or (controls and _has_control(event_id)):
            return None
        else:
            transaction = dumps(event_id)[1:-1]
            if not keyed:
                keyed = True
                keys.extend([None] * len(lines))
        stamp = item.pop("timestamp", None)
        if stamp is None:
            event_us = now_us
            tail = now_text
        else:
            if type(stamp) is str:
                try:
                    event_us = parse_timestamp_us(stamp, naive)
                except (ParseError, ValueError, OverflowError):
                    return None
            elif type(stamp) is int and MIN_EPOCH_MS <= stamp <= MAX_EPOCH_MS:
                event_us = stamp * 1000
            elif type(stamp) is float and stamp.is_integer() and MIN_EPOCH_MS <= stamp <= MAX_EPOCH_MS:
                event_us = int(stamp) * 1000
            else:
                return None
            if not low <= event_us <= high:
                return None
            tail = b'","timestamp":"' + format_utc(event_us).encode() + b'"}'
            if not stamped_times:
                stamped_times = True
                times.extend([now_us] * len(lines))
        try:
            properties = dumps(item)
        except _ORJSON_ERRORS:  # nested past orjson's depth limit, say
            return None
        if len(properties) > 2:
            line = b"".join((properties[:-1], stamped, transaction, tail))
        else:  # no properties: drop the comma that would follow "{"
            line = b"".join((b"{", stamped[1:], transaction, tail))
        if len(line) > max_bytes:
            return None
        append(line)
        if keyed:
            keys.append(event_id)
        if stamped_times:
            times.append(event_us)
    # Without event_ids or client timestamps (the common case), made at once.
    return Submission(username, lines, keys if keyed else [None] * len(lines), times if stamped_times else [now_us] * len(lines))


# Version 4 in the 7th byte, variant 10xx in the 9th, for a whole block at once.
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))


# Randomness for new ids, fetched in blocks per thread. os.urandom lets go of
# the GIL (getrandom is a system call), and the event loop that lets go of it
# once per request waits to get it back from the group-commit thread; a block
# serves about 10 requests of 100 events. Each byte is handed out once, and a
# forked child starts with no block (a copied one would repeat the parent's ids).
_RANDOM_BLOCK = 16 * 1024
_random = threading.local()
_random_generation = [0]
os.register_at_fork(after_in_child=lambda: _random_generation.__setitem__(0, _random_generation[0] + 1))


def _random_bytes(size: int) -> bytes:
    pool = _random
    block = getattr(pool, "block", b"")
    offset = getattr(pool, "offset", 0)
    if offset + size > len(block) or pool.generation != _random_generation[0]:
        if size > _RANDOM_BLOCK // 2:
            return os.urandom(size)
        pool.block, offset, pool.generation = os.urandom(_RANDOM_BLOCK), 0, _random_generation[0]
        block = pool.block
    pool.offset = offset + size
    return block[offset : offset + size]


def _uuids(count: int) -> list[bytes]:
    """`count` new random (version 4) UUIDs as text: no work per UUID, but a
    few strided operations on the whole block."""
    raw = bytearray(_random_bytes(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_10)
    # Hex in groups of four digits: "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg-hhhh-"
    # per UUID (the last dash is the next UUID's, or appended). Three dashes
    # out of each 40 characters (at 34, 29 and 4, the later ones first, each
    # deletion shortening the period by one) leave the 8-4-4-4-12 form and
    # one separator.
    text = bytearray(raw.hex("-", 2), "ascii")
    text.append(0x2D)
    del text[34::40]
    del text[29::39]
    del text[4::38]
    del text[-1]
    text[36::37] = b"\n" * (count - 1)
    return bytes(text).split(b"\n")


# Field names /events keeps as properties that are known to be valid: a set
# lookup per event instead of checks per name. Bounded: names are client data.
_GOOD_NAMES: set[str] = {"event_type", "event_id", "timestamp"}
_GOOD_NAMES_LIMIT = 10_000
_DECLARED = ("event_type", "event_id", "timestamp")


def _good_names(names: Any) -> bool:
    for name in names:
        if name in _GOOD_NAMES:
            continue
        if name in RESERVED or not 0 < len(name) <= 128 or _has_control(name):
            return False
        if len(_GOOD_NAMES) < _GOOD_NAMES_LIMIT:
            _GOOD_NAMES.add(name)
    return True


# The checks of the fast path: True when `item` is plainly valid. They leave
# in `item` exactly the record's properties plus event_id and timestamp
# (popped by the caller). `controls`: the body may hold control characters.


def _check_generic(item: dict[str, Any], controls: bool) -> bool:
    name = item.get("event_type")
    if type(name) is not str or not 0 < len(name) <= 128 or (controls and _has_control(name)):
        return False
    names = item.keys()
    if not names <= _GOOD_NAMES and not _good_names(names):
        return False
    # event_type stays: it is a field of the record, with the same value.
    return len(item) - ("event_id" in item) - ("timestamp" in item) <= MAX_PROPERTIES + 1


_PAGE_VIEW_FIELDS = frozenset({"event_id", "timestamp", "url", "referral_url", "ipaddress", "useragent", "session_id"})
_BUTTON_FIELDS = frozenset({"event_id", "timestamp", "session_id", "button_id"})
_OPTIONAL_PAGE_FIELDS = ("referral_url", "ipaddress", "useragent")


def _ident(value: Any, controls: bool, high: int = 256) -> bool:
    return type(value) is str and 0 < len(value) <= high and not (controls and _has_control(value))


def _check_page_view(item: dict[str, Any], controls: bool) -> bool:
    if not item.keys() <= _PAGE_VIEW_FIELDS:
        return False
    if not _ident(item.get("url"), controls, 4096) or not _ident(item.get("session_id"), controls):
        return False
    for name in _OPTIONAL_PAGE_FIELDS:
        if name in item and item[name] is None:
            del item[name]  # an explicit null is as if not given
    referral = item.get("referral_url")
    if referral is not None and not _ident(referral, controls, 4096):
        return False
    address = item.get("ipaddress")
    if address is not None:
        if type(address) is not str or len(address) > 64:
            return False
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return False
    agent = item.get("useragent")
    return agent is None or (type(agent) is str and len(agent) <= 8192)


def _check_button(item: dict[str, Any], controls: bool) -> bool:
    return (
        item.keys() <= _BUTTON_FIELDS
        and _ident(item.get("session_id"), controls)
        and _ident(item.get("button_id"), controls)
    )


_CHECKS: dict[str | None, Callable[[dict[str, Any], bool], bool]] = {
    None: _check_generic,
    "page_view": _check_page_view,
    "button_click": _check_button,
}


# -- the reference path: every rule, with its reason -------------------------------------


def _slow_lines(
    ctx: ServiceContext, body: bytes, username: str, event_type: str | None, now_us: int, received_at: str, limits: Limits
) -> Submission:
    parsed = parse_json(body)
    many = event_type is None and isinstance(parsed, list)
    items = parsed if many else [parsed]
    if many and not items:
        EVENTS_REJECTED.labels("invalid").inc()
        raise validation_error(422, [reason(["body"], "the batch is empty", "too_short")])
    if len(items) > limits.max_batch:
        EVENTS_REJECTED.labels("batch_too_large").inc()
        raise ApiError(413, f"batch of {len(items)} events is over the limit of {limits.max_batch}")
    check_text = may_hold_bad_text(body)
    model = _MODELS[event_type]
    sub, reasons = _encode_all(ctx, items, many, username, event_type, model, now_us, check_text, received_at)
    if reasons:
        EVENTS_REJECTED.labels("invalid").inc()
        raise validation_error(422, reasons)
    return sub


def _encode_all(
    ctx: ServiceContext,
    items: list[Any],
    many: bool,
    username: str,
    event_type: str | None,
    model: type[_Common],
    now_us: int,
    check_text: bool = True,
    received_at: str | None = None,
) -> tuple[Submission, list[dict[str, Any]]]:
    """The records of every event, or the reasons why some are invalid."""
    sub = Submission(username, [], [], [])
    reasons: list[dict[str, Any]] = []
    received_at = received_at or format_utc(now_us)
    for index, item in enumerate(items):
        loc: list[str | int] = ["body", index] if many else ["body"]
        found = _validate(ctx, item, loc, username, event_type, model, now_us, received_at, check_text)
        if isinstance(found, list):
            reasons.extend(found)
        elif not reasons:
            line, event_id, event_us = found
            sub.lines.append(line)
            sub.keys.append(event_id)
            sub.times.append(event_us)
    return sub, reasons


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
) -> tuple[bytes, str | None, int] | list[dict[str, Any]]:
    """One event's (NDJSON line, event_id, event time), or its reasons."""
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
    event_us = now_us if event_time_us is None else event_time_us
    event = Event(
        customer_id=username,
        event_type=event_type or parsed.event_type,
        transaction_id=parsed.event_id or _new_id(),
        event_time_us=event_us,
        properties={**properties, "username": username, "received_at": received_at},
    )
    line = _encode(event.to_record()).encode("utf-8")
    if len(line) > ctx.events.max_record_bytes:
        return [reason(loc, f"the event is {len(line)} bytes as a record; the limit is {ctx.events.max_record_bytes}", "too_long")]
    return line, parsed.event_id, event_us


def _new_id() -> str:
    """A random (version 4) UUID (see `_random_bytes`: a transaction id seen
    twice would be dropped as a duplicate event)."""
    return _uuids(1)[0].decode()


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
            event_us = parse_timestamp_us(value, ctx.events.naive_timezone)
        except ParseError as exc:
            reasons.append(reason(loc, str(exc), exc.reason.value.replace(" ", "_")))
            return None
    elif (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer()):
        # JSON has one number type: 1614557405657.0 is the integer the schema allows.
        try:
            event_us = epoch_ms_to_us(value)
        except ParseError as exc:
            reasons.append(reason(loc, str(exc), exc.reason.value.replace(" ", "_")))
            return None
    else:
        reasons.append(reason(loc, f"expected an ISO 8601 string or epoch milliseconds, got {_json_type(value)}", "bad_timestamp"))
        return None
    limits: Limits = ctx.limits
    if event_us > future_limit_us(now_us, limits.future_us):
        # The daemon would dead-letter it as `future`, or it would make every
        # other user's events late: say so while the client listens.
        reasons.append(reason(loc, f"timestamp is more than {limits.future_text} in the future of the collector's clock", "future"))
        return None
    if event_us < now_us - limits.window_us:
        reasons.append(
            reason(
                loc,
                f"timestamp is more than {limits.window_text} behind the collector's clock: the daemon would drop it"
                f" as late (lateness {limits.lateness_text}); send older events with `produce --input`",
                "late",
            )
        )
        return None
    return event_us


def _json_type(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- the transport's answer ---------------------------------------------------------------


def _send_error(ctx: ServiceContext, sub: Submission) -> ApiError:
    """The answer to a request whose events did not all reach the transport."""
    exc = sub.error
    retry = {"Retry-After": str(ctx.http.retry_after_seconds)}
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LateError):
        EVENTS_REJECTED.labels("late").inc()
        loc: list[str | int] = ["body"] if exc.index is None else ["body", exc.index]
        return validation_error(422, [reason([*loc, "timestamp"], str(exc), "late")])
    if isinstance(exc, TransportFull):
        TRANSPORT_FULL.inc()
        EVENTS_REJECTED.labels("transport_full").inc()
        return ApiError(503, f"transport full, retry later: {exc}", headers=retry)
    if isinstance(exc, PartialSend):
        EVENTS_REJECTED.labels("transport_partial").inc()
        return ApiError(
            503,
            f"the transport accepted {exc.accepted} of {exc.total} events; resend with event_id set so the resent ones count once",
            headers=retry,
        )
    if isinstance(exc, LedgerError):
        EVENTS_REJECTED.labels("ledger_error").inc()
        return ApiError(503, f"{exc}, retry later", headers=retry)
    # A transport outage must be a 503, never a crash.
    log.warning("http: transport send failed: %s", exc, exc_info=exc)
    EVENTS_REJECTED.labels("transport_error").inc()
    return ApiError(503, f"transport unavailable, retry later: {type(exc).__name__}", headers=retry)
