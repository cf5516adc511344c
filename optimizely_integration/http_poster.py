"""POST request bodies over keep-alive HTTP(S) connections, and read what a
server answered (status, body, `Retry-After`).

One `HttpPoster` per thread: it keeps one connection per scheme/host/port and
drops a connection after any error, so the next attempt reconnects.

Usage::

    poster = HttpPoster(timeout=10.0, headers={"Content-Type": "application/json"})
    response = poster.post("https://logx.optimizely.com/v1/events", body)
    response.status, response.retry_after   # 204, None
    poster.close()
"""

from __future__ import annotations

import email.utils
import http.client
import ssl
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    retry_after: float | None


class UnsupportedEndpoint(ValueError):
    """The endpoint URL is not http(s): retrying cannot help."""


class HttpPoster:
    """POSTs over keep-alive connections (one per scheme/host/port). One per thread."""

    def __init__(self, timeout: float, headers: Mapping[str, str]) -> None:
        self.timeout = timeout
        self.headers = dict(headers)
        self._connections: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}
        self._ssl = ssl.create_default_context()

    def _connection(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conn = self._connections.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
            elif scheme == "http":
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            else:
                raise UnsupportedEndpoint(f"unsupported endpoint scheme {scheme!r}")
            self._connections[key] = conn
        return conn

    def post(self, url: str, body: bytes) -> HttpResponse:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port)
        conn = self._connection(*key)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", path, body=body, headers={**self.headers, "Content-Length": str(len(body))})
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            # A half-used connection is useless: the next attempt reconnects.
            conn.close()
            self._connections.pop(key, None)
            raise
        if response.will_close:
            conn.close()
            self._connections.pop(key, None)
        return HttpResponse(response.status, data, parse_retry_after(response.getheader("Retry-After")))

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP
    date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
