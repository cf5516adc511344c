"""The run summary: what came in, what went where, how fast."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from streams.window_counter import CountedBatch


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
            needed = lateness + timedelta(microseconds=self.max_lateness_us)
            lines.append(
                f"note: {self.late:,} late event(s) were dead-lettered under --lateness {_fmt(lateness)}; "
                f"--lateness {_fmt(needed)} would have kept them"
            )
        if self.reasons:
            lines.append("dead letters by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())))
        if dead_letter_path and self.reasons:
            lines.append(f"dead letters in {dead_letter_path}")
        return "\n".join(lines)


def _fmt(delta: timedelta) -> str:
    seconds = int(-(-delta.total_seconds() // 1))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    if seconds > 3600:
        return f"{-(-seconds // 60)}m"
    return f"{seconds}s"
