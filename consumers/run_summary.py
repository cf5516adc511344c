"""The run summary: what came in, what went where, how fast.

Late events are told apart after the final sync (`check_late`): a late event
whose dedup key its partition has already counted (its raw-event archive
holds the key, consumers/counted_keys.py) is a re-sent duplicate, and no
lateness would have counted it again; the others are new, and the summary
names the smallest `--lateness` (rounded up) that would have counted every
one of them. With `run_keys` the summary remembers the keys the run counted
(consumers/counted_keys.RunKeys, the most recent first), and a late event
that is a re-send of one of them is told apart as it comes, without reading
the archive; only the others are looked up in it at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl

from streams.batches import CountedBatch
from streams.event_columns import KEY_COLUMNS
from streams.events import Reason
from streams.utc import HOUR_US, MINUTE_US, US_PER_SECOND

if TYPE_CHECKING:
    from consumers.counted_keys import CountedKeys, RunKeys

# Late events kept in memory for the check after the run (their keys, about
# 70 bytes each); past this many the summary does not check them, and says
# so, rather than hold them all (a daemon may run for months).
MAX_LATE_CHECKED = 100_000
_LATE_BY = "late_by_us"


@dataclass
class RunSummary:
    read: int = 0
    valid: int = 0
    duplicates: int = 0
    malformed: int = 0
    late: int = 0
    future: int = 0
    blank: int = 0
    windows_written: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    max_lateness_us: int = 0  # how far behind its watermark the latest late event was
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    # For `check_late`: per batch with late dead letters, its partition and a
    # frame of their `late_by_us` and dedup keys (`KEY_COLUMNS`), of those
    # `run_keys` did not answer as they came. Columns, not the letters: a
    # 10M-row sparse run has 90,868 late events, whose records held about
    # 25 MB and were parsed all at once at the end.
    late_keys: list[tuple[str, pl.DataFrame]] = field(default_factory=list, repr=False)
    late_seen: int = 0
    late_resent: int = 0  # late events whose key `run_keys` held as they came: re-sent duplicates
    late_kept: int = 0  # the others, in `late_keys`
    late_overflow: bool = False  # more than MAX_LATE_CHECKED kept: not kept, not checked
    # False when no check will come (no raw-event archive): late events are
    # then only counted, their keys neither parsed nor kept.
    keep_late: bool = True
    # Set by `check_late`: late events already counted in their partition
    # (re-sent duplicates, and repeats of a new late event), and the lateness
    # that would have counted the new ones (None: none is new).
    late_duplicates: int | None = None
    lateness_needed: timedelta | None = None
    late_unchecked: str | None = None  # why the late events could not be checked
    # The keys this run counted, for `check_late` (None: every late event is
    # looked up in the archive).
    run_keys: "RunKeys | None" = field(default=None, repr=False)

    def add(self, batch: CountedBatch) -> None:
        self.read += batch.read
        self.valid += len(batch.events)
        self.duplicates += batch.duplicates
        self.malformed += batch.malformed
        self.late += batch.late
        self.future += batch.future
        self.blank += batch.blank
        self.windows_written += batch.final_windows
        self.max_lateness_us = max(self.max_lateness_us, batch.max_late_by_us)
        for letter in batch.dead_letters:
            self.reasons[letter.reason.value] = self.reasons.get(letter.reason.value, 0) + 1
        if self.run_keys is not None:
            self.run_keys.add(batch)
        if batch.late and self.keep_late and not self.late_overflow:
            self._keep_late(batch)

    def _keep_late(self, batch: CountedBatch) -> None:
        from consumers.counted_keys import keys_of_records

        letters = [letter for letter in batch.dead_letters if letter.reason is Reason.LATE]
        self.late_seen += len(letters)
        late_by = pl.Series(_LATE_BY, [letter.late_by_us for letter in letters], dtype=pl.Int64)
        keys = keys_of_records(letter.record for letter in letters).with_columns(late_by)
        if self.run_keys is not None:
            # Now, while the run's keys still hold the originals: a re-send
            # follows its original closely (within hours, in the bench's
            # workload), while the keys forget the oldest first. At the end
            # of a run they would answer only its last hours' late events.
            resent = self.run_keys.holds(batch.partition, keys)
            self.late_resent += int(resent.sum())
            keys = keys.filter(~resent)
        if not keys.height:
            return
        self.late_kept += keys.height
        if self.late_kept > MAX_LATE_CHECKED:
            self.late_overflow = True
            self.late_keys = []
            return
        self.late_keys.append((batch.partition, keys))

    def check_late(self, counted: "CountedKeys", lateness: timedelta) -> None:
        """Split the late events into re-sent duplicates and new ones against
        what their partitions have counted (call after the final sync, so the
        archive holds every event of the run)."""
        run, self.run_keys = self.run_keys, None  # the run is over: nothing more to remember
        if not self.late:
            self.late_duplicates, self.lateness_needed = 0, None
            return
        if self.late_overflow:
            self.late_unchecked = f"more than {MAX_LATE_CHECKED:,} late events"
            return
        if self.late_seen != self.late:
            self.late_unchecked = "not every late event was seen"
            return
        if not self.late_keys:  # every one a re-send of what the run counted
            self.late_duplicates, self.lateness_needed = self.late, None
            return
        lateness_us = int(lateness.total_seconds() * 1_000_000)
        frame = pl.concat([keys.with_columns(pl.lit(partition, pl.String).alias("partition"))
                           for partition, keys in self.late_keys]).with_row_index("_row")
        hits = []
        for (partition,), rows in frame.partition_by("partition", as_dict=True, maintain_order=True).items():
            hits.append(rows.select("_row").with_columns(
                counted.counted(partition, rows, run).alias("_counted")))
        frame = frame.join(pl.concat(hits), on="_row")
        # A late event is new when its partition has not counted its key. Its
        # copies count once (the first admitted), so the rest are repeats. The
        # lateness that admits an event is how far it was behind the watermark
        # plus the lateness in force; one copy admitted is enough. A record
        # that is not an event (none is, as the counter writes them) is new.
        lag = (pl.col(_LATE_BY).fill_null(self.max_lateness_us) + lateness_us).alias("lag")
        new = frame.filter(~pl.col("_counted")).with_columns(lag)
        readable = pl.col(KEY_COLUMNS[-1]).is_not_null()
        new_keys = pl.concat([
            new.filter(readable).group_by("partition", *KEY_COLUMNS).agg(pl.col("lag").min()).select("lag"),
            new.filter(~readable).select("lag"),
        ])
        self.late_duplicates = self.late - new_keys.height
        self.lateness_needed = round_up_lateness(int(new_keys["lag"].max())) if new_keys.height else None  # type: ignore[arg-type]
        self.late_keys = []

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def events_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def dead_lettered(self) -> int:
        """Records dead-lettered by the pipeline: malformed, late and future."""
        return self.malformed + self.late + self.future

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read, "blank": self.blank, "valid": self.valid, "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered, "malformed": self.malformed, "late": self.late,
            "future": self.future, "windows_written": self.windows_written, "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1), "dead_letter_reasons": dict(self.reasons),
            "late_duplicates": self.late_duplicates if self.late else 0,
            "lateness_needed": format_lateness(self.lateness_needed) if self.lateness_needed is not None else None,
        }

    def render(self, lateness: timedelta, dead_letter_path: str | None = None) -> str:
        """The summary for a person. The indented lines add up to the line
        above them: records read = blank + valid + duplicates + dead-lettered,
        and dead-lettered = malformed + late + future."""
        lines = [
            f"records read           {self.read:>12,}",
            f"  blank lines skipped  {self.blank:>12,}",
            f"  valid (counted)      {self.valid:>12,}",
            f"  duplicates           {self.duplicates:>12,}",
            f"  dead-lettered        {self.dead_lettered:>12,}",
            f"    malformed          {self.malformed:>12,}",
            f"    late               {self.late:>12,}",
            f"    future             {self.future:>12,}",
            f"windows written        {self.windows_written:>12,}",
            f"seconds                {self.seconds:>12.2f}",
            f"records/s              {self.events_per_second:>12,.0f}",
        ]
        if self.late:
            lines.append(self._late_note(lateness))
        if self.reasons:
            lines.append("dead letters by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())))
        if dead_letter_path and self.reasons:
            lines.append(f"dead letters in {dead_letter_path}")
        return "\n".join(lines)


    def _late_note(self, lateness: timedelta) -> str:
        head = f"note: {self.late:,} late event(s) were dead-lettered under --lateness {format_lateness(lateness)}"
        if self.late_duplicates is None:
            needed = round_up_lateness(int(lateness.total_seconds() * 1_000_000) + self.max_lateness_us)
            why = self.late_unchecked or "not checked against the raw-event archive"
            return (f"{head}; --lateness {format_lateness(needed)} would have admitted them, but re-sent "
                    f"duplicates among them (which count once) were not told apart: {why}")
        new = self.late - self.late_duplicates
        if not new:
            return f"{head}: all are re-sent duplicates of events already counted (nothing lost)"
        split = f"all {new:,} are new" if not self.late_duplicates else \
            f"{self.late_duplicates:,} are re-sent duplicates, {new:,} are new"
        return f"{head}: {split}; --lateness {format_lateness(self.lateness_needed)} would have counted them"


def round_up_lateness(us: int) -> timedelta:
    """A lateness of at least `us` microseconds, rounded up to a value people
    write: whole seconds under a minute, whole minutes under two days, whole
    hours beyond. A larger lateness admits every event a smaller one does."""
    if us <= MINUTE_US:
        step = US_PER_SECOND
    elif us <= 48 * HOUR_US:
        step = MINUTE_US
    else:
        step = HOUR_US
    return timedelta(microseconds=-(-us // step) * step)


def format_lateness(delta: timedelta | None) -> str:
    """`45s`, `47m`, `2h`, `1d`: as `--lateness` takes it, rounded up to
    whole seconds (give it a value from `round_up_lateness` for a round one)."""
    us = 0 if delta is None else delta // timedelta(microseconds=1)
    seconds = -(-us // 1_000_000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
