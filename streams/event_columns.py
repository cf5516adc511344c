"""A batch of events as columns: one list per field.

Parsing and counting work on whole micro-batches, and most of their work is
done by C loops over columns (`map`, `zip`, `itertools.compress`, slicing)
instead of Python code per event. `Event` objects are made only where a sink
needs them (raw events, Optimizely): `EventColumns` is a `Sequence[Event]`
that builds each `Event` when it is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, overload

if TYPE_CHECKING:
    import polars as pl

from streams.events import NO_PROPERTIES, Event

# Tuples (GDELT's countries) are written as lists.
_encode_properties = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=list, sort_keys=True).encode

CORE_FIELDS = ("customer_id", "event_type", "transaction_id")
_COLUMN_OF = {"customer_id": "customer_ids", "event_type": "event_types", "transaction_id": "transaction_ids"}


@dataclass(slots=True, eq=False)
class EventColumns(Sequence[Event]):
    """Events of one partition, in position order, as columns.

    `properties` is None when no event has any (the common case: events-csv),
    else one mapping per event.
    """

    partition: str
    customer_ids: Sequence[str]
    event_types: Sequence[str]
    transaction_ids: Sequence[str]
    times_us: Sequence[int]
    positions: Sequence[int]
    properties: Sequence[Mapping[str, Any]] | None = None

    @classmethod
    def empty(cls, partition: str) -> "EventColumns":
        return cls(partition, [], [], [], [], [])

    @classmethod
    def from_events(cls, partition: str, events: Iterable[Event]) -> "EventColumns":
        events = list(events)
        properties = [e.properties for e in events]
        return cls(
            partition,
            [e.customer_id for e in events],
            [e.event_type for e in events],
            [e.transaction_id for e in events],
            [e.event_time_us for e in events],
            [e.position for e in events],
            properties if any(properties) else None,
        )

    def __len__(self) -> int:
        return len(self.times_us)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> "Sequence[Event]": ...
    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        if isinstance(index, slice):
            return list(self)[index]
        properties = NO_PROPERTIES if self.properties is None else self.properties[index] or NO_PROPERTIES
        return Event(self.customer_ids[index], self.event_types[index], self.transaction_ids[index],
                     self.times_us[index], properties, self.partition, self.positions[index])

    def __iter__(self) -> Iterator[Event]:
        partition = self.partition
        properties = self.properties or (NO_PROPERTIES,) * len(self)
        for c, e, x, t, p, pos in zip(self.customer_ids, self.event_types, self.transaction_ids, self.times_us,
                                      properties, self.positions):
            yield Event(c, e, x, t, p or NO_PROPERTIES, partition, pos)

    def select(self, keep: Sequence[bool]) -> "EventColumns":
        """The events whose `keep` flag is true, in order."""
        return EventColumns(
            self.partition,
            list(compress(self.customer_ids, keep)),
            list(compress(self.event_types, keep)),
            list(compress(self.transaction_ids, keep)),
            list(compress(self.times_us, keep)),
            list(compress(self.positions, keep)),
            None if self.properties is None else list(compress(self.properties, keep)),
        )

    def column(self, name: str) -> Sequence[str]:
        """A core field's column."""
        return getattr(self, _COLUMN_OF[name])

    def to_frame(self) -> "pl.DataFrame":
        """The events as an Arrow-format frame: `customer_id`, `event_type`,
        `transaction_id` (String), `event_time_us`, `position` (Int64) and
        `properties` (String: the JSON object of the other fields, null when
        an event has none)."""
        import polars as pl

        if self.properties is None:
            properties = pl.Series("properties", [None] * len(self), dtype=pl.String)
        else:
            properties = pl.Series("properties", [_encode_properties(p) if p else None for p in self.properties],
                                   dtype=pl.String)
        return pl.DataFrame({
            "customer_id": pl.Series(self.customer_ids, dtype=pl.String),
            "event_type": pl.Series(self.event_types, dtype=pl.String),
            "transaction_id": pl.Series(self.transaction_ids, dtype=pl.String),
            "event_time_us": pl.Series(self.times_us, dtype=pl.Int64),
            "position": pl.Series(self.positions, dtype=pl.Int64),
            "properties": properties,
        })

    def dedup_keys(self) -> list[tuple[str, str, str, int]]:
        return list(zip(self.customer_ids, self.event_types, self.transaction_ids, self.times_us))
