"""Source positions taken by the Optimizely sink and not yet acknowledged.

A position can carry several visitors (a payload splits into visitors, which
may travel in different request bodies), so each position keeps a count and is
acknowledged when its last visitor is. `floor(partition)` is what a caller may
checkpoint up to: the lowest position still pending.

Usage::

    pending = PendingPositions()
    pending.take(Origin("spool:/data", 17))
    pending.floor("spool:/data")        # 17
    pending.ack([Origin("spool:/data", 17)])
    pending.wait_until_empty(deadline=None)   # True once nothing is pending
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

from optimizely_integration.payload_splitter import Origin


class PendingPositions:
    """Thread-safe: senders acknowledge while the writer takes."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._counts: dict[str, dict[int, int]] = {}

    def take(self, origin: Origin) -> None:
        with self._changed:
            positions = self._counts.setdefault(origin.partition, {})
            positions[origin.position] = positions.get(origin.position, 0) + 1

    def ack(self, origins: Sequence[Origin]) -> None:
        with self._changed:
            for origin in origins:
                positions = self._counts[origin.partition]
                left = positions[origin.position] - 1
                if left:
                    positions[origin.position] = left
                else:
                    del positions[origin.position]
            self._changed.notify_all()

    def floor(self, partition: str) -> int | None:
        """The lowest pending position of `partition`, None when none is."""
        with self._changed:
            positions = self._counts.get(partition)
            return min(positions) if positions else None

    @property
    def visitors(self) -> int:
        """Visitors taken but not yet acknowledged."""
        with self._changed:
            return sum(sum(p.values()) for p in self._counts.values())

    def wait_until_empty(self, deadline: float | None) -> bool:
        """Wait until every position is acknowledged; False at `deadline`
        (a `time.monotonic()` instant) if some still are not."""
        with self._changed:
            while any(self._counts.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.1 if left is None else min(left, 0.1))
        return True
