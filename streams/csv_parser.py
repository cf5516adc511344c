"""The `events-csv` format: `customer_id,event_type,transaction_id,timestamp`,
a header optional, fields read strictly (`csv_fields`).

>>> EventsCsvParser().parse_batch(RecordBatch.data("f", [CSV_HEADER.encode()], [1])).events.frame.height
0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

import polars as pl

from streams.batches import ParsedBatch, RecordBatch
from streams.event_columns import CORE_FIELDS, POSITION, SCHEMA, TIME, EventColumns, filter_rows, run_plan
from streams.events import NO_PROPERTIES, Event, ParseError, Reason
from streams.per_record import CONTROL, DEFAULT_MAX_RECORD_BYTES, char_name, clean_then_odd, require_field
from streams.timestamps import COMMON_STAMP, parse_timestamp_us, timestamp_column_us

CSV_HEADER = "customer_id,event_type,transaction_id,timestamp"

# events-csv, one field: wholly quoted (`""` for a quote), or bare, without a quote.
_CSV_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^",]*)')
CSV_STRIP = " \t"
"""What an events-csv line is stripped of at both ends (a line of only these is blank)."""


def _utf8_or_none(record: bytes) -> str | None:
    try:
        return record.decode()
    except UnicodeDecodeError:
        return None


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
    control = CONTROL.search(text)
    if control:
        raise ParseError(Reason.MALFORMED, f"control character {char_name(control.group())} at character "
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
_TEXT, _COMMON, _FIELDS = "_text", "_common", "_fields"
_SCHEMA_COLUMNS = list(SCHEMA)


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
        return clean_then_odd(batch, *self._clean_rows(batch), self._parse_line, self.max_record_bytes, CSV_STRIP)

    def _clean_rows(self, batch: RecordBatch) -> tuple[EventColumns, list[int]]:
        """The common rows of a batch as columns, and the indexes of the other
        records.

        Common: valid UTF-8 within the size limit, four non-empty fields, no
        quote, no control character, no space at either end, not the
        header, and a timestamp of the common shape
        (`timestamp_column_us`). Every step is a native kernel over the whole
        batch, all in one plan. Every other record takes the general path,
        which also words its error.
        """
        records = pl.Series(batch.records, dtype=pl.Binary)
        try:
            texts = records.cast(pl.String)
        except pl.exceptions.ComputeError:  # not UTF-8: find those records, once, and leave them out
            texts = pl.Series([_utf8_or_none(r) for r in batch.records], dtype=pl.String)
        # One plan, one native call: split and check; then the time.
        plan = pl.DataFrame([texts.alias(_TEXT), pl.Series(POSITION, batch.positions, dtype=pl.Int64)]).lazy()
        plan = plan.with_columns(pl.col(_TEXT).str.split_exact(",", 3).alias(_FIELDS)).with_columns(
            pl.col(_FIELDS).struct.unnest())
        fields = [pl.col(f"field_{i}").alias(name) for i, name in enumerate(CORE_FIELDS)]
        frame = run_plan(plan.select(*fields, "field_3", POSITION, (
            pl.col(_TEXT).str.contains(_COMMON_CSV_ROW)
            & (pl.col(_TEXT).str.len_bytes() <= self.max_record_bytes)  # the text is the record's bytes
            & (pl.col("field_0") != "customer_id")  # the header, or a record the general path must judge
        ).fill_null(False).alias(_COMMON)))
        times = timestamp_column_us(frame.get_column("field_3"), frame.get_column(_COMMON))
        frame = frame.with_columns(times.alias(TIME))
        clean = times.is_not_null()
        if clean.all():
            return EventColumns(batch.partition, frame[_SCHEMA_COLUMNS]), []
        return EventColumns(batch.partition, filter_rows(frame[_SCHEMA_COLUMNS], clean)), (~clean).arg_true().to_list()

    def _parse_line(self, text: str) -> Event | None:
        fields = csv_fields(text)
        if len(fields) != 4:
            raise ParseError(Reason.MALFORMED, f"expected 4 fields, got {len(fields)}")
        customer_id, event_type, transaction_id, timestamp = fields
        if customer_id == "customer_id" and text == CSV_HEADER:
            return None
        require_field(customer_id, "customer_id")
        require_field(event_type, "event_type")
        require_field(transaction_id, "transaction_id")
        require_field(timestamp, "timestamp")
        return Event(customer_id, event_type, transaction_id, parse_timestamp_us(timestamp.strip(), self.naive_zone), NO_PROPERTIES)
