"""What every record format shares: the per-record parse path and the checks
a record's fields pass.

Each parser reads the common rows of a batch as columns in native kernels
and sends every other record down the per-record path (`parse_each`): decode,
strip, skip blanks, parse one line, and dead-letter its error.
`clean_then_odd` merges the two back in position order.

>>> out = ParsedBatch.of(RecordBatch.data("f", [b"  ", b"\\xff"], [1, 2]))
>>> parse_each(out, out.source.records, out.source.positions, lambda text: None, DEFAULT_MAX_RECORD_BYTES)
[]
>>> out.blank, [d.reason.value for d in out.dead_letters]
(1, ['not utf-8'])
"""

from __future__ import annotations

import re
from itertools import compress
from operator import not_
from typing import Callable, Sequence

from streams.batches import ParsedBatch, RecordBatch
from streams.event_columns import EventColumns
from streams.events import DeadLetter, Event, ParseError, Reason

DEFAULT_MAX_RECORD_BYTES = 1 << 20

# What the HTTP collector refuses in an identifier (service/collector.py), and
# the file formats refuse in a record: C0 controls and DEL.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

LineParser = Callable[[str], "Event | None"]


def _decode(data: bytes, max_bytes: int) -> str:
    if len(data) > max_bytes:
        raise ParseError(Reason.OVERSIZE, f"record is {len(data)} bytes, the limit is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(Reason.NOT_UTF8, str(exc)) from None
    if "\x00" in text:
        raise ParseError(Reason.MALFORMED, "record holds NUL bytes")
    return text


def parse_each(out: ParsedBatch, records: Sequence[bytes], positions: Sequence[int], parse_line: LineParser,
               max_bytes: int, strip: str | None = None) -> list[Event]:
    """The general per-record path: decode, strip (`strip`: these characters,
    None: any whitespace), skip blanks, parse, dead-letter errors."""
    events: list[Event] = []
    partition = out.source.partition
    for data, position in zip(records, positions):
        try:
            text = _decode(data, max_bytes).strip(strip)
            if not text:
                out.blank += 1
                continue
            event = parse_line(text)
        except ParseError as exc:
            out.dead_letters.append(DeadLetter(exc.reason, str(exc), partition, position, data))
            continue
        if event is not None:
            event.partition = partition
            event.position = position
            events.append(event)
    return events


def mark_unclean(is_clean: list[bool], rows: Sequence[int]) -> None:
    """Mark rows, numbered among the clean lines, as not clean."""
    clean_indexes = list(compress(range(len(is_clean)), is_clean))
    for row in rows:
        is_clean[clean_indexes[row]] = False


def odd_rows(is_clean: list[bool]) -> list[int]:
    """The indexes of the rows not clean."""
    return list(compress(range(len(is_clean)), map(not_, is_clean)))


def clean_then_odd(batch: RecordBatch, columns: EventColumns, odd_rows: Sequence[int], parse_line: LineParser,
                   max_bytes: int, strip: str | None = None) -> ParsedBatch:
    """A batch's common rows, parsed as columns, with the other rows (their
    indexes in the batch: `odd_rows`, ascending) sent down the per-record
    path, merged back in position order."""
    out = ParsedBatch.of(batch)
    if odd_rows:
        records, positions = batch.records, batch.positions
        odd = parse_each(out, [records[i] for i in odd_rows], [positions[i] for i in odd_rows],
                         parse_line, max_bytes, strip)
        if odd:
            columns = EventColumns.concat(batch.partition, [columns, EventColumns.from_events(batch.partition, odd)])
    out.events = columns
    return out


def require_field(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParseError(Reason.MISSING_FIELD, f"field {name!r} is missing or empty")
    control = CONTROL.search(value)
    if control:
        raise ParseError(Reason.MALFORMED, f"field {name!r} holds a control character ({char_name(control.group())})")
    return value


def char_name(char: str) -> str:
    return f"U+{ord(char):04X}"
