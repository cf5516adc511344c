"""Dead letters as an NDJSON file: `{"reason", "error", "source", "position", "record"}`.

A `late` letter also has `"late_by_us"`: how far its event was behind the
partition's watermark, in microseconds. Readers ignore fields they do not know
and lines without it (older files) stay valid.

The record is kept as text when it is valid UTF-8 without NUL bytes, otherwise
as base64 (`"encoding": "base64"`). A record longer than the line limit is cut
and flagged (`"truncated": true`, `"record_bytes": <original size>`).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Sequence

from streams.events import DeadLetter

DEFAULT_MAX_RECORD_BYTES = 64 * 1024


def dead_letter_line(letter: DeadLetter, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> str:
    data = letter.record
    entry: dict[str, object] = {
        "reason": letter.reason.value,
        "error": letter.error,
        "source": letter.source,
        "position": letter.position,
    }
    if letter.late_by_us is not None:
        entry["late_by_us"] = letter.late_by_us
    if len(data) > max_record_bytes:
        entry["truncated"] = True
        entry["record_bytes"] = len(data)
        data = data[:max_record_bytes]
    try:
        text = data.decode("utf-8")
        if "\x00" in text:
            raise ValueError
        entry["record"] = text
    except (UnicodeDecodeError, ValueError):
        entry["record"] = base64.b64encode(data).decode("ascii")
        entry["encoding"] = "base64"
    return json.dumps(entry, ensure_ascii=False)


def decode_dead_letter_record(entry: dict) -> bytes:
    """The original record bytes of a dead-letter line (as far as kept)."""
    if entry.get("encoding") == "base64":
        return base64.b64decode(entry["record"])
    return str(entry["record"]).encode("utf-8")


class DeadLetterFile:
    """Appends dead letters to one NDJSON file; `flush()` makes them durable."""

    def __init__(self, path: str | os.PathLike[str], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_record_bytes = max_record_bytes
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.written = 0

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        text = "".join(dead_letter_line(letter, self.max_record_bytes) + "\n" for letter in letters)
        with self._lock:
            self._file.write(text)
            self.written += len(letters)

    def flush(self) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
