"""The `ndjson` format: one JSON object per line, extra fields kept as the
event's properties.
"""

from __future__ import annotations

import json
import json.scanner
import re
from dataclasses import dataclass
from datetime import tzinfo
from itertools import compress, repeat
from operator import add, eq, is_not, not_
from typing import Any

import polars as pl

from streams.batches import ParsedBatch, RecordBatch
from streams.event_columns import CORE_FIELDS, SCHEMA, EventColumns
from streams.events import Event, ParseError, Reason
from streams.per_record import CONTROL, DEFAULT_MAX_RECORD_BYTES, clean_then_odd, mark_unclean, odd_rows, require_field
from streams.timestamps import epoch_ms_to_us, parse_timestamp_column, parse_timestamp_us, timestamp_column_us

# The C JSON scanner itself: `json.loads` wraps it in Python code per call.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())

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
                if item is properties and CONTROL.search(name):
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
        columns, is_clean = self._clean_rows(batch)
        return clean_then_odd(batch, columns, odd_rows(is_clean), self._parse_line, self.max_record_bytes)

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
                good = list(map(bool.__and__, good, map(not_, map(CONTROL.search, map(str, column)))))
        stamps = core[3] if all(good) else [t if ok else "" for t, ok in zip(core[3], good)]  # "" is deferred
        times = parse_timestamp_column(stamps)
        good = list(map(bool.__and__, good, map(is_not, times, repeat(None))))
        if False in good:
            mark_unclean(is_clean, list(compress(range(len(good)), map(not_, good))))
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
        customer_id = require_field(obj.pop("customer_id", None), "customer_id")
        event_type = require_field(obj.pop("event_type", None), "event_type")
        transaction_id = require_field(obj.pop("transaction_id", None), "transaction_id")
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
