"""The HTTP service's access log: one INFO line per request on the
`rivulet.access` logger, never a credential.

    GET /buckets?customer_id=c1&start=...&end=... 200 3.1 ms client=127.0.0.1 user=alice

Logged: method, path and query (the log handler's redaction filter masks
anything that looks like a secret, `token=...` say), status, duration, client
address, and the Basic-auth user name the request presented when it was
answered below 400 (never the password, nor the name on a refused request: it
may be a mistyped password). No header is logged. With `--log-format json`
the fields are also JSON fields.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from observability.asgi_responses import observe_response

log = logging.getLogger("rivulet.access")

MAX_TARGET = 300


def _user(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            user = decoded.partition(":")[0]
            return user[:64] if user.isprintable() else None
    return None


class AccessLog:
    """ASGI middleware: `app.add_middleware(AccessLog)`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        await observe_response(self.app, scope, receive, send, lambda status, seconds: _log(scope, status, seconds))


def _log(scope: Any, status: int, seconds: float) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope.get("path", "") + (f"?{query}" if query else "")
    if len(target) > MAX_TARGET:
        target = target[:MAX_TARGET] + "..."
    target = "".join(c if c.isprintable() else "?" for c in target)
    client = scope.get("client")
    address = client[0] if client else "-"
    user = _user(scope.get("headers", [])) if status < 400 else None
    millis = seconds * 1000
    log.info("%s %s %d %.1f ms client=%s%s", scope.get("method", "-"), target, status, millis, address,
             f" user={user}" if user else "",
             extra={"fields": {"method": scope.get("method"), "path": scope.get("path"), "status": status,
                               "ms": round(millis, 1), "client": address, "user": user}})
