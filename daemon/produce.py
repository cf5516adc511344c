"""`produce`: parse a source at the edge and send its valid events, as NDJSON,
to a transport; bad records go to the dead-letter output there and then."""

from __future__ import annotations

import json
import threading

import reactivex

from config.settings import Settings
from consumers.ports import DeadLetterSink
from producers.transports import open_writer
from streams.parse_records import parse_records
from streams.parsers import ParsedBatch, RecordParser


def produce(
    source: reactivex.Observable, parser: RecordParser, uri: str, dead_letters: DeadLetterSink, settings: Settings
) -> tuple[int, int]:
    writer = open_writer(uri, settings=settings)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=list).encode
    totals = {"sent": 0, "dead": 0}
    errors: list[BaseException] = []
    done = threading.Event()

    def on_next(parsed: ParsedBatch) -> None:
        if parsed.dead_letters:
            dead_letters.write(parsed.dead_letters)
            totals["dead"] += len(parsed.dead_letters)
        if parsed.events:
            totals["sent"] += writer.send([encode(e.to_record()).encode() for e in parsed.events])

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        done.set()

    source.pipe(parse_records(parser)).subscribe(on_next, on_error, done.set)
    done.wait()
    writer.close()
    dead_letters.close()
    if errors:
        raise errors[0]
    return totals["sent"], totals["dead"]
