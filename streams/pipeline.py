"""Pipeline assembly: source batches -> parse -> count windows.

Pure composition of the operators in this package; the caller brings the
source observable and subscribes the sinks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Callable, Sequence

import reactivex

from streams.count_windows import count_windows
from streams.formats import RecordParser
from streams.parse_records import parse_records
from streams.rollups import RollupSpec
from streams.window_counter import WindowCounter
from streams.windowing import EventClock


def make_counter(
    rollups: Sequence[RollupSpec],
    lateness: timedelta,
    wall_clock_us: Callable[[], int],
    future_tolerance: timedelta = timedelta(days=1),
    provisional_interval: timedelta = timedelta(0),
) -> WindowCounter:
    return WindowCounter(
        rollups=tuple(rollups),
        clock=EventClock(int(lateness.total_seconds() * 1_000_000)),
        wall_clock_us=wall_clock_us,
        future_tolerance_us=int(future_tolerance.total_seconds() * 1_000_000),
        provisional_interval_us=int(provisional_interval.total_seconds() * 1_000_000),
    )


def build_pipeline(source: reactivex.Observable, parser: RecordParser, counter: WindowCounter) -> reactivex.Observable:
    """`RecordBatch`es in, `CountedBatch`es out.

    >>> build_pipeline(FileSource("e.csv").batches(), EventsCsvParser(), counter).subscribe(fan_out.on_next)
    """
    return source.pipe(parse_records(parser), count_windows(counter))
