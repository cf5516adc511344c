"""Raw events as gzip NDJSON objects in Hive-style partitions."""

from __future__ import annotations

import string
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

from consumers.object_keys import render_key
from consumers.ports import ObjectStore
from streams.events import Event, us_to_datetime
from streams.window_counter import CountedBatch

DEFAULT_RAW_KEY_TEMPLATE = (
    "events/event_type={event_type}/dt={dt}/hour={hour}/part-{partition}-{first_position}.jsonl.gz"
)


@dataclass
class _Buffer:
    """One object being built. Compressed as it grows, so a 64 MiB object
    costs a few MiB of memory, not 64."""

    first_position: int
    opened_at: float
    compressor: "zlib._Compress" = field(default_factory=lambda: zlib.compressobj(6, zlib.DEFLATED, 31, 5))
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # uncompressed bytes
    events: int = 0
    body: bytes | None = None

    def add(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        self.size += len(data)
        self.events += len(lines)
        chunk = self.compressor.compress(data)
        if chunk:
            self.chunks.append(chunk)

    def finish(self) -> bytes:
        """The gzip body; idempotent, so a failed put can be retried."""
        if self.body is None:
            self.chunks.append(self.compressor.flush())
            self.body = b"".join(self.chunks)
            self.chunks = []
        return self.body


class S3PartitionedWriter:
    """Buffers valid events per (source partition, key prefix) and writes one
    gzip NDJSON object per buffer when it reaches `max_bytes` (uncompressed) or
    `max_age_seconds`, or on `flush()`.

    The key template's fields are any event field or property, plus `dt`
    (`YYYY-MM-DD`), `hour` (`HH`), `partition` (the source partition) and
    `first_position` (the position of the buffer's first event, zero-padded).
    Every value is sanitised. Because `first_position` names the object, a
    replay of the same input with the same batch boundaries rewrites the same
    keys instead of adding new ones.

    Works over any `ObjectStore`: a local directory or S3.
    """

    name = "raw-events"

    def __init__(
        self,
        store: ObjectStore,
        key_template: str = DEFAULT_RAW_KEY_TEMPLATE,
        max_bytes: int = 64 << 20,
        max_age_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_open_objects: int = 64,
    ) -> None:
        self.store = store
        self.key_template = key_template
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        # Each open object holds a zlib stream (~0.15 MiB at memLevel 5, half
        # the default, for a slightly weaker ratio): a backfill over
        # many (event type, hour) partitions would otherwise hold hundreds.
        self.max_open_objects = max_open_objects
        self.clock = clock
        # The key's fixed part is everything before `first_position`.
        if "{first_position}" not in key_template or "{partition}" not in key_template:
            raise ValueError("the raw event key template must contain {partition} and {first_position}")
        self._prefix_template, self._suffix_template = key_template.split("{first_position}", 1)
        fields = {name for _, name, _, _ in string.Formatter().parse(self._prefix_template) if name}
        # Rendering a key costs more than the event's JSON; most templates only
        # depend on (event type, hour, partition), so cache the prefix by those.
        self._cacheable = fields <= {"event_type", "dt", "hour", "partition"}
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self.objects_written = 0
        self.events_written = 0

    def _values(self, event: Event) -> dict[str, object]:
        when = us_to_datetime(event.event_time_us)
        values: dict[str, object] = dict(event.properties)
        values.update(
            customer_id=event.customer_id,
            event_type=event.event_type,
            transaction_id=event.transaction_id,
            dt=when.strftime("%Y-%m-%d"),
            hour=when.strftime("%H"),
            minute=when.strftime("%M"),
            partition=event.partition,
        )
        return values

    def write(self, batch: CountedBatch) -> None:
        now = self.clock()
        if batch.restarted:
            # The partition replays from its checkpoint, which is at or before
            # everything buffered for it (see pending_floor): drop the buffers
            # rather than write those events twice.
            for buffer_key in [k for k in self._buffers if k[0] == batch.partition]:
                del self._buffers[buffer_key]
        prefixes: dict[tuple[str, int, str], str] = {}
        # Lines are grouped per object and compressed a group at a time.
        grouped: dict[tuple[str, str], tuple[int, list[bytes]]] = {}
        for event in batch.events:
            if self._cacheable:
                cache_key = (event.event_type, event.event_time_us // 3_600_000_000, event.partition)
                prefix = prefixes.get(cache_key)
                if prefix is None:
                    prefix = prefixes[cache_key] = render_key(self._prefix_template, self._values(event))
            else:
                prefix = render_key(self._prefix_template, self._values(event))
            buffer_key = (event.partition, prefix)
            pending = grouped.get(buffer_key)
            if pending is None:
                pending = grouped[buffer_key] = (event.position, [])
            pending[1].append(event.to_json_line())
            if len(pending[1]) >= 1000:
                self._add(buffer_key, *grouped.pop(buffer_key), now)
        for buffer_key, (first_position, lines) in grouped.items():
            self._add(buffer_key, first_position, lines, now)
        for buffer_key in [k for k, b in self._buffers.items() if now - b.opened_at >= self.max_age_seconds]:
            self._write(buffer_key)
        while len(self._buffers) > self.max_open_objects:
            self._write(next(iter(self._buffers)))  # the oldest opened (dicts keep insertion order)

    def _add(self, buffer_key: tuple[str, str], first_position: int, lines: list[bytes], now: float) -> None:
        buffer = self._buffers.get(buffer_key)
        if buffer is not None and buffer.body is not None:  # finished, but its put failed
            self._write(buffer_key)
            buffer = None
        if buffer is None:
            buffer = self._buffers[buffer_key] = _Buffer(first_position, now)
        buffer.add(lines)
        if buffer.size >= self.max_bytes:
            self._write(buffer_key)

    def _write(self, buffer_key: tuple[str, str]) -> None:
        # The buffer is dropped only once the store has the object: if `put`
        # fails, its events stay pending and the source is not checkpointed.
        buffer = self._buffers[buffer_key]
        _, prefix = buffer_key
        key = prefix + f"{buffer.first_position:012d}" + render_key(self._suffix_template, {})
        self.store.put(key, buffer.finish())
        del self._buffers[buffer_key]
        self.objects_written += 1
        self.events_written += buffer.events

    def flush(self) -> None:
        for buffer_key in list(self._buffers):
            self._write(buffer_key)

    def pending_floor(self, partition: str) -> int | None:
        floors = [b.first_position for (p, _), b in self._buffers.items() if p == partition]
        return min(floors) if floors else None

    def close(self) -> None:
        self.flush()
