"""The events-csv parser works on whole batches (columns, C loops) and sends
odd rows down a per-record path. Whatever the mix of rows, a batch must parse
exactly as the independent oracle reads each line on its own."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import RecordBatch
from streams.parsers import CSV_HEADER, EventsCsvParser
from tests.oracle import csv_fields, stamp_to_us

ids = st.text(alphabet="abcxyz0129_-", min_size=1, max_size=6)
stamps = st.one_of(
    st.sampled_from(["2021-03-01 00:01:11.055+00", "2021-03-01T00:01:11Z", "2021-02-28T23:59:59.123456789-05:30",
                     "2021-03-01T04:00+0100"]),
    st.sampled_from(["2021-03-01 00:01:11", "2021-02-30T00:00:00Z", "nope", "2021-03-01T00:01:11Z ",
                     " 2021-03-01T00:01:11Z", "20210301T000111Z", "2021-03-01T00:01:11.Z"]),
)
rows = st.one_of(
    st.builds(lambda c, e, x, t: f"{c},{e},{x},{t}".encode(), ids, ids, ids, stamps),  # mostly good
    st.builds(lambda c, e, x, t: f"{c},{e},{x},{t}".encode(), ids, ids, ids, stamps),
    st.builds(lambda c, e, t: f'"{c},{c}",{e},tx,{t}'.encode(), ids, ids, stamps),  # quoted, valid CSV
    st.builds(lambda c, t: f"{c},,tx,{t}".encode(), ids, stamps),  # empty field
    st.builds(lambda c, t: f"{c},click,{t}".encode(), ids, stamps),  # three fields
    st.builds(lambda c, t: f"{c},click,tx,{t},extra".encode(), ids, stamps),  # five fields
    st.sampled_from([CSV_HEADER.encode(), b"", b"   ", b"a,b\x00,c,2021-03-01T00:01:11Z",
                     b"\xff\xfe,click,tx,2021-03-01T00:01:11Z", b"customer_id,click,tx,2021-03-01T00:01:11Z"]),
)


def oracle_event(record: bytes) -> tuple | None:
    try:
        line = record.decode()
    except UnicodeDecodeError:
        return None
    if "\x00" in line or not line.strip() or line == CSV_HEADER:
        return None
    fields = csv_fields(line)
    if fields is None or len(fields) != 4 or not all(fields):
        return None
    us = stamp_to_us(fields[3])
    return None if us is None else (fields[0], fields[1], fields[2], us)


@settings(max_examples=300, deadline=None)
@given(st.lists(rows, max_size=80))
def test_a_batch_parses_as_each_line_alone_by_the_oracle(records):
    positions = list(range(10, 10 + len(records)))
    parsed = EventsCsvParser().parse_batch(RecordBatch.data("p", records, positions))
    got = [(e.customer_id, e.event_type, e.transaction_id, e.event_time_us, e.position) for e in parsed.events]
    expected = []
    dead = []
    for record, position in zip(records, positions):
        event = oracle_event(record)
        if event is not None:
            expected.append((*event, position))
        elif record.strip() and record != CSV_HEADER.encode():
            dead.append(position)
    assert got == expected
    assert sorted(d.position for d in parsed.dead_letters) == dead
    assert parsed.blank == sum(1 for r in records if not r.strip())
