"""Window counts as columns: what the counter emits and the count sinks take.

A sparse stream closes about as many windows as it reads events (10k
customers over 30 days: 563k hourly windows per 1M events), so a window must
never cost a Python object on the way out. The counter hands each rollup's
closed (or provisional) windows over as one Arrow-format frame, and every sink
writes it with column operations: a Parquet object, one SQLite statement, a
bulk request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import polars as pl

from streams.events import WindowCount

WINDOW_START = "window_start_us"
COUNT = "count"
FINAL = "final"
# Column names of a frame that a key field may not take.
RESERVED_COLUMNS = frozenset({WINDOW_START, "window_start", COUNT, FINAL, "partition", "dt", "hour"})


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Counts of one rollup's windows in one source partition.

    `frame` has one row per (window, key), sorted by window start:
    - `window_start_us`: Int64, UTC epoch microseconds;
    - one String column per key field, named after it, in `key_fields` order;
    - `count`: Int64;
    - `final`: Boolean (False for provisional counts of a window still open).
    """

    rollup: str
    key_fields: tuple[str, ...]
    window_size_us: int
    partition: str
    frame: pl.DataFrame

    def __len__(self) -> int:
        return self.frame.height

    @property
    def final_count(self) -> int:
        """How many of the rows are final."""
        return int(self.frame[FINAL].sum()) if self.frame.height else 0

    def rows(self) -> Iterator[WindowCount]:
        """One `WindowCount` per row: for adapters that send one request per
        window anyway, and for tests. Not for the hot path."""
        columns = [self.frame[name].to_list() for name in self.key_fields]
        keys = zip(*columns) if columns else iter(())
        for start, key, count, final in zip(self.frame[WINDOW_START].to_list(), keys, self.frame[COUNT].to_list(),
                                            self.frame[FINAL].to_list()):
            yield WindowCount(self.rollup, tuple(key), start, self.partition, count, final)

    @classmethod
    def from_rows(cls, rollup: str, key_fields: tuple[str, ...], window_size_us: int, partition: str,
                  rows: list[WindowCount]) -> "WindowCounts":
        """The frame of `rows` (all of `rollup` and `partition`), sorted."""
        data: dict[str, list] = {WINDOW_START: [r.window_start_us for r in rows]}
        for index, name in enumerate(key_fields):
            data[name] = [r.key[index] for r in rows]
        data[COUNT] = [r.count for r in rows]
        data[FINAL] = [r.final for r in rows]
        frame = pl.DataFrame(data, schema=frame_schema(key_fields))
        return cls(rollup, key_fields, window_size_us, partition, frame.sort([WINDOW_START, *key_fields]))


def frame_schema(key_fields: tuple[str, ...]) -> dict[str, pl.DataType]:
    return {WINDOW_START: pl.Int64(), **{name: pl.String() for name in key_fields}, COUNT: pl.Int64(),
            FINAL: pl.Boolean()}
