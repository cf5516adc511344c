"""The dedup keys of one partition, kept as long as a duplicate could still be
counted, and looked up a whole batch at a time.

A key is (customer_id, event_type, transaction_id, UTC time). Each row's key
is hashed to 64 bits by a native kernel; a Python dict maps hash -> row id,
built and probed by C loops (`dict.update(zip(...))`, `map(dict.get, ...)`),
and probed only for rows within the time span of the stored keys. A hash hit is only a candidate: the stored
row's key is compared with the new one, so a hash collision never drops an
event. Keys whose hash collided with a different key are kept exactly, as
tuples, on the side.

A key only matters until the watermark passes the end of its minute: after
that an event with it is late, and late events are dropped before
deduplication. So keys live in two generations. New keys go to `current`;
when the watermark passes the minute of the newest key in `previous`, that
whole generation is dropped and `current` takes its place. Dropping a dict is
far cheaper than deleting its keys one by one, and state stays bounded: two
generations, each about the lateness plus a minute of event time.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable

import polars as pl

from streams.event_columns import TIME, compact_strings, filter_rows, run_plan
from streams.utc import MINUTE_US
from streams.windowing import WATERMARK_MAX, WATERMARK_MIN, TumblingWindower

_MINUTES = TumblingWindower(MINUTE_US)


class _Generation:
    """Keys of one generation: hash -> row id, and the rows themselves."""

    __slots__ = ("by_hash", "frames", "offsets", "rows", "collided", "oldest_us", "newest_us")

    def __init__(self) -> None:
        self.by_hash: dict[int, int] = {}
        self.frames: list[pl.DataFrame] = []
        self.offsets: list[int] = []  # row id of each frame's first row
        self.rows = 0
        self.collided: set[tuple] = set()  # keys whose hash another key holds
        self.oldest_us = WATERMARK_MAX
        self.newest_us = WATERMARK_MIN

    def key_of(self, row_id: int) -> tuple:
        index = bisect_right(self.offsets, row_id) - 1
        return self.frames[index].row(row_id - self.offsets[index])

    def add(self, keys: pl.DataFrame, hashes: list[int]) -> None:
        times = keys[TIME]
        self.oldest_us = min(self.oldest_us, times.min())
        self.newest_us = max(self.newest_us, times.max())
        self.offsets.append(self.rows)
        self.frames.append(compact_strings(keys))
        self.by_hash.update(zip(hashes, range(self.rows, self.rows + len(hashes))))
        self.rows += len(hashes)


def _hash_rows(keys: pl.DataFrame) -> pl.Series:
    return keys.hash_rows()


class DedupKeys:
    __slots__ = ("current", "previous", "hash_rows")

    def __init__(self, hash_rows: Callable[[pl.DataFrame], pl.Series] = _hash_rows) -> None:
        self.current = _Generation()
        self.previous = _Generation()
        # Injectable so that a test can make every key collide.
        self.hash_rows = hash_rows

    def __len__(self) -> int:
        return self.current.rows + self.previous.rows

    def first_seen(self, keys: pl.DataFrame, remember_from_us: int = WATERMARK_MIN) -> pl.Series | None:
        """Which rows of `keys` (columns `KEY_COLUMNS`, in order) are seen for
        the first time, with earlier rows of the same batch counting as seen;
        None when all are.

        New keys are remembered from now on, except those older than
        `remember_from_us`: the watermark after this batch. The watermark
        never goes back, so an event with such a key will be late, and late
        events never reach deduplication.
        """
        n = keys.height
        hashes = self.hash_rows(keys)
        is_new = _first_distinct(keys, hashes)
        clash = None  # new, but its hash is held by another key
        times = keys[TIME]
        for generation in (g for g in (self.current, self.previous) if g.rows):
            # A duplicate has its original's time: only rows within the
            # generation's time span can match it.
            # (Series comparisons and filters: no query-engine call.)
            probed = (times >= generation.oldest_us) & (times <= generation.newest_us) & is_new
            if not probed.any():
                continue
            rows = probed.arg_true().to_list()
            found = list(map(generation.by_hash.get, hashes.filter(probed).to_list()))
            for i, row_id in zip(rows, found):
                if row_id is None:
                    continue
                if generation.key_of(row_id) == keys.row(i):
                    is_new[i] = False
                else:
                    if clash is None:
                        clash = pl.Series([False] * n, dtype=pl.Boolean)
                    clash[i] = True
        if self.current.collided or self.previous.collided:  # only after a 64-bit collision
            for i in is_new.arg_true().to_list():
                key = keys.row(i)
                if key in self.current.collided or key in self.previous.collided:
                    is_new[i] = False
        remember = is_new & (times >= remember_from_us)
        if clash is not None:
            clash = clash.filter(remember)
        self._remember(filter_rows(keys, remember), hashes.filter(remember), clash)
        return None if is_new.all() else is_new

    def _remember(self, keys: pl.DataFrame, hashes: pl.Series, clash: pl.Series | None) -> None:
        """Add new keys to `current`; a key whose hash another key holds is
        kept exactly instead."""
        if not keys.height:
            return
        hash_list = hashes.to_list()
        # Two keys with one hash in the batch, or a hash `current` already
        # holds for another key (outside the time span probed above).
        repeated = hashes.is_duplicated() | pl.Series(list(map(self.current.by_hash.__contains__, hash_list)),
                                                      dtype=pl.Boolean)
        clash = repeated if clash is None else clash | repeated
        if clash.any():
            self.current.collided.update(keys.filter(clash).iter_rows())
            keys, hash_list = filter_rows(keys, ~clash), hashes.filter(~clash).to_list()
            if not keys.height:
                return
        self.current.add(keys, hash_list)

    def forget(self, watermark_us: int) -> None:
        """Drop what can no longer match an event that is not late."""
        if watermark_us >= _end_of_minute(self.previous.newest_us):
            self.previous, self.current = self.current, _Generation()


def _first_distinct(keys: pl.DataFrame, hashes: pl.Series) -> pl.Series:
    """Which rows are the first with their key in the batch: decided by hash,
    and exactly (comparing keys) for the few rows whose hash repeats."""
    repeated = hashes.is_duplicated()
    if not repeated.any():
        return ~repeated
    exact = run_plan(keys.lazy().filter(pl.lit(repeated)).select(pl.struct(pl.all()).is_first_distinct())).to_series()
    return (~repeated).scatter(repeated.arg_true(), exact)


def _end_of_minute(time_us: int) -> int:
    if time_us == WATERMARK_MIN:  # an empty generation: over at once
        return WATERMARK_MIN
    return _MINUTES.end_of(_MINUTES.start_of(time_us))
