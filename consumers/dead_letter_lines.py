"""The dead-letter line: one NDJSON object per rejected record,
`{"reason", "error", "source", "position", "record"}`, written by the
dead-letter file (consumers/dead_letter_file.py) and read back by
`replay-dead-letter`.

A `late` letter also has `"late_by_us"`: how far its event was behind the
partition's watermark, in microseconds. Readers ignore fields they do not know
and lines without it (older files) stay valid.

The record is kept as text when it is valid UTF-8 without NUL bytes, otherwise
as base64 (`"encoding": "base64"`). A record longer than the line limit is cut
and flagged (`"truncated": true`, `"record_bytes": <original size>`).

Usage::

    line = dead_letter_line(letter, max_record_bytes=64 * 1024)
    record = decode_dead_letter_record(json.loads(line))
"""

from __future__ import annotations

import base64
import json

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
