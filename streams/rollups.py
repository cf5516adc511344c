"""Rollups: what to count, declared in config as key fields × window size."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Iterator

from streams.events import Event
from streams.windowing import TumblingWindower


@dataclass(frozen=True, slots=True)
class RollupSpec:
    """Count events per `key_fields` per tumbling window.

    A key field is a core field (`customer_id`, `event_type`, `transaction_id`)
    or an event property. A property holding a list counts the event once per
    distinct element (GDELT's `country`). Events missing a key field are not
    counted in that rollup.

    >>> RollupSpec("customer_hourly", ("customer_id",), TumblingWindower(3_600_000_000)).name
    'customer_hourly'
    """

    name: str
    key_fields: tuple[str, ...]
    window: TumblingWindower

    def keys_of(self, event: Event) -> Iterator[tuple[str, ...]]:
        values = []
        for name in self.key_fields:
            value = event.field(name)
            if value is None or value == "":
                return
            values.append(value)
        if not any(isinstance(v, (list, tuple)) for v in values):
            yield tuple(str(v) for v in values)
            return
        choices = [dict.fromkeys(str(x) for x in v) if isinstance(v, (list, tuple)) else (str(v),) for v in values]
        yield from product(*choices)

