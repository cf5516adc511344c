"""UTC instants as integer epoch microseconds: their range, units, conversion
to `datetime`, and the texts they are written as.

Every instant the daemon handles is an `int` of microseconds since
1970-01-01T00:00:00Z, from `MIN_US` (year 1) to `MAX_US` (year 9999): the
range every date type and file format here can hold. This is the one epoch;
parsing texts into instants is `streams/timestamps.py`'s job.

>>> format_utc(datetime_to_us(us_to_datetime(1_614_571_200_000_000)))
'2021-03-01T04:00:00.000000Z'
>>> date_and_hour(1_614_571_200_000_000)
('2021-03-01', 4)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
US_PER_SECOND = 1_000_000
MINUTE_US = 60 * US_PER_SECOND
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
MIN_US = -62_135_596_800_000_000
"""0001-01-01T00:00:00Z: the first instant an event may have."""
MAX_US = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999Z: the last one."""


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime) -> int:
    # Integer arithmetic: float timestamps lose microseconds far from 1970.
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


@lru_cache(maxsize=8192)
def _second_text(second: int) -> str:
    # Not strftime: its %Y writes the year 999 as `999`, which no ISO reader takes.
    t = us_to_datetime(second * US_PER_SECOND)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"


def format_utc(us: int) -> str:
    """`2021-03-01T04:00:00.000000Z`: the seed API's bucket format.

    Formatting is on the hot path of every written event; events arrive roughly
    in time order, so the second's text is cached.
    """
    second, micro = divmod(us, US_PER_SECOND)
    return f"{_second_text(second)}.{micro:06d}Z"


def format_utc_seconds(us: int) -> str:
    """`2021-03-01T04:00:00Z`: the export format."""
    return _second_text(us // US_PER_SECOND) + "Z"


def date_and_hour(us: int) -> tuple[str, int]:
    """The UTC date (`2021-03-01`, the year in four digits) and hour of day
    of an instant: the `dt=`/`hour=` parts of hour-partitioned object keys."""
    t = us_to_datetime(us)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}", t.hour
