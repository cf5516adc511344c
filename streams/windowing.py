"""Window shape and time policy, kept apart (as in bytewax's windowing).

`TumblingWindower` says which window an instant falls in. `EventClock` says how
far a partition's event time has progressed: its watermark. Both work on UTC
epoch microseconds, so window arithmetic is integer arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import polars as pl

from streams.utc import HOUR_US, MIN_US

WATERMARK_MIN = -(1 << 62)
WATERMARK_MAX = 1 << 62

Column = TypeVar("Column", "pl.Expr", "pl.Series")


@dataclass(frozen=True, slots=True)
class TumblingWindower:
    """Fixed windows of `size_us`, aligned to the Unix epoch (so minute windows
    start at `:00` seconds and hour windows at `:00:00`).

    A size that does not divide the time back to 0001-01-01 (`7d`: weeks
    from 1970-01-01, a Thursday) would start year 1's first window in year 0,
    which no date type holds: that window starts at 0001-01-01T00:00:00Z
    instead, and is shorter. Every other window is unchanged.

    >>> TumblingWindower(60_000_000).start_of(61_500_000)
    60000000
    >>> import polars as pl
    >>> TumblingWindower(60_000_000).starts(pl.Series([61_500_000, 59_000_000])).to_list()
    [60000000, 0]
    >>> TumblingWindower(7 * 86_400_000_000).start_of(MIN_US) == MIN_US
    True
    """

    size_us: int

    def __post_init__(self) -> None:
        if self.size_us <= 0:
            raise ValueError("window size must be positive")

    def start_of(self, event_time_us: int) -> int:
        return max(event_time_us - event_time_us % self.size_us, MIN_US)

    def end_of(self, window_start_us: int) -> int:
        return window_start_us + self.size_us

    def starts(self, event_times_us: Column) -> Column:
        """`start_of` over a whole column (a polars expression or Series of
        event times), in one native kernel."""
        return ((event_times_us // self.size_us) * self.size_us).clip(lower_bound=MIN_US)

    def numbers(self, event_times_us: Column) -> Column:
        """The windows' numbers since the epoch over a whole column: hours
        since the epoch for `HOURLY`, which objects are partitioned by."""
        return event_times_us // self.size_us

    def start_of_number(self, number: int) -> int:
        """The start of the window numbered `number` since the epoch."""
        return max(number * self.size_us, MIN_US)

    def first_open_number(self, watermark_us: int) -> int:
        """The number of the first window the watermark has not passed: every
        window numbered below it has ended at or before the watermark, so no
        event of it can be counted any more (it would be late)."""
        return watermark_us // self.size_us


HOURLY = TumblingWindower(HOUR_US)
"""UTC hours: the partitions of objects (`dt=…/hour=…`) and of bucket queries."""


@dataclass(frozen=True, slots=True)
class EventClock:
    """Watermark policy: newest event time seen so far minus `lateness_us`.

    On an unbounded source, an idle poll (empty and caught up) advances the
    watermark by the wall time that passed, so windows close on a quiet stream.
    A finite file never idles; its end flushes everything instead.
    """

    lateness_us: int

    def build(self, resume_watermark_us: int | None = None) -> "EventClockLogic":
        return EventClockLogic(self.lateness_us, WATERMARK_MIN if resume_watermark_us is None else resume_watermark_us)


class EventClockLogic:
    """The watermark of one partition. It never moves backwards."""

    __slots__ = ("lateness_us", "watermark_us")

    def __init__(self, lateness_us: int, watermark_us: int) -> None:
        self.lateness_us = lateness_us
        self.watermark_us = watermark_us

    def on_event(self, event_time_us: int) -> None:
        candidate = event_time_us - self.lateness_us
        if candidate > self.watermark_us:
            self.watermark_us = candidate

    def on_idle(self, elapsed_seconds: float) -> None:
        if self.watermark_us > WATERMARK_MIN and elapsed_seconds > 0:
            self.watermark_us += int(elapsed_seconds * 1_000_000)

    def on_eof(self) -> None:
        self.watermark_us = WATERMARK_MAX

    def advance_to(self, watermark_us: int) -> None:
        if watermark_us > self.watermark_us:
            self.watermark_us = watermark_us
