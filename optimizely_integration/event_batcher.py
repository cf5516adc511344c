"""Merge checked visitor entries into Event API request bodies (pure: no
I/O, no threads; the clock is injected).

Visitors of one `BodyGroup` (same endpoint and header, see
`payload_splitter`) share an open body until it is sealed: at `max_visitors`
visitors, at `max_bytes` bytes, or `flush_interval` seconds after it opened.

Usage::

    batcher = EventBatcher(max_visitors=1000, max_bytes=3_000_000, flush_interval=10.0)
    split = split_payload(payload, endpoint, Origin("spool", 42))
    for visitor in split.visitors:
        for body in batcher.add(split.group, visitor):
            post(body.endpoint, body.body())
    for body in batcher.due():     # call periodically: interval flushes
        ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from optimizely_integration.payload_splitter import BodyGroup, Origin, PreparedVisitor

DEFAULT_MAX_VISITORS = 1000
DEFAULT_MAX_BYTES = 3_000_000
DEFAULT_FLUSH_INTERVAL = 10.0
_SUFFIX = b"]}"


@dataclass(slots=True)
class RequestBody:
    """A sealed request: `body()` is the JSON to POST."""

    group: BodyGroup
    visitors: list[bytes] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    events: int = 0
    size: int = 0
    opened_at: float = 0.0

    @property
    def endpoint(self) -> str:
        return self.group.endpoint

    def body(self) -> bytes:
        return self.group.prefix + b",".join(self.visitors) + _SUFFIX

    def visitor_payload(self, i: int) -> bytes:
        """Visitor `i` alone as a complete payload (for dead letters)."""
        return self.group.prefix + self.visitors[i] + _SUFFIX


class OversizeVisitor(ValueError):
    """One visitor entry is larger than a whole request body may be."""


class EventBatcher:
    """Open request bodies per `BodyGroup`, sealed on visitor count, body
    size or age. Not thread-safe: the caller serialises access."""

    def __init__(
        self,
        max_visitors: int = DEFAULT_MAX_VISITORS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_visitors < 1 or max_bytes < 64 or flush_interval <= 0:
            raise ValueError("max_visitors >= 1, max_bytes >= 64 and flush_interval > 0 are required")
        self.max_visitors = max_visitors
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.clock = clock
        self._open: dict[tuple[str, str], RequestBody] = {}

    def add(self, group: BodyGroup, visitor: PreparedVisitor) -> list[RequestBody]:
        """Add one visitor; returns the bodies this sealed (0, 1 or 2)."""
        alone = len(group.prefix) + len(visitor.data) + len(_SUFFIX)
        if alone > self.max_bytes:
            raise OversizeVisitor(f"visitor entry makes a {alone}-byte body, the limit is {self.max_bytes}")
        sealed: list[RequestBody] = []
        body = self._open.get(group.key)
        if body is not None and body.size + 1 + len(visitor.data) > self.max_bytes:
            sealed.append(self._open.pop(group.key))
            body = None
        if body is None:
            body = self._open[group.key] = RequestBody(group, size=len(group.prefix) + len(_SUFFIX), opened_at=self.clock())
        body.size += len(visitor.data) + (1 if body.visitors else 0)
        body.visitors.append(visitor.data)
        body.origins.append(visitor.origin)
        body.events += visitor.events
        if len(body.visitors) >= self.max_visitors:
            sealed.append(self._open.pop(group.key))
        return sealed

    def due(self) -> list[RequestBody]:
        """Seal and return bodies open for `flush_interval` or longer."""
        now = self.clock()
        keys = [k for k, b in self._open.items() if now - b.opened_at >= self.flush_interval]
        return [self._open.pop(k) for k in keys]

    def drain(self) -> list[RequestBody]:
        """Seal and return every open body."""
        bodies = list(self._open.values())
        self._open.clear()
        return bodies

    def next_due(self) -> float | None:
        """Clock time at which the oldest open body becomes due, if any."""
        return min((b.opened_at + self.flush_interval for b in self._open.values()), default=None)

    @property
    def open_visitors(self) -> int:
        return sum(len(b.visitors) for b in self._open.values())
