"""The events-csv parser works on whole batches (columns, C loops) and sends
odd rows down a per-record path. Whatever the mix of rows, a batch must parse
exactly as the independent oracle reads each line on its own."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.batches import RecordBatch
from streams.csv_parser import CSV_HEADER, EventsCsvParser
from tests.oracle import event_of_line

ids = st.text(alphabet="abcxyz0129_-", min_size=1, max_size=6)
# Anything a hostile file may hold inside a field: quotes, separators, control
# characters, spaces, a BOM, non-ASCII, a lone surrogate's bytes.
hostile_text = st.text(alphabet=st.sampled_from(['"', ",", "\x1b", "\r", "\x7f", "\t", "\x00", "\x0c", " ", "\ufeff",
                                                  "é", "a", "b"]), min_size=1, max_size=5)
stamps = st.one_of(
    st.sampled_from(["2021-03-01 00:01:11.055+00", "2021-03-01T00:01:11Z", "2021-02-28T23:59:59.123456789-05:30",
                     "2021-03-01T04:00+0100"]),
    st.sampled_from(["2021-03-01 00:01:11", "2021-02-30T00:00:00Z", "nope", "2021-03-01T00:01:11Z ",
                     " 2021-03-01T00:01:11Z", "20210301T000111Z", "2021-03-01T00:01:11.Z",
                     "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00",
                     "9999-12-31T23:59:59.999999Z", "0999-06-01T00:00:00Z", "1000-01-01T00:00:00+01:00"]),
)


def quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


rows = st.one_of(
    st.builds(lambda c, e, x, t: f"{c},{e},{x},{t}".encode(), ids, ids, ids, stamps),  # mostly good
    st.builds(lambda c, e, x, t: f"{c},{e},{x},{t}".encode(), ids, ids, ids, stamps),
    st.builds(lambda c, e, t: f'"{c},{c}",{e},tx,{t}'.encode(), ids, ids, stamps),  # quoted, valid CSV
    st.builds(lambda c, t: f"{c},,tx,{t}".encode(), ids, stamps),  # empty field
    st.builds(lambda c, t: f"{c},click,{t}".encode(), ids, stamps),  # three fields
    st.builds(lambda c, t: f"{c},click,tx,{t},extra".encode(), ids, stamps),  # five fields
    st.builds(lambda h, e, t: f"{h},{e},tx,{t}".encode(), hostile_text, ids, stamps),  # hostile, bare
    st.builds(lambda h, e, t: f"{quoted(h)},{e},tx,{t}".encode(), hostile_text, ids, stamps),  # hostile, quoted
    st.builds(lambda c, h, t: f'{c}{h}",view,tx,{t}'.encode(), ids, hostile_text, stamps),  # quote in a bare field
    st.builds(lambda c, t, pad: f"{pad}{c},view,tx,{t}{pad}".encode(), ids, stamps, st.sampled_from([" ", "\t", " \t"])),
    st.builds(lambda c, t: f'"{c}'.encode(), ids, stamps),  # the first line of a field with a line break
    st.sampled_from([CSV_HEADER.encode(), b"", b"   ", b"\t", b"\x0c", b"a,b\x00,c,2021-03-01T00:01:11Z",
                     b"\xff\xfe,click,tx,2021-03-01T00:01:11Z", b"customer_id,click,tx,2021-03-01T00:01:11Z",
                     b"\xed\xa0\x80,click,tx,2021-03-01T00:01:11Z", b'"a"b,click,tx,2021-03-01T00:01:11Z',
                     b' "a",click,tx,2021-03-01T00:01:11Z', f"{CSV_HEADER} ".encode(), b"\xef\xbb\xbfc,v,t,2021-03-01T00:01:11Z"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(rows, max_size=80))
def test_a_batch_parses_as_each_line_alone_by_the_oracle(records):
    positions = list(range(10, 10 + len(records)))
    parsed = EventsCsvParser().parse_batch(RecordBatch.data("p", records, positions))
    got = [(e.customer_id, e.event_type, e.transaction_id, e.event_time_us, e.position) for e in parsed.events]
    expected = []
    dead = []
    for record, position in zip(records, positions):
        event = event_of_line(record)
        if event:
            expected.append((*event, position))
        elif event is None:
            dead.append(position)
    assert got == expected
    assert sorted(d.position for d in parsed.dead_letters) == dead
    assert parsed.blank == sum(1 for r in records if not r.strip(b" \t"))


def test_hostile_fields_are_dead_letters_with_their_reason():
    records = [b'"acme', b'corp",view,t1,2021-03-01T00:00:00Z',  # "acme\ncorp" split at its line break
               b'ab"c,view,t2,2021-03-01T00:00:01Z', b"c\x1bx,view,t3,2021-03-01T00:00:02Z",
               b"c\rx,view,t4,2021-03-01T00:00:03Z", b"c\x7fx,view,t5,2021-03-01T00:00:04Z",
               b'"a"b,view,t6,2021-03-01T00:00:04Z', b'"c\x1b",view,t7,2021-03-01T00:00:04Z',
               b"c,view,t8,0001-01-01T00:00:00+14:00", b'"ok, inc",view,"t""9",2021-03-01T00:00:04Z']
    parsed = EventsCsvParser().parse_batch(RecordBatch.data("p", records, range(1, len(records) + 1)))
    assert [(e.customer_id, e.transaction_id) for e in parsed.events] == [("ok, inc", 't"9')]
    errors = {d.position: (d.reason.value, d.error) for d in parsed.dead_letters}
    assert set(errors) == set(range(1, 10))
    assert "without its closing quote" in errors[1][1]
    assert "quote inside a bare field" in errors[2][1] and "quote inside a bare field" in errors[3][1]
    for position in (4, 5, 6, 8):
        assert errors[position][0] == "malformed" and "control character" in errors[position][1]
    assert "after the closing quote" in errors[7][1]
    assert errors[9] == ("bad timestamp", errors[9][1]) and "out of range" in errors[9][1]
