"""The collector's fast path (orjson and a plain loop) against its reference
path (json and the pydantic models): whatever the fast path accepts, the
reference path accepts too, with the same records. Everything else is left
to the reference path, which words the 4xx."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.collector import Limits, _fast_lines, _slow_lines, prepare
from service.context import ServiceContext
from service.errors import ApiError
from config.http_settings import service_settings
from streams.utc import format_utc
from tests.test_http_support import make_settings

NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> ServiceContext:
    settings = make_settings(tmp_path_factory.mktemp("fast"), max_batch=50)
    parsed = service_settings(settings)
    context = ServiceContext(parsed.http, parsed.events, parsed.queries, None, None, None, lambda: NOW_US)  # type: ignore[arg-type]
    context.limits = Limits(context)
    return context


texts = st.one_of(
    st.sampled_from(["", "a", "é", "🎉", "x" * 300, "a\nb", "tab\t", "\x7f", "\u2028", "null", "../x", "\\", '"q"']),
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x80), max_size=5),
)
# What a client normally sends: printable, no control characters.
plain = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"), min_size=1, max_size=20)
names = st.one_of(
    st.sampled_from(["event_type", "event_id", "timestamp", "url", "session_id", "button_id", "referral_url", "ipaddress",
                     "useragent", "v", "username", "customer_id", "received_at", "transaction_id", "plan", "n", ""]),
    texts,
)
good_names = st.one_of(st.sampled_from(["plan", "n", "page", "tags", "nested", "ü"]), plain).filter(
    lambda n: n not in ("event_type", "event_id", "timestamp", "v", "username", "customer_id", "received_at", "transaction_id"))
good_stamps = st.one_of(
    st.integers(min_value=NOW_US // 1000 - 8 * 60_000, max_value=NOW_US // 1000 + 60_000),
    st.sampled_from(["2026-01-01T00:00:00Z", "2025-12-31T23:55:00.5+00:00", "2026-01-01 01:00:30+01", "2026-01-01T00:00:30.123456789-00:00",
                     "2025-12-31T23:52:00.000001Z", "2026-01-01T05:30:00+05:30"]),
)
stamps = st.one_of(
    st.none(),
    good_stamps,
    st.integers(),
    st.sampled_from(["2025-12-31T23:00:00Z", "2026-01-01T00:00:00", "yesterday", "2026-02-30T00:00:00Z", "0001-01-01T00:00:00+14:00"]),
    st.floats(allow_nan=False),
    st.booleans(),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False), texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=6)


@st.composite
def valid_event(draw: st.DrawFn, route: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {}
    if route is None:
        event["event_type"] = draw(plain)
        for _ in range(draw(st.integers(0, 3))):
            event[draw(good_names)] = draw(values)
    elif route == "page_view":
        event["url"] = draw(plain)
        event["session_id"] = draw(plain)
        for name in ("referral_url", "useragent"):
            if draw(st.booleans()):
                event[name] = draw(st.one_of(st.none(), plain))
        if draw(st.booleans()):
            event["ipaddress"] = draw(st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", None, "2001:db8::8a2e:370:7334"]))
    else:
        event["session_id"] = draw(plain)
        event["button_id"] = draw(plain)
    if draw(st.booleans()):
        event["event_id"] = draw(st.one_of(st.none(), plain))
    if draw(st.booleans()):
        event["timestamp"] = draw(good_stamps)
    return event


@st.composite
def events(draw: st.DrawFn, route: str | None) -> Any:
    event = draw(valid_event(route))
    if draw(st.integers(0, 3)):
        return event  # three in four are valid
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(values)  # not an object at all
    if kind == 1 and event:
        event.pop(next(iter(event)))  # a required field missing
    elif kind == 2:
        event["timestamp"] = draw(stamps)
    elif kind == 3:
        event["event_id"] = draw(st.one_of(texts, st.integers()))
    elif kind == 4:
        event[draw(names)] = draw(values)
    else:
        name = draw(st.sampled_from(sorted(event) or ["x"]))
        event[name] = draw(st.one_of(texts, values))
    return event


def body_of(draw: st.DrawFn, route: str | None) -> bytes:
    if route is None and draw(st.booleans()):
        value: Any = draw(st.lists(events(route), min_size=0, max_size=6))
    else:
        value = draw(events(route))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str | None, bytes]:
    route = draw(st.sampled_from([None, "page_view", "button_click"]))
    return route, body_of(draw, route)


def compare(fast: Any, slow: Any) -> None:
    assert len(fast.lines) == len(slow.lines)
    for line, other, key in zip(fast.lines, slow.lines, fast.keys):
        a, b = json.loads(line), json.loads(other)
        if key is None:  # a new UUID on each path
            assert uuid.UUID(a.pop("transaction_id")).version == 4 and uuid.UUID(b.pop("transaction_id")).version == 4
        assert a == b


def reference(ctx: ServiceContext, route: str | None, body: bytes) -> Any:
    try:
        sub = _slow_lines(ctx, body, "ethan", route, NOW_US, format_utc(NOW_US), ctx.limits)
    except ApiError as exc:
        return exc
    return sub


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(requests())
def test_the_fast_path_agrees_with_the_reference(ctx: ServiceContext, request: tuple[str | None, bytes]) -> None:
    route, body = request
    fast = _fast_lines(body, "ethan", route, NOW_US, format_utc(NOW_US), ctx.limits)
    slow = reference(ctx, route, body)
    if fast is None:
        return  # the reference path decides, and words any 4xx
    assert not isinstance(slow, ApiError), (body, slow.status, slow.detail)
    compare(fast, slow)
    assert fast.keys == slow.keys and fast.times == slow.times


def test_the_fast_path_takes_the_common_requests(ctx: ServiceContext) -> None:
    """What clients usually send does not fall back (that would be slow)."""
    now = format_utc(NOW_US)
    common = [
        (None, [{"event_type": "view", "url": "https://e.com/ü", "n": 1.5, "tags": ["a"], "event_id": "e1"}] * 3),
        (None, {"event_type": "signup", "timestamp": now, "plan": None}),
        ("page_view", {"url": "http://something.com", "referral_url": "/", "ipaddress": "10.0.0.1", "useragent": "curl\t1", "session_id": "s"}),
        ("button_click", {"button_id": "ABC", "session_id": "XYZ", "timestamp": NOW_US // 1000 - 60_000}),
    ]
    for route, value in common:
        body = json.dumps(value).encode()
        fast = _fast_lines(body, "ethan", route, NOW_US, now, ctx.limits)
        assert fast is not None, value
        assert prepare(ctx, body, "ethan", route).lines  # the public entry point
        compare(fast, reference(ctx, route, body))


def test_rare_bodies_fall_back_and_keep_their_answers(ctx: ServiceContext) -> None:
    cases = {
        b'{"event_type": "x", "big": 123456789012345678901234567890}': None,  # exact in the reference path
        b'{"event_type": "x", "s": "\\u0000"}': 422,
        b'{"event_type": "a\\nb"}': 422,
        b'[]': 422,
        b'{"event_type": "x", "n": 1e999}': 400,
        b'\xef\xbb\xbf{"event_type": "x"}': 400,
    }
    for body, status in cases.items():
        assert _fast_lines(body, "ethan", None, NOW_US, format_utc(NOW_US), ctx.limits) is None, body
        outcome = reference(ctx, None, body)
        if status is None:
            assert json.loads(outcome.lines[0])["big"] == 123456789012345678901234567890
        else:
            assert isinstance(outcome, ApiError) and outcome.status == status, body
