"""The batches that cross package boundaries: what a source hands in, what the
parser hands the counter, and what the counter hands the sinks.

    RecordBatch (producers/)  ─▶ parse ─▶  ParsedBatch  ─▶ count ─▶  CountedBatch (consumers/)

Sources, sinks and the HTTP service import their types from here, never from
the parsers or the counter that make them.

>>> batch = RecordBatch.data("events.csv", [b"c1,click,t1,2021-03-01T00:00:00Z"], range(1, 2))
>>> batch.kind is BatchKind.DATA, len(ParsedBatch.of(batch).events)
(True, 0)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence

from streams.event_columns import EventColumns
from streams.events import DeadLetter, Event
from streams.window_counts import WindowCounts
from streams.windowing import WATERMARK_MIN


class BatchKind(enum.Enum):
    DATA = "data"
    IDLE = "idle"  # an empty poll of a caught-up unbounded source
    EOF = "eof"  # the partition is finished: flush everything
    # Records of a parent partition (a resharded Kinesis shard), replayed
    # ahead of a child's own: they rebuild the state the child continues
    # (dedup keys, watermark) and are never counted again.
    INHERITED = "inherited"


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """A micro-batch from one source partition, or a control signal for it.

    `records` are undecoded lines; `positions[i]` is the position of
    `records[i]` in its partition (a line number in a file, a sequence in a
    spool or shard), increasing. Files pass a `range`: no object per record.

    `idle_seconds` is the wall time that passed since the previous poll, set only
    on IDLE batches. `arrival_us` is the processing time the batch was read at;
    processing-time formats (GDELT) stamp their events with it. An INHERITED
    batch holds a parent partition's records under the child's name (with the
    parent's positions).
    """

    partition: str
    kind: BatchKind
    records: Sequence[bytes] = ()
    positions: Sequence[int] = ()
    idle_seconds: float = 0.0
    arrival_us: int = 0
    resume_watermark_us: int | None = None  # set on a partition's first batch after a restart

    @classmethod
    def data(
        cls, partition: str, records: Sequence[bytes], positions: Sequence[int], arrival_us: int = 0
    ) -> "RecordBatch":
        if len(records) != len(positions):
            raise ValueError("a batch needs one position per record")
        return cls(partition, BatchKind.DATA, records, positions, arrival_us=arrival_us)

    @classmethod
    def inherited(cls, partition: str, records: Sequence[bytes], positions: Sequence[int]) -> "RecordBatch":
        if len(records) != len(positions):
            raise ValueError("a batch needs one position per record")
        return cls(partition, BatchKind.INHERITED, records, positions)

    @classmethod
    def idle(cls, partition: str, seconds: float) -> "RecordBatch":
        return cls(partition, BatchKind.IDLE, idle_seconds=seconds)

    @classmethod
    def eof(cls, partition: str) -> "RecordBatch":
        return cls(partition, BatchKind.EOF)


@dataclass(slots=True)
class ParsedBatch:
    """A `RecordBatch` after parsing; control batches pass through empty."""

    source: RecordBatch
    events: EventColumns
    dead_letters: list[DeadLetter] = field(default_factory=list)
    blank: int = 0

    @classmethod
    def of(cls, source: RecordBatch) -> "ParsedBatch":
        return cls(source, EventColumns.empty(source.partition))

    @property
    def partition(self) -> str:
        return self.source.partition


@dataclass(slots=True)
class CountedBatch:
    """What one input batch produced, for the sinks."""

    partition: str
    kind: BatchKind
    events: Sequence[Event] = ()  # accepted: on time and first seen
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Counts of windows per rollup, as columns: final ones, and provisional
    # ones (`final` false) of windows still open.
    windows: list[WindowCounts] = field(default_factory=list)
    read: int = 0
    blank: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    future: int = 0
    watermark_us: int = WATERMARK_MIN
    max_late_by_us: int = 0  # how far the most late event fell behind the watermark
    # Every record before this position is fully reflected in final outputs, so
    # a source may checkpoint here once the sinks have written this batch, and
    # a replay from it must start with this watermark to decide exactly as the
    # first run did (what was late stays late).
    safe_position: int = 0
    safe_watermark_us: int = WATERMARK_MIN
    # The first batch of a partition that restarted from its checkpoint (a
    # Kinesis lease taken back): what sinks still buffer for the partition is
    # about to be delivered again, so they may drop it.
    restarted: bool = False

    @property
    def carries_safe_point(self) -> bool:
        """Whether `safe_position` is one a checkpoint may use: a batch that
        read records or emitted windows (the fan-out's commits, and the
        aggregates' floors, follow the same points)."""
        return bool(self.read or self.windows)

    @property
    def final_windows(self) -> int:
        return sum(counts.final_count for counts in self.windows)
