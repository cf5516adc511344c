"""An independent oracle for the counting job, written for the tests.

It shares no code with `streams/`: its own timestamp reader (regex and
calendar arithmetic, no `fromisoformat`), its own CSV reading (a character
loop), and the rules of the issue applied one record at a time with unbounded
memory (it never forgets a duplicate key).

The events-csv rules it holds Rivulet to (issue 13): a record is one line
(`\n`, with any `\r` before it dropped; a UTF-8 BOM at the start of the file
is not data); the line is stripped of spaces and tabs, and is blank if nothing
is left; a line with any other C0 control character or DEL anywhere is
malformed (the HTTP collector refuses them too); a field is bare (no quote in
it) or wholly quoted with `""` for a quote; instants outside years 1 to 9999
in UTC are bad timestamps.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

_STAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d))?(?:\.(\d{1,9}))?(Z|([+-])(\d\d)(?::?(\d\d))?)?"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
FIRST_US = (date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * DAY
LAST_US = (date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * DAY - 1
HEADER = "customer_id,event_type,transaction_id,timestamp"


def stamp_to_us(text: str) -> int | None:
    """UTC epoch microseconds, or None when not a valid timestamp with an offset."""
    m = _STAMP.fullmatch(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, off, sign, oh, om = m.groups()
    if off is None:
        return None
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    h, mi, s = int(h), int(mi), int(s or 0)
    if h > 23 or mi > 59 or s > 59:
        return None
    micros = int((frac or "").ljust(6, "0")[:6])
    offset = 0
    if off != "Z":
        oh, om = int(oh), int(om or 0)
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (1 if sign == "+" else -1)
    us = ((days * 86400 + h * 3600 + mi * 60 + s) - offset) * 1_000_000 + micros
    return us if FIRST_US <= us <= LAST_US else None


@dataclass
class OracleResult:
    counts: dict[str, Counter] = field(default_factory=dict)  # rollup -> (window_start, key) -> n
    valid: int = 0
    duplicates: int = 0
    malformed: int = 0
    late: int = 0
    future: int = 0
    late_positions: list[int] = field(default_factory=list)
    malformed_positions: list[int] = field(default_factory=list)
    accepted: list[tuple[str, str, str, int]] = field(default_factory=list)  # keys of the counted events, in order
    accepted_positions: list[int] = field(default_factory=list)  # their positions


def csv_fields(line: str) -> list[str] | None:
    """The fields of one line, strictly: each bare (no quote) or wholly
    quoted, `""` a quote inside; None when the line is not that."""
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            value = []
            i += 1
            while True:
                if i >= n:
                    return None  # no closing quote
                if line[i] == '"':
                    if i + 1 < n and line[i + 1] == '"':
                        value.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                value.append(line[i])
                i += 1
            fields.append("".join(value))
        else:
            start = i
            while i < n and line[i] != ",":
                if line[i] == '"':
                    return None  # a quote in a bare field
                i += 1
            fields.append(line[start:i])
        if i == n:
            return fields
        if line[i] != ",":
            return None  # text after a closing quote
        i += 1


def has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def file_lines(data: bytes) -> list[bytes]:
    """A file's (decompressed) bytes as its lines, as `run --input` numbers
    them from 1: split at `\n`, `\r`s before it dropped, a BOM at the start
    dropped, no line after a final `\n`."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r") for line in lines]


def event_of_line(raw: str | bytes) -> tuple[str, str, str, int] | None | str:
    """(customer, type, transaction, µs) of one events-csv line, "" when it
    is blank or the header, None when it is not a valid record."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    line = raw.strip(" \t")
    if not line or line == HEADER:
        return ""
    if has_control(line):
        return None
    fields = csv_fields(line)
    if fields is None or len(fields) != 4 or not all(fields):
        return None
    t = stamp_to_us(fields[3])
    return None if t is None else (fields[0], fields[1], fields[2], t)


def run_oracle(
    lines: list[str] | list[bytes],
    lateness_us: int,
    rollups: dict[str, tuple[str, int]],
    now_us: int = 1 << 62,
) -> OracleResult:
    """`lines` of a file in order (position = index + 1; as text, or as
    bytes from `file_lines`); `rollups` name -> (field, window)."""
    result = OracleResult(counts={name: Counter() for name in rollups})
    newest: int | None = None
    seen: set[tuple] = set()
    for position, raw in enumerate(lines, start=1):
        if position == 1 and isinstance(raw, str):
            raw = raw.removeprefix("\ufeff")
        event = event_of_line(raw)
        if event == "":
            continue
        if event is None:
            result.malformed += 1
            result.malformed_positions.append(position)
            continue
        customer, etype, txn, t = event
        if t > now_us + DAY:
            result.future += 1
            continue
        if newest is not None and t < newest - lateness_us:
            result.late += 1
            result.late_positions.append(position)
            continue
        key = (customer, etype, txn, t)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        result.valid += 1
        result.accepted.append(key)
        result.accepted_positions.append(position)
        values = {"customer_id": customer, "event_type": etype}
        for name, (fname, size) in rollups.items():
            result.counts[name][(t - t % size, values[fname])] += 1
        newest = t if newest is None else max(newest, t)
    return result


DEFAULT_ROLLUPS = {"customer_hourly": ("customer_id", HOUR), "event_type_minutely": ("event_type", MINUTE)}
