"""An independent oracle for the counting job, written for the tests.

It shares no code with `streams/`: its own timestamp reader (regex and
calendar arithmetic, no `fromisoformat`), its own CSV handling, and the rules of
the issue applied one record at a time with unbounded memory (it never forgets
a duplicate key).
"""

from __future__ import annotations

import csv
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
    return ((days * 86400 + h * 3600 + mi * 60 + s) - offset) * 1_000_000 + micros


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


def csv_fields(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None


def run_oracle(
    lines: list[str],
    lateness_us: int,
    rollups: dict[str, tuple[str, int]],
    now_us: int = 1 << 62,
) -> OracleResult:
    """`lines` in order (position = index + 1); `rollups` name -> (field, window)."""
    result = OracleResult(counts={name: Counter() for name in rollups})
    newest: int | None = None
    seen: set[tuple] = set()
    for position, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = csv_fields(line)
        if fields == ["customer_id", "event_type", "transaction_id", "timestamp"]:
            continue
        t = stamp_to_us(fields[3]) if fields and len(fields) == 4 and all(fields) else None
        if t is None:
            result.malformed += 1
            result.malformed_positions.append(position)
            continue
        customer, etype, txn = fields[0], fields[1], fields[2]
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
        values = {"customer_id": customer, "event_type": etype}
        for name, (fname, size) in rollups.items():
            result.counts[name][(t - t % size, values[fname])] += 1
        newest = t if newest is None else max(newest, t)
    return result


DEFAULT_ROLLUPS = {"customer_hourly": ("customer_id", HOUR), "event_type_minutely": ("event_type", MINUTE)}
