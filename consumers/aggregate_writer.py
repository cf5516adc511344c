"""Window aggregates as NDJSON objects, one per (rollup, window, partition)."""

from __future__ import annotations

import json
from collections import defaultdict

from consumers.object_keys import render_key
from consumers.ports import ObjectStore
from streams.events import SCHEMA_VERSION, BatchKind, WindowCount, format_utc_seconds, us_to_datetime
from streams.window_counter import CountedBatch

DEFAULT_AGGREGATE_KEY_TEMPLATE = "aggregates/{rollup}/dt={dt}/hour={hour}/{window}-{partition}.jsonl"


class AggregateWriter:
    """Writes the counts of each emitted window as one object, named by rollup,
    window start and source partition: deterministic, so a replay, or the final
    version of a window first flushed as provisional (`"final": false`, on a
    stop or drain), overwrites it."""

    name = "aggregates"

    def __init__(self, store: ObjectStore, key_template: str = DEFAULT_AGGREGATE_KEY_TEMPLATE) -> None:
        self.store = store
        self.key_template = key_template
        self.objects_written = 0

    def write(self, batch: CountedBatch) -> None:
        groups: dict[tuple[str, int, str], list[WindowCount]] = defaultdict(list)
        stop_flush = batch.kind is BatchKind.EOF
        for count in batch.closed:
            # Running counts of open windows are for the count store; objects
            # are written for final windows, and for the flush at a stop.
            if count.final or stop_flush:
                groups[(count.rollup, count.window_start_us, count.partition)].append(count)
        for (rollup, start, partition), counts in groups.items():
            when = us_to_datetime(start)
            key = render_key(
                self.key_template,
                {"rollup": rollup, "dt": when.strftime("%Y-%m-%d"), "hour": when.strftime("%H"),
                 "window": when.strftime("%Y%m%dT%H%M%SZ"), "partition": partition},
            )
            lines = [
                json.dumps({"v": SCHEMA_VERSION, "rollup": rollup, "window_start": format_utc_seconds(start),
                            "key": list(c.key), "count": c.count, "final": c.final, "partition": partition}, ensure_ascii=False)
                for c in sorted(counts, key=lambda c: c.key)
            ]
            self.store.put(key, ("\n".join(lines) + "\n").encode())
            self.objects_written += 1

    def flush(self) -> None:
        pass

    def pending_floor(self, partition: str) -> int | None:
        return None

    def close(self) -> None:
        pass
