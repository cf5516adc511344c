"""A `ParsedBatch` as plain columns, to cross a process boundary cheaply.

Pickling 5,000 `Event` objects costs several µs each; an `EventColumns`
frame crosses as Arrow buffers. `run --processes 2` parses in the
producer process and ships batches in this form.
"""

from __future__ import annotations

from typing import Any

from streams.batches import BatchKind, ParsedBatch, RecordBatch
from streams.event_columns import EventColumns
from streams.events import DeadLetter, Reason

Columns = tuple[Any, ...]


def to_columns(parsed: ParsedBatch) -> Columns:
    source = parsed.source
    events = parsed.events
    positions = source.positions if isinstance(source.positions, range) else list(source.positions)
    return (
        source.partition,
        source.kind.value,
        len(source.records),
        positions,
        source.idle_seconds,
        source.arrival_us,
        source.resume_watermark_us,
        parsed.blank,
        [(d.reason.value, d.error, d.position, d.record) for d in parsed.dead_letters],
        events.frame,
        None if events.properties is None else [dict(p) if p else None for p in events.properties],
    )


def from_columns(columns: Columns) -> ParsedBatch:
    (partition, kind, count, positions, idle_seconds, arrival_us, resume_watermark_us, blank, dead,
     frame, properties) = columns
    # The counter only needs how many records there were, not their bytes.
    source = RecordBatch(partition, BatchKind(kind), (b"",) * count, positions, idle_seconds, arrival_us,
                         resume_watermark_us)
    events = EventColumns(partition, frame, properties)
    letters = [DeadLetter(Reason(r), error, partition, pos, record) for r, error, pos, record in dead]
    return ParsedBatch(source, events, letters, blank)
