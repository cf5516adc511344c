"""`produce`: parse a source at the edge and send its valid events, as NDJSON,
to a transport; bad records go to the dead-letter output there and then."""

from __future__ import annotations

import threading

import reactivex

from consumers.ports import DeadLetterSink
from producers.transport import TransportWriter, take_rejected
from streams.batches import ParsedBatch
from streams.events import DeadLetter, Reason
from streams.formats import RecordParser
from streams.parse_records import parse_records


def produce(
    source: reactivex.Observable,
    parser: RecordParser,
    writer: TransportWriter,
    dead_letters: DeadLetterSink,
) -> tuple[int, int]:
    """(events sent, records dead-lettered); closes `writer` and `dead_letters`."""
    # Writers that can refuse a record outright (Kinesis: over 1 MiB) hand it back
    # through `take_rejected`; it is dead-lettered like a bad input record.
    totals = {"sent": 0, "dead": 0}
    errors: list[BaseException] = []
    done = threading.Event()

    def on_next(parsed: ParsedBatch) -> None:
        if parsed.dead_letters:
            dead_letters.write(parsed.dead_letters)
            totals["dead"] += len(parsed.dead_letters)
        if parsed.events:
            totals["sent"] += writer.send([e.to_json_line()[:-1] for e in parsed.events])
            rejected = [
                DeadLetter(Reason(r.reason), r.error, parsed.partition, parsed.events[r.index].position, r.record)
                for r in take_rejected(writer)
            ]
            if rejected:
                dead_letters.write(rejected)
                totals["dead"] += len(rejected)

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
