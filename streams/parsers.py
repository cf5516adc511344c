"""Record formats: one parser per format, each turning a `RecordBatch` into
events and dead letters.

A parser is pure: no I/O, no clock of its own. Processing-time formats (GDELT)
take their time from the batch's `arrival_us`, which the source stamps with an
injectable clock.

Each parser loops over a whole micro-batch in plain Python: per-event Rx
operator chains cost about 1 µs per operator per event, a loop does not.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
import re
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, eq, is_not, not_
from datetime import tzinfo
from typing import Any, Callable, Protocol, Sequence

import polars as pl

from streams.batches import ParsedBatch, RecordBatch
from streams.event_columns import CORE_FIELDS, SCHEMA, EventColumns
from streams.events import NO_PROPERTIES, DeadLetter, Event, ParseError, Reason
from streams.timestamps import (COMMON_STAMP, epoch_ms_to_us, parse_timestamp_column, parse_timestamp_us,
                                timestamp_column_us)

CSV_HEADER = "customer_id,event_type,transaction_id,timestamp"
DEFAULT_MAX_RECORD_BYTES = 1 << 20


class RecordParser(Protocol):
    name: str

    def parse_batch(self, batch: RecordBatch) -> ParsedBatch: ...


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


LineParser = Callable[[str], "Event | None"]

# The C JSON scanner itself: `json.loads` wraps it in Python code per call.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())


def _run(out: ParsedBatch, records: Sequence[bytes], positions: Sequence[int], parse_line: LineParser, max_bytes: int,
         strip: str | None = None) -> list[Event]:
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


def _fields_of(records: Sequence[bytes], is_clean: list[bool]) -> list[str]:
    """Every field of the clean records, four per record, in one flat list:
    one join, one decode and one split for the whole batch."""
    kept = records if all(is_clean) else list(compress(records, is_clean))
    return b",".join(kept).decode().split(",") if kept else []


def _rows_with_empty_field_or_header(fields: list[str]) -> list[int]:
    rows = []
    if "" in fields:
        rows.extend(at // 4 for at in _indexes(fields, ""))
    if "customer_id" in fields:
        rows.extend(at // 4 for at in _indexes(fields, "customer_id") if at % 4 == 0)
    return rows


def _indexes(items: list[str], value: str) -> list[int]:
    found = []
    at = -1
    try:
        while True:
            at = items.index(value, at + 1)
            found.append(at)
    except ValueError:
        return found


def _mark_unclean(is_clean: list[bool], rows: Sequence[int]) -> None:
    """Mark rows, numbered among the clean lines, as not clean."""
    clean_indexes = list(compress(range(len(is_clean)), is_clean))
    for row in rows:
        is_clean[clean_indexes[row]] = False


def _clean_then_odd(batch: RecordBatch, columns: EventColumns, is_clean: list[bool], parse_line: LineParser,
                    max_bytes: int, strip: str | None = None) -> ParsedBatch:
    """A batch's common rows, parsed as columns, with the other rows sent
    down the per-record path, merged back in position order."""
    out = ParsedBatch.of(batch)
    if len(columns) < len(batch.records):
        is_odd = list(map(not_, is_clean))
        odd = _run(out, list(compress(batch.records, is_odd)), list(compress(batch.positions, is_odd)), parse_line,
                   max_bytes, strip)
        if odd:
            columns = EventColumns.concat(batch.partition, [columns, EventColumns.from_events(batch.partition, odd)])
    out.events = columns
    return out


def _utf8_or_none(record: bytes) -> str | None:
    try:
        return record.decode()
    except UnicodeDecodeError:
        return None


def _require(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParseError(Reason.MISSING_FIELD, f"field {name!r} is missing or empty")
    control = _CONTROL.search(value)
    if control:
        raise ParseError(Reason.MALFORMED, f"field {name!r} holds a control character ({_char_name(control.group())})")
    return value


# What the HTTP collector refuses in an identifier (service/collector.py), and
# the file formats refuse in a record: C0 controls and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# events-csv, one field: wholly quoted (`""` for a quote), or bare, without a quote.
_CSV_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^",]*)')
CSV_STRIP = " \t"
"""What an events-csv line is stripped of at both ends (a line of only these is blank)."""


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X}"


def csv_fields(text: str) -> list[str]:
    '''The fields of one events-csv line, read strictly (RFC 4180 on one
    line): a field is bare, without a quote, or wholly quoted, with `""` for
    a quote inside. A record is one line: a line break inside a quoted field
    is refused like every control character, so each line of such a field
    fails on its own (unterminated quote, quote in a bare field) and no part
    of it can pass for a record. Raises `ParseError` (malformed).

    >>> csv_fields('"acme, inc",view,"say ""hi""",2021-03-01T00:00:00Z')
    ['acme, inc', 'view', 'say "hi"', '2021-03-01T00:00:00Z']
    '''
    control = _CONTROL.search(text)
    if control:
        raise ParseError(Reason.MALFORMED, f"control character {_char_name(control.group())} at character "
                                           f"{control.start() + 1}: refused in every field, as over HTTP")
    fields: list[str] = []
    at, end = 0, len(text)
    while True:
        match = _CSV_FIELD.match(text, at)
        assert match is not None  # the bare alternative matches the empty string
        quoted, bare = match.groups()
        fields.append(bare if quoted is None else quoted.replace('""', '"'))
        at = match.end()
        if at == end:
            return fields
        if text[at] == ",":
            at += 1
            continue
        if quoted is not None:
            problem = "text after the closing quote"
        elif bare:
            problem = "a quote inside a bare field (quote the whole field, and double the quote)"
        else:
            problem = "a quoted field without its closing quote (a field cannot hold a line break)"
        raise ParseError(Reason.MALFORMED, f"bad CSV: {problem}, in field {len(fields)} at character {at + 1}")


# The common row, as one native regex: four fields, none empty, without a
# quote or a control character, no space at either end, and a timestamp of
# the common shape. Every other record takes the per-record path.
_BARE = r'[^",\x00-\x1f\x7f]'
_COMMON_CSV_ROW = rf'^[^",\x00-\x1f\x7f ]{_BARE}*,{_BARE}+,{_BARE}+,{COMMON_STAMP}$'


@dataclass
class EventsCsvParser:
    """`customer_id,event_type,transaction_id,timestamp`, header optional.

    >>> p = EventsCsvParser()
    >>> b = RecordBatch.data("f", [b"c1,click,t1,2021-03-01 00:01:11.055+00"], [1])
    >>> p.parse_batch(b).events[0].event_time_us
    1614556871055000
    """

    naive_zone: tzinfo | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    name: str = "events-csv"

    def parse_batch(self, batch: RecordBatch) -> ParsedBatch:
        return _clean_then_odd(batch, *self._clean_rows(batch), self._parse_line, self.max_record_bytes, CSV_STRIP)

    def _clean_rows(self, batch: RecordBatch) -> tuple[EventColumns, list[bool]]:
        """The common rows of a batch as columns, and which records they were.

        Common: valid UTF-8 within the size limit, four non-empty fields, no
        quote, no control character, no space at either end, not the
        header, and a timestamp of the common shape
        (`timestamp_column_us`). Every step is a native kernel over the whole
        batch. Every other record takes the general path, which also words
        its error.
        """
        records = pl.Series(batch.records, dtype=pl.Binary)
        try:
            texts = records.cast(pl.String)
        except pl.exceptions.ComputeError:  # not UTF-8: find those records, once, and leave them out
            texts = pl.Series([_utf8_or_none(r) for r in batch.records], dtype=pl.String)
        common = texts.str.contains(_COMMON_CSV_ROW)
        fields = texts.str.split_exact(",", 3).struct.unnest()
        c, e, x, stamp = (fields[name] for name in fields.columns)
        times = timestamp_column_us(stamp, common)
        clean = (
            times.is_not_null()
            & (records.bin.size() <= self.max_record_bytes)
            & (c != "customer_id")  # the header, or a record the general path must judge
        ).fill_null(False)
        frame = pl.DataFrame([c, e, x, times, pl.Series(batch.positions, dtype=pl.Int64)],
                             schema=list(SCHEMA)).filter(clean)
        return EventColumns(batch.partition, frame), clean.to_list()

    def _parse_line(self, text: str) -> Event | None:
        fields = csv_fields(text)
        if len(fields) != 4:
            raise ParseError(Reason.MALFORMED, f"expected 4 fields, got {len(fields)}")
        customer_id, event_type, transaction_id, timestamp = fields
        if customer_id == "customer_id" and text == CSV_HEADER:
            return None
        _require(customer_id, "customer_id")
        _require(event_type, "event_type")
        _require(transaction_id, "transaction_id")
        _require(timestamp, "timestamp")
        return Event(customer_id, event_type, transaction_id, parse_timestamp_us(timestamp.strip(), self.naive_zone), NO_PROPERTIES)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_encode_json_check = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode

# `Event.to_json_line` of an event without properties, fields without
# escapes or control characters (anything else takes the Python paths).
_JSON_TEXT = r'"([^"\\\x00-\x1f\x7f]+)"'
_CANONICAL_NDJSON = (rf'^\{{"v":1,"customer_id":{_JSON_TEXT},"event_type":{_JSON_TEXT},'
                     rf'"transaction_id":{_JSON_TEXT},"timestamp":{_JSON_TEXT}\}}$')


def _check_properties(properties: dict[str, Any]) -> None:
    """What the HTTP collector refuses in properties (service/collector.py,
    service/bodies.py): a control character in a field name, a NUL in a
    text at any depth."""
    stack: list[Any] = [properties]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, value in item.items():
                if item is properties and _CONTROL.search(name):
                    raise ParseError(Reason.MALFORMED, f"field name {name[:64]!r} holds a control character")
                stack.append(name)
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            raise ParseError(Reason.MALFORMED, "a text holds a NUL character (\\u0000)")


@dataclass
class NdjsonParser:
    """One JSON object per line; extra properties are kept.

    `timestamp` is an ISO 8601 string or integer epoch milliseconds. The schema
    version field `v` that the daemon writes is accepted and not kept as a
    property.
    """

    naive_zone: tzinfo | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    name: str = "ndjson"

    def parse_batch(self, batch: RecordBatch) -> ParsedBatch:
        return _clean_then_odd(batch, *self._clean_rows(batch), self._parse_line, self.max_record_bytes)

    def _clean_rows(self, batch: RecordBatch) -> tuple[EventColumns, list[bool]]:
        """The common records as columns, and which records they were.

        Records exactly as the daemon writes them (`Event.to_json_line`: the
        spool, Kinesis, SQS and the collector) are read by native kernels: one
        regex takes the four fields, which hold no escape or control
        character, so their text is their value. The rest take the Python
        column path (`_python_rows`), and what that leaves, the per-record one.
        """
        records = pl.Series(batch.records, dtype=pl.Binary)
        try:
            texts = records.cast(pl.String)
        except pl.exceptions.ComputeError:  # not UTF-8: all by the Python paths
            return self._python_rows(batch)
        fields = texts.str.extract_groups(_CANONICAL_NDJSON).struct.unnest()
        c, e, x, stamp = (fields[name] for name in fields.columns)
        times = timestamp_column_us(stamp)
        canonical = (times.is_not_null() & (records.bin.size() <= self.max_record_bytes)).fill_null(False)
        frame = pl.DataFrame([c, e, x, times, pl.Series(batch.positions, dtype=pl.Int64)],
                             schema=list(SCHEMA)).filter(canonical)
        native = EventColumns(batch.partition, frame)
        if canonical.all():
            return native, [True] * len(batch.records)
        rest = (~canonical).arg_true().to_list()
        others, others_clean = self._python_rows(RecordBatch.data(
            batch.partition, [batch.records[i] for i in rest], [batch.positions[i] for i in rest]))
        is_clean = canonical.to_list()
        for index, ok in zip(rest, others_clean):
            is_clean[index] = ok
        return EventColumns.concat(batch.partition, [native, others]), is_clean

    def _python_rows(self, batch: RecordBatch) -> tuple[EventColumns, list[bool]]:
        """The common records as columns, and which records they were.

        Common: a JSON object alone on its line (no padding), with non-empty
        string core fields, an ISO string timestamp with an offset, and no
        other field than `v`. The JSON of the whole batch is read by the C
        scanner mapped over the records, and each field is taken as a column
        (`map(dict.get, ...)`). Every other record takes the general path.
        """
        records = batch.records
        n = len(records)
        texts: list[str] = []
        joined = ""
        if max(map(len, records), default=0) <= self.max_record_bytes:
            try:
                joined = b"\n".join(records).decode()
                texts = joined.split("\n")
            except UnicodeDecodeError:
                pass
        if len(texts) != n:  # undecodable, or a record holds a newline: all on their own
            return EventColumns.empty(batch.partition), [False] * n
        if _SURROGATE_ESCAPE.search(joined):
            # A \uD800-\uDFFF escape may be a lone surrogate, which no
            # column, file or store can hold: such records go on their own.
            texts = ["" if _SURROGATE_ESCAPE.search(t) else t for t in texts]
        scanned: list[Any] = []
        while len(scanned) < n:
            try:
                # A StopIteration from the scanner (nothing to read) ends the
                # map early; an error raises. Either way the record at
                # len(scanned) failed, and what came before it stays.
                scanned.extend(map(_scan_json, texts[len(scanned):], repeat(0)))
            except (ValueError, RecursionError):
                pass
            if len(scanned) < n:
                scanned.append((None, -1))
        objects, ends = zip(*scanned) if scanned else ((), ())
        is_clean = list(map(eq, ends, map(len, texts)))  # the whole line is one value
        is_clean = list(map(bool.__and__, is_clean, map(isinstance, objects, repeat(dict))))
        objects = list(compress(objects, is_clean))
        core = [list(map(dict.get, objects, repeat(name))) for name in (*CORE_FIELDS, "timestamp")]
        # Only the core fields and `v`, each core field a non-empty string:
        sizes = list(map(len, objects))
        expected = list(map(add, repeat(4), map(dict.__contains__, objects, repeat("v"))))
        good = list(map(eq, sizes, expected))
        for column in core:
            good = list(map(bool.__and__, good, map(isinstance, column, repeat(str))))
            if "" in column:
                good = list(map(bool.__and__, good, map(bool, column)))
        if "\\" in joined or "\x7f" in joined:  # a control character in a JSON text is escaped, or DEL: on their own
            for column in core[:3]:
                good = list(map(bool.__and__, good, map(not_, map(_CONTROL.search, map(str, column)))))
        stamps = core[3] if all(good) else [t if ok else "" for t, ok in zip(core[3], good)]  # "" is deferred
        times = parse_timestamp_column(stamps)
        good = list(map(bool.__and__, good, map(is_not, times, repeat(None))))
        if False in good:
            _mark_unclean(is_clean, list(compress(range(len(good)), map(not_, good))))
            core = [list(compress(column, good)) for column in core[:3]]
            times = list(compress(times, good))
        positions = batch.positions if all(is_clean) else list(compress(batch.positions, is_clean))
        return EventColumns.from_lists(batch.partition, *core[:3], times, positions), is_clean

    def _parse_line(self, text: str) -> Event:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ParseError(Reason.MALFORMED, f"bad JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ParseError(Reason.MALFORMED, f"expected a JSON object, got {type(obj).__name__}")
        if _SURROGATE_ESCAPE.search(text):
            try:
                _encode_json_check(obj).encode()
            except UnicodeEncodeError:
                raise ParseError(Reason.NOT_UTF8, "a JSON string holds a lone surrogate (\\uD800-\\uDFFF), "
                                                  "which is not Unicode text") from None
        customer_id = _require(obj.pop("customer_id", None), "customer_id")
        event_type = _require(obj.pop("event_type", None), "event_type")
        transaction_id = _require(obj.pop("transaction_id", None), "transaction_id")
        timestamp = obj.pop("timestamp", None)
        obj.pop("v", None)
        if obj and ("\\" in text or "\x7f" in text):  # a control character in JSON text is escaped, or DEL
            _check_properties(obj)
        if isinstance(timestamp, str):
            event_time_us = parse_timestamp_us(timestamp, self.naive_zone)
        elif isinstance(timestamp, int) and not isinstance(timestamp, bool):
            event_time_us = epoch_ms_to_us(timestamp)
        elif timestamp is None:
            raise ParseError(Reason.MISSING_FIELD, "field 'timestamp' is missing")
        else:
            raise ParseError(Reason.BAD_TIMESTAMP, f"timestamp must be an ISO string or epoch ms, got {timestamp!r}")
        return Event(customer_id, event_type, transaction_id, event_time_us, obj)


@dataclass
class GdeltTsvParser:
    """GDELT event rows (tab-separated, no header), keyed by country.

    Columns used: 0 the day (`YYYYMMDD`), 1 the Source actor code, 2 the Target
    actor code, 3 the CAMEO event code. An actor's country is the first three
    letters of its code; `country` holds the distinct countries of the event (one
    when both actors share it), so `country_minutely` counts an event once per
    country. GDELT rows have no id and day granularity, so:
    - the event time is the arrival (processing) time of the batch;
    - the transaction id is a digest of the whole row: an identical row is a
      duplicate while its window is open.
    """

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    name: str = "gdelt-tsv"

    def parse_batch(self, batch: RecordBatch) -> ParsedBatch:
        arrival_us = batch.arrival_us
        out = ParsedBatch.of(batch)
        events = _run(out, batch.records, batch.positions, lambda text: self._parse_line(text, arrival_us), self.max_record_bytes)
        out.events = EventColumns.from_events(batch.partition, events)
        return out

    def _parse_line(self, text: str, arrival_us: int) -> Event:
        fields = text.split("\t")
        if len(fields) < 4:
            raise ParseError(Reason.MALFORMED, f"expected at least 4 tab-separated fields, got {len(fields)}")
        day, source, target, cameo = fields[0], fields[1].strip(), fields[2].strip(), fields[3].strip()
        if len(day) != 8 or not day.isdigit():
            raise ParseError(Reason.BAD_TIMESTAMP, f"day is not YYYYMMDD: {day[:16]!r}")
        control = _CONTROL.search(source + target + cameo)
        if control:
            raise ParseError(Reason.MALFORMED, f"an actor or event code holds a control character "
                                               f"({_char_name(control.group())})")
        countries = tuple(dict.fromkeys(code[:3] for code in (source, target) if code))
        if not countries:
            raise ParseError(Reason.MISSING_FIELD, "both actor codes are empty")
        digest = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        properties = {"country": countries, "source_actor": source, "target_actor": target, "day": day}
        return Event(source or target, cameo or "unknown", digest, arrival_us, properties)


PARSERS: dict[str, Callable[..., RecordParser]] = {
    "events-csv": EventsCsvParser,
    "ndjson": NdjsonParser,
    "gdelt-tsv": GdeltTsvParser,
}

PROCESSING_TIME_FORMATS = frozenset({"gdelt-tsv"})


def make_parser(name: str, naive_zone: tzinfo | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> RecordParser:
    try:
        factory = PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}: expected one of {', '.join(PARSERS)}") from None
    if name in PROCESSING_TIME_FORMATS:
        return factory(max_record_bytes=max_record_bytes)
    return factory(naive_zone=naive_zone, max_record_bytes=max_record_bytes)
