"""The `gdelt-tsv` format: GDELT event rows, counted by country at the time
they arrive (a processing-time format).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streams.batches import ParsedBatch, RecordBatch
from streams.event_columns import EventColumns
from streams.events import Event, ParseError, Reason
from streams.per_record import CONTROL, DEFAULT_MAX_RECORD_BYTES, char_name, parse_each


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
        events = parse_each(out, batch.records, batch.positions, lambda text: self._parse_line(text, arrival_us), self.max_record_bytes)
        out.events = EventColumns.from_events(batch.partition, events)
        return out

    def _parse_line(self, text: str, arrival_us: int) -> Event:
        fields = text.split("\t")
        if len(fields) < 4:
            raise ParseError(Reason.MALFORMED, f"expected at least 4 tab-separated fields, got {len(fields)}")
        day, source, target, cameo = fields[0], fields[1].strip(), fields[2].strip(), fields[3].strip()
        if len(day) != 8 or not day.isdigit():
            raise ParseError(Reason.BAD_TIMESTAMP, f"day is not YYYYMMDD: {day[:16]!r}")
        control = CONTROL.search(source + target + cameo)
        if control:
            raise ParseError(Reason.MALFORMED, f"an actor or event code holds a control character "
                                               f"({char_name(control.group())})")
        countries = tuple(dict.fromkeys(code[:3] for code in (source, target) if code))
        if not countries:
            raise ParseError(Reason.MISSING_FIELD, "both actor codes are empty")
        digest = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        properties = {"country": countries, "source_actor": source, "target_actor": target, "day": day}
        return Event(source or target, cameo or "unknown", digest, arrival_us, properties)
