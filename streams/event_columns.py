"""A batch of events as columns: an Arrow-format frame (polars) plus, when
any event has them, the events' extra properties.

Parsing, deciding and counting work on whole micro-batches in native kernels;
`Event` objects are made only where a sink needs them (Optimizely, dead
letters): `EventColumns` is a `Sequence[Event]` that builds each `Event` when
it is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any, Iterable, Iterator, Mapping, overload

import polars as pl

from streams.events import NO_PROPERTIES, Event

CORE_FIELDS = ("customer_id", "event_type", "transaction_id")
TIME = "event_time_us"
POSITION = "position"
KEY_COLUMNS = (*CORE_FIELDS, TIME)  # the dedup key
SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.String(), "event_type": pl.String(), "transaction_id": pl.String(),
    TIME: pl.Int64(), POSITION: pl.Int64(),
}

# Tuples (GDELT's countries) are written as lists.
_encode_properties = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=list, sort_keys=True).encode


def compact_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its strings copied into buffers of their own.

    A string column made by a kernel (split, filter, gather) views the
    buffers of the batch it came from, so keeping a few of its rows keeps the
    whole batch's text alive: a writer buffering an hour of events, or the
    dedup keys of ten minutes, held every batch since (+135 MB on 1M dense
    rows). Whatever outlives its batch is compacted first.
    """
    return frame.with_columns(pl.col(pl.String) + pl.lit(""))


# The flags DataFrame methods run their one-step plans with: no optimiser pass.
# A lazy plan collected with them costs ~0.02 ms of fixed overhead instead of
# ~0.12 ms with the default flags, and batches run a dozen plans each.
_EAGER_FLAGS = pl.QueryOptFlags._eager() if hasattr(pl.QueryOptFlags, "_eager") else pl.QueryOptFlags()


def run_plans(*plans: pl.LazyFrame) -> list[pl.DataFrame]:
    """Several lazy plans run in one native call, as eager calls run (without
    the optimiser, so a subplan two of them share is computed twice)."""
    return pl.collect_all(plans, optimizations=_EAGER_FLAGS)


def run_plan(plan: pl.LazyFrame) -> pl.DataFrame:
    """A lazy plan (several steps fused) run as one eager call."""
    return plan.collect(optimizations=_EAGER_FLAGS)


def filter_rows(frame: pl.DataFrame, keep: pl.Series) -> pl.DataFrame:
    """`frame.filter(keep)`, column by column: a Series' filter runs on the
    calling thread and keeps the GIL, where a frame's goes through the query
    engine (~0.1 ms more, and the GIL handed to any thread that wants it, so
    up to a 5 ms switch interval more while the writer thread is busy)."""
    return pl.DataFrame([column.filter(keep) for column in frame.get_columns()])


@dataclass(slots=True, eq=False)
class EventColumns(Sequence[Event]):
    """Events of one partition, in position order.

    `frame` has the columns of `SCHEMA`. `properties` is None when no event
    has any (the common case: events-csv), else one mapping per row.
    """

    partition: str
    frame: pl.DataFrame
    properties: list[Mapping[str, Any]] | None = None

    @classmethod
    def empty(cls, partition: str) -> "EventColumns":
        return cls(partition, pl.DataFrame(schema=SCHEMA))

    @classmethod
    def from_lists(cls, partition: str, customer_ids: Sequence[str], event_types: Sequence[str],
                   transaction_ids: Sequence[str], times_us: Sequence[int], positions: Sequence[int],
                   properties: Sequence[Mapping[str, Any]] | None = None) -> "EventColumns":
        frame = pl.DataFrame(
            [pl.Series("customer_id", customer_ids, pl.String), pl.Series("event_type", event_types, pl.String),
             pl.Series("transaction_id", transaction_ids, pl.String), pl.Series(TIME, times_us, pl.Int64),
             pl.Series(POSITION, positions, pl.Int64)])
        return cls(partition, frame, list(properties) if properties is not None and any(properties) else None)

    @classmethod
    def from_events(cls, partition: str, events: Iterable[Event]) -> "EventColumns":
        events = list(events)
        return cls.from_lists(partition, [e.customer_id for e in events], [e.event_type for e in events],
                              [e.transaction_id for e in events], [e.event_time_us for e in events],
                              [e.position for e in events], [e.properties for e in events])

    @classmethod
    def concat(cls, partition: str, parts: Sequence["EventColumns"]) -> "EventColumns":
        """The rows of `parts`, sorted by position."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(partition)
        if len(parts) == 1:
            return parts[0]
        frame = pl.concat([p.frame for p in parts])
        properties = None
        if any(p.properties is not None for p in parts):
            properties = [prop for p in parts for prop in (p.properties or [NO_PROPERTIES] * len(p))]
        order = frame[POSITION].arg_sort()
        if properties is not None:
            properties = [properties[i] for i in order.to_list()]
        return cls(partition, frame[order], properties)

    def __len__(self) -> int:
        return self.frame.height

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> "Sequence[Event]": ...
    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
        c, e, x, t, pos = self.frame.row(index)
        properties = NO_PROPERTIES if self.properties is None else self.properties[index] or NO_PROPERTIES
        return Event(c, e, x, t, properties, self.partition, pos)

    def __iter__(self) -> Iterator[Event]:
        partition = self.partition
        properties = self.properties or (NO_PROPERTIES,) * len(self)
        for (c, e, x, t, pos), p in zip(self.frame.iter_rows(), properties):
            yield Event(c, e, x, t, p or NO_PROPERTIES, partition, pos)

    def filter(self, keep: pl.Series) -> "EventColumns":
        """The events whose `keep` flag is true, in order."""
        properties = None if self.properties is None else list(compress(self.properties, keep.to_list()))
        return EventColumns(self.partition, filter_rows(self.frame, keep), properties)

    def column(self, name: str) -> pl.Series:
        """A core field's, the time's or the position's column."""
        return self.frame[name]

    @property
    def times_us(self) -> pl.Series:
        return self.frame[TIME]

    @property
    def positions(self) -> pl.Series:
        return self.frame[POSITION]

    def to_frame(self) -> pl.DataFrame:
        """The events for writers: the frame's columns plus `properties`
        (String: the JSON object of the other fields, null when an event has
        none)."""
        if self.properties is None:
            properties = pl.Series("properties", [None] * len(self), dtype=pl.String)
        else:
            properties = pl.Series("properties", [_encode_properties(p) if p else None for p in self.properties],
                                   dtype=pl.String)
        return self.frame.with_columns(properties)
