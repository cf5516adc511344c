"""The dedup keys of one partition, kept as long as a duplicate could still be
counted, and looked up a whole batch at a time.

A key only matters until the watermark passes the end of its minute: after
that an event with it is late, and late events are dropped before
deduplication. So keys live in two generations. New keys go to `current`;
when the watermark passes the minute of the newest key in `previous`, that
whole generation is dropped and `current` takes its place. Dropping a dict is
far cheaper than deleting its keys one by one, and state stays bounded: two
generations, each about the lateness plus a minute of event time.
"""

from __future__ import annotations

from operator import is_, not_
from typing import Sequence

from streams.windowing import WATERMARK_MIN

MINUTE_US = 60_000_000

DedupKey = tuple[str, str, str, int]


class DedupKeys:
    __slots__ = ("current", "previous", "previous_newest_us", "current_newest_us")

    def __init__(self) -> None:
        # key -> the key object of the first event that had it
        self.current: dict[DedupKey, DedupKey] = {}
        self.previous: dict[DedupKey, DedupKey] = {}
        self.previous_newest_us = WATERMARK_MIN
        self.current_newest_us = WATERMARK_MIN

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def first_seen(self, keys: Sequence[DedupKey], times_us: Sequence[int]) -> list[bool] | None:
        """Which of `keys` (in order) are seen for the first time, with the
        earlier keys of the same batch counting as seen; None when all are.
        Every key is remembered from now on."""
        # setdefault hands back the key object of the first event with the
        # key: any other object than the event's own is a duplicate.
        is_first = list(map(is_, map(self.current.setdefault, keys, keys), keys))
        if False not in is_first:
            is_first = None
        if self.previous and min(times_us) <= self.previous_newest_us:
            in_previous = list(map(self.previous.__contains__, keys))
            if True in in_previous:
                is_first = list(map(bool.__and__, is_first or [True] * len(keys), map(not_, in_previous)))
        self.current_newest_us = max(self.current_newest_us, max(times_us))
        return is_first

    def forget(self, watermark_us: int) -> None:
        """Drop what can no longer match an event that is not late."""
        if watermark_us >= _end_of_minute(self.previous_newest_us):
            self.previous, self.current = self.current, {}
            self.previous_newest_us, self.current_newest_us = self.current_newest_us, WATERMARK_MIN


def _end_of_minute(time_us: int) -> int:
    return time_us - time_us % MINUTE_US + MINUTE_US
