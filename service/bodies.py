"""Request bodies: read with a cap, parse strict JSON, find unstorable text.

The cap is enforced on the bytes actually received, not on `Content-Length`,
which a chunked request does not send and a client may get wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator

from fastapi import Request

from service.errors import ApiError, reason
from service.metrics import EVENTS_REJECTED


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as more than `limit` bytes arrived."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    EVENTS_REJECTED.labels("too_large").inc()
    return ApiError(413, f"request body is larger than {limit} bytes")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which JSON cannot carry on
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN/Infinity, finite numbers); 400 with a reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if not text.strip():
        raise ApiError(400, "body is empty: expected JSON")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, huge ints, our own checks
        raise ApiError(400, f"malformed JSON: {str(exc)[:200]}") from None


# Strict JSON cannot carry a raw NUL or a lone surrogate in a string: only the
# escapes \u0000 and \uD800-\uDFFF can produce them. A body without such an
# escape needs no walk over its values (the common case, and the fast path).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def may_hold_bad_text(body: bytes) -> bool:
    return _SUSPECT_ESCAPE.search(body) is not None


def bad_text(value: Any, loc: list[str | int]) -> Iterator[dict[str, Any]]:
    """Reasons for strings (keys and values, at any depth) that cannot be stored:
    NUL characters and lone surrogates (`"\\ud800"` is valid JSON but not
    encodable as UTF-8, so it would break every sink downstream)."""
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                yield reason(where, problem, "string_invalid")
        elif isinstance(item, dict):
            for key, inner in item.items():
                problem = _text_problem(key)
                if problem:
                    key = _printable(key)  # the reason itself must be valid JSON
                    yield reason([*where, key], f"field name: {problem}", "string_invalid")
                stack.append((inner, [*where, key]))
        elif isinstance(item, list):
            stack.extend((inner, [*where, i]) for i, inner in enumerate(item))


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:100]
