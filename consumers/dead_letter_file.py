"""Dead letters as an NDJSON file, one line per letter in the format of
consumers/dead_letter_lines.py; `flush()` makes them durable.

Usage::

    letters = DeadLetterFile("data/dead_letters.ndjson", max_record_bytes=64 * 1024)
    letters.write([letter]); letters.flush()
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

from consumers.dead_letter_lines import DEFAULT_MAX_RECORD_BYTES, dead_letter_line
from streams.events import DeadLetter


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
