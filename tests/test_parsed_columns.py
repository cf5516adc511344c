from streams.batches import RecordBatch
from streams.csv_parser import EventsCsvParser
from streams.ndjson_parser import NdjsonParser
from streams.parsed_columns import from_columns, to_columns


def test_round_trip_keeps_events_dead_letters_and_counts():
    lines = [b"c1,click,t1,2021-03-01T00:00:00Z", b"", b"bad", b"c2,view,t2,2021-03-01 01:00:00.5+01"]
    parsed = EventsCsvParser().parse_batch(RecordBatch.data("f", lines, range(10, 14)))
    back = from_columns(to_columns(parsed))
    assert [(e.customer_id, e.event_type, e.transaction_id, e.event_time_us, e.position, e.partition) for e in back.events] == [
        (e.customer_id, e.event_type, e.transaction_id, e.event_time_us, e.position, e.partition) for e in parsed.events]
    assert back.dead_letters == parsed.dead_letters
    assert (back.blank, len(back.source.records), list(back.source.positions)) == (1, 4, [10, 11, 12, 13])


def test_properties_survive():
    parsed = NdjsonParser().parse_batch(RecordBatch.data(
        "s", [b'{"customer_id":"a","event_type":"b","transaction_id":"c","timestamp":1,"url":"/x"}'], [7]))
    (event,) = from_columns(to_columns(parsed)).events
    assert dict(event.properties) == {"url": "/x"}
