"""How a Kinesis shard's user records are numbered, and how a committed
position maps back to a checkpoint.

Positions number a shard's user records (a KPL aggregated record holds
several) one by one: distinct, increasing, and the same for a record whoever
reads it, which the raw-event writer's object names and the checkpoints need.
Sequence numbers cannot serve: AWS's have 56 digits, the pipeline's positions
are 64-bit. The numbering starts at 0 on a shard read from TRIM_HORIZON (and
on every child shard), continues from the position stored with the checkpoint
when a worker resumes, and starts at `fresh_base(wall clock)` for LATEST,
AT_TIMESTAMP and `start_after`.

Usage::

    marks = SequenceMarks()
    marks.add(position_of_first_user_record, record["SequenceNumber"])
    sequence, sub = marks.locate(committed_position)   # what to checkpoint
"""

from __future__ import annotations

import bisect
import threading
from array import array

SUB_SCALE = 1_000_000  # user records per Kinesis record never reach this (1 MiB / 4 B)
POSITION_MAX = (1 << 63) - 1
_WORD = (1 << 64) - 1


def position_of(sequence_number: str, sub_index: int = 0) -> int:
    """The position the releases before checkpointPosition gave a record (they
    stored no position with the checkpoint; used to resume those leases)."""
    return int(sequence_number) * SUB_SCALE + sub_index


def fresh_base(wall_clock_us: int) -> int:
    """Where the numbering of a shard read from LATEST or AT_TIMESTAMP, with no
    checkpoint, starts: above every position an earlier run of it can have
    given (those advance by one per record, this by 1000 per µs)."""
    return wall_clock_us * 1000


class SequenceMarks:
    """Per Kinesis record delivered and not yet committed past: the position
    of its first user record and its sequence number (as three 64-bit words,
    32 bytes a record), to turn a committed position back into (sequence
    number, sub-record)."""

    __slots__ = ("positions", "hi", "mid", "lo", "start", "lock")

    def __init__(self) -> None:
        self.positions = array("q")
        self.hi, self.mid, self.lo = array("Q"), array("Q"), array("Q")
        self.start = 0  # entries before this are dropped (compacted now and then)
        self.lock = threading.Lock()

    def add(self, position: int, sequence_number: str) -> None:
        value = int(sequence_number)
        with self.lock:
            self.positions.append(position)
            self.hi.append(value >> 128)
            self.mid.append((value >> 64) & _WORD)
            self.lo.append(value & _WORD)

    def locate(self, position: int) -> tuple[str, int] | None:
        """(sequence number, index of the sub-record) of the user record at
        `position` (or just after the last one delivered); forgets what lies
        before it."""
        with self.lock:
            i = bisect.bisect_right(self.positions, position, lo=self.start) - 1
            if i < self.start:
                return None
            value = (self.hi[i] << 128) | (self.mid[i] << 64) | self.lo[i]
            found = str(value), position - self.positions[i]
            self.start = i
            if i > 4096 and i * 2 > len(self.positions):
                for column in (self.positions, self.hi, self.mid, self.lo):
                    del column[:i]
                self.start = 0
            return found

    def __len__(self) -> int:
        return len(self.positions) - self.start
