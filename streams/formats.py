"""Record formats by name: one parser per format, each turning a
`RecordBatch` into a `ParsedBatch` of events and dead letters.

A parser is pure: no I/O, no clock of its own. Processing-time formats (GDELT)
take their time from the batch's `arrival_us`, which the source stamps with an
injectable clock. Each parses a whole micro-batch at once: per-event Rx
operator chains cost about 1 µs per operator per event.

>>> make_parser("ndjson").name
'ndjson'
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Callable, Protocol

from streams.batches import ParsedBatch, RecordBatch
from streams.csv_parser import EventsCsvParser
from streams.gdelt_parser import GdeltTsvParser
from streams.ndjson_parser import NdjsonParser
from streams.per_record import DEFAULT_MAX_RECORD_BYTES


class RecordParser(Protocol):
    name: str

    def parse_batch(self, batch: RecordBatch) -> ParsedBatch: ...


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
