"""A file as an observable of micro-batches (replay and backfill).

A file's partition is named by its content (`file:sha256:<digest>` of its
bytes as stored), not by its path: the same bytes run again from another path
are the same partition, so the count store's max-upsert keeps them counted
once; a different file is a different partition and adds.

Gzip is detected by content and read member after member. Damage (a
truncated stream, corrupt data, a bad checksum, bytes after the last member
that are not another member) ends the input there: every complete line
before it is read, the source ends normally (EOF, so every window is
flushed), and `damage` says what and at which byte of the file, for the
command to report and exit 2.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from itertools import repeat
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import reactivex
from reactivex import abc

from producers.transport import wall_clock_us
from streams.batches import RecordBatch

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_READ_BYTES = 1 << 16  # compressed bytes fed to zlib at a time


def file_partition(path: str | os.PathLike[str]) -> str:
    """`file:sha256:<hex>` of the file's bytes: its identity wherever it lies."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"file:sha256:{digest}"


class _Damage(Exception):
    def __init__(self, offset: int, what: str) -> None:
        super().__init__(what)
        self.offset = offset
        self.what = what


def _gzip_chunks(f: BinaryIO, max_out: int) -> Iterator[bytes]:
    """The decompressed bytes of gzip members one after another, at most
    `max_out` at a time (a small file cannot expand without bound in memory).
    Raises `_Damage` with the offset in the file where the data went wrong,
    after yielding everything zlib decoded before that byte."""
    fed = 0  # bytes of the file consumed so far
    pending = b""
    while True:
        # Between members: zero bytes are padding (gzip(1) reads them so), the end of the file ends.
        while True:
            if not pending:
                pending = f.read(_READ_BYTES)
                if not pending:
                    return
            stripped = pending.lstrip(b"\x00")
            fed += len(pending) - len(stripped)
            pending = stripped
            if pending:
                break
        if len(pending) < 2:
            pending += f.read(_READ_BYTES)
        if pending[:2] != GZIP_MAGIC:
            raise _Damage(fed, "bytes after the last gzip member are not another member (trailing garbage)")
        inflater = zlib.decompressobj(31)
        while not inflater.eof:
            if not pending:
                pending = f.read(_READ_BYTES)
                if not pending:
                    raise _Damage(fed, "the gzip data ends before the end of its stream (truncated)")
            before = inflater.copy()  # to find the exact byte of an error
            try:
                out = inflater.decompress(pending, max_out)
            except zlib.error as exc:
                yield from _up_to_error(before, pending, fed, max_out, str(exc))
                raise AssertionError("unreachable")  # _up_to_error raises
            fed += len(pending) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if out:
                yield out
        # The member is complete, its CRC and length checked.


def _up_to_error(inflater, data: bytes, fed: int, max_out: int, error: str) -> Iterator[bytes]:
    """Replay `data` one byte at a time from a copy of the state before it:
    yield what decodes before the bad byte, then raise `_Damage` at it."""
    out: list[bytes] = []
    size = 0
    for index in range(len(data)):
        try:
            piece = inflater.decompress(data[index:index + 1])  # one byte expands to a few KiB at most
        except zlib.error:
            if out:
                yield b"".join(out)
            raise _Damage(fed + index, f"damaged gzip data ({error})") from None
        if piece:
            out.append(piece)
            size += len(piece)
            if size >= max_out:
                yield b"".join(out)
                out, size = [], 0
        if inflater.eof:
            fed += index + 1
            break
    if out:
        yield b"".join(out)
    raise _Damage(fed, f"damaged gzip data ({error})")


def _coalesced(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """`chunks` joined up to about `size` bytes (many small gzip members make
    small chunks), what came before a `_Damage` included."""
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in chunks:
            parts.append(chunk)
            total += len(chunk)
            if total >= size:
                yield b"".join(parts)
                parts, total = [], 0
    except _Damage:
        if parts:
            yield b"".join(parts)
        raise
    if parts:
        yield b"".join(parts)


class FileSource:
    """Reads `path` line by line in batches of about `batch_size` records, so
    memory does not grow with the file. Positions are 1-based line numbers.
    Emits the data batches, then EOF, then completes; runs on the subscribing
    thread. A UTF-8 byte order mark at the start of the file is not data.

    >>> FileSource("events.csv").batches().subscribe(print)
    """

    bounded = True  # a file ends

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
        # Read by size: about batch_size lines of ~80 bytes.
        self.batch_bytes = max(1, batch_size) * 80
        self.clock_us = clock_us
        self.start_position = start_position
        self.partition = partition or file_partition(path)
        self.damage: str | None = None  # set when a compressed input ended in damage
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def _chunks(self, f: BinaryIO) -> Iterator[bytes]:
        if f.peek(2)[:2] == GZIP_MAGIC:
            return _coalesced(_gzip_chunks(f, self.batch_bytes), self.batch_bytes)
        return iter(lambda: f.read(self.batch_bytes), b"")

    def _line_batches(self, f: BinaryIO) -> Iterator[list[bytes]]:
        """Lists of complete lines (without their `\\n`), in order. On damage,
        the line it cut is dropped and `self.damage` is set."""
        tail = b""
        lines_read = 0
        try:
            for chunk in self._chunks(f):
                data = tail + chunk if tail else chunk
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if cut:
                    lines = data[:cut - 1].split(b"\n")
                    if not lines_read:
                        lines[0] = lines[0].removeprefix(UTF8_BOM)
                    lines_read += len(lines)
                    yield lines
        except _Damage as damage:
            cut_line = f"; line {lines_read + 1} was cut there and is not read" if tail else ""
            self.damage = (f"{self.path}: {damage.what} at byte {damage.offset:,} of the file; the {lines_read:,} "
                           f"complete line(s) before it were read{cut_line}")
            return
        if tail:
            yield [tail.removeprefix(UTF8_BOM) if not lines_read else tail]

    def batches(self) -> reactivex.Observable:
        def subscribe(observer: abc.ObserverBase, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            try:
                with open(self.path, "rb") as f:
                    position = 1  # of the next line
                    for lines in self._line_batches(f):
                        if self._stopped:
                            break
                        first = position
                        position += len(lines)
                        if position <= self.start_position:
                            continue
                        if first < self.start_position:
                            lines = lines[self.start_position - first:]
                            first = self.start_position
                        records = list(map(bytes.rstrip, lines, repeat(b"\r")))
                        observer.on_next(RecordBatch.data(self.partition, records, range(first, position), self.clock_us()))
                    if self._stopped:
                        observer.on_completed()
                        return reactivex.disposable.Disposable()
                observer.on_next(RecordBatch.eof(self.partition))
                observer.on_completed()
            except OSError as exc:
                observer.on_error(exc)
            return reactivex.disposable.Disposable()

        return reactivex.create(subscribe)


def open_maybe_gzip(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for binary reading, decompressing it if it is gzip (by its
    magic bytes, not its name). For other readers than `FileSource` (which
    reads gzip itself, to stop at damage with the byte offset)."""
    import gzip

    f = open(path, "rb")
    if f.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f
