"""A file as an observable of micro-batches (replay and backfill)."""

from __future__ import annotations

import gzip
import os
from itertools import repeat
from pathlib import Path
from typing import BinaryIO, Callable

import reactivex
from reactivex import abc

from producers.transport import wall_clock_us
from streams.events import RecordBatch

GZIP_MAGIC = b"\x1f\x8b"


def open_maybe_gzip(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for binary reading, decompressing it if it is gzip (by its
    magic bytes, not its name)."""
    f = open(path, "rb")
    if f.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f


def file_partition(path: str | os.PathLike[str]) -> str:
    return "file:" + str(Path(path).resolve())


class FileSource:
    """Reads `path` line by line in batches of `batch_size` records, so memory
    does not grow with the file. Positions are 1-based line numbers. Emits the
    data batches, then EOF, then completes; runs on the subscribing thread.

    >>> FileSource("events.csv").observable().subscribe(print)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int = 5000,
        clock_us: Callable[[], int] = wall_clock_us,
        start_position: int = 1,
        partition: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        # readlines() by size hint: about batch_size lines of ~80 bytes.
        self.batch_bytes = max(1, batch_size) * 80
        self.clock_us = clock_us
        self.start_position = start_position
        self.partition = partition or file_partition(path)
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def observable(self) -> reactivex.Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            try:
                with open_maybe_gzip(self.path) as f:
                    position = 1  # of the next line
                    while not self._stopped:
                        lines = f.readlines(self.batch_bytes)
                        if not lines:
                            break
                        first = position
                        position += len(lines)
                        if position <= self.start_position:
                            continue
                        if first < self.start_position:
                            lines = lines[self.start_position - first:]
                            first = self.start_position
                        records = list(map(bytes.rstrip, lines, repeat(b"\r\n")))
                        observer.on_next(RecordBatch.data(self.partition, records, range(first, position), self.clock_us()))
                    if self._stopped:
                        observer.on_completed()
                        return reactivex.disposable.Disposable()
                observer.on_next(RecordBatch.eof(self.partition))
                observer.on_completed()
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                observer.on_error(exc)
            return reactivex.disposable.Disposable()

        return reactivex.create(subscribe)
