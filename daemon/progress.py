"""Progress of a job: a bar on a terminal, one INFO line a minute otherwise.

On a file the goal is its size in bytes: the bar shows bytes done, the total,
percent and ETA. For a gzip file the position is the one in the compressed
file (what `ls -l` shows), read from the kernel's offset of the open file
descriptor (`/proc/self/fdinfo`), so neither the reader nor the decompressor
has to cooperate. Where that is not available, the bytes of the records read
stand in for a plain file; a gzip file then shows events only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("rivulet.progress")

GZIP_MAGIC = b"\x1f\x8b"
FDINFO = Path("/proc/self/fdinfo")


class FilePosition:
    """How far into `path` this process has read, in bytes of the file as stored."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self.total = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.gzip = f.read(2) == GZIP_MAGIC
        self._fd: int | None = None
        self._opened = False  # the reader's descriptor was seen: once it is gone, reading is done

    def _find_fd(self) -> int | None:
        fd_dir = Path("/proc/self/fd")
        try:
            for entry in fd_dir.iterdir():
                try:
                    if os.readlink(entry) == str(self.path):
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            return None
        return None

    def _fd_position(self) -> int | None:
        for _attempt in range(2):
            if self._fd is None:
                self._fd = self._find_fd()
                if self._fd is None:
                    # The source closes the file at its end, often before the
                    # sinks have caught up: a closed file is a file read.
                    return self.total if self._opened else None
                self._opened = True
            try:
                with open(FDINFO / str(self._fd), encoding="ascii") as info:
                    for line in info:
                        if line.startswith("pos:"):
                            position = int(line.split()[1])
                            # The descriptor may have been closed and its number reused.
                            if os.readlink(f"/proc/self/fd/{self._fd}") == str(self.path):
                                return position
                            break
            except (OSError, ValueError):
                pass
            self._fd = None
        return None

    def position(self) -> int | None:
        """Bytes done, or None when unknown (before the file is opened, or
        without /proc)."""
        position = self._fd_position()
        return None if position is None else min(position, self.total)


def format_duration(delta: timedelta) -> str:
    """`10m`, `3h`, `90s`: the way durations are written in the config."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{delta.total_seconds():g}s"


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class JobProgress:
    """Called once per batch with the totals so far. Draws a bar on a terminal
    (tqdm), and logs one INFO line every `interval` seconds: events, rate,
    dead letters, lag, and on a file its percent and ETA."""

    def __init__(
        self,
        name: str,
        file: FilePosition | None = None,
        interval: float = 60.0,
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        lag: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.name = name
        self.file = file
        self.interval = interval
        self.clock = clock
        self.lag = lag
        self.started = self.last_log = clock()
        self._bar = _make_bar(file) if (sys.stderr.isatty() if bar is None else bar) else None
        self._bar_position = 0

    def fraction(self) -> float | None:
        if self.file is None or not self.file.total:
            return None
        position = self.file.position()
        return None if position is None else position / self.file.total

    def update(self, summary: Any) -> None:
        if self._bar is not None:
            self._draw(summary)
        now = self.clock()
        if now - self.last_log >= self.interval:
            self.last_log = now
            log.info("%s", self.line(summary, now))

    def line(self, summary: Any, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        dead = sum(summary.reasons.values())
        parts = [f"{self.name}: {summary.read:,} records read, {summary.valid:,} counted, {summary.read / elapsed:,.0f}/s",
                 f"{dead:,} dead letters"]
        lag = self.lag()
        if lag is not None:
            parts.append(f"lag {lag:,.0f} s")
        done = self.fraction()
        if done is not None:
            position = "" if self.file is None else f" of {self.file.path.name}"
            parts.append(f"{done:.1%}{position}")
            if 0 < done < 1:
                parts.append(f"ETA {format_eta(elapsed * (1 - done) / done)}")
        return ", ".join(parts)

    def _draw(self, summary: Any) -> None:
        bar = self._bar
        if self.file is not None:
            position = self.file.position()
            if position is not None:
                bar.update(position - self._bar_position)
                self._bar_position = position
            bar.set_postfix_str(f"{summary.read:,} events", refresh=False)
        else:
            bar.update(summary.read - self._bar_position)
            self._bar_position = summary.read

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _make_bar(file: FilePosition | None) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if file is not None and (not file.gzip or FDINFO.is_dir()):
        return tqdm(total=file.total, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr,
                    desc=file.path.name, dynamic_ncols=True)
    return tqdm(unit="ev", unit_scale=True, leave=False, file=sys.stderr, dynamic_ncols=True)
