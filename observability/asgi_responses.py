"""Observe an ASGI call's response: its status and how long it took.

The access log and the request metrics both need them, including for a
request whose handler raised (status 500 unless a response had started).
"""

from __future__ import annotations

import time
from typing import Any, Callable


async def observe_response(app: Any, scope: Any, receive: Any, send: Any,
                           done: Callable[[int, float], None]) -> None:
    """Call `app`, then `done(status, seconds)`, also when `app` raises."""
    started = time.perf_counter()
    status = 500

    async def capture(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, capture)
    finally:
        done(status, time.perf_counter() - started)
