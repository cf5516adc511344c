"""The ndjson parser reads a batch as columns (the C JSON scanner mapped over
the records) and sends odd records down a per-record path. Whatever the mix,
a batch must parse exactly as an oracle written here reads each line alone."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.batches import RecordBatch
from streams.ndjson_parser import NdjsonParser
from tests.oracle import stamp_to_us

ids = st.text(alphabet="abcxyz0129_-é", min_size=1, max_size=6)
stamps = st.sampled_from(["2021-03-01T00:01:11.055Z", "2021-03-01 00:01:11+05:30", "2021-02-30T00:00:00Z",
                          "2021-03-01T00:01:11", "nope", " 2021-03-01T00:01:11Z"])
values = st.one_of(ids, st.just(""), st.integers(-5, 5), st.none(), st.lists(st.integers(), max_size=2),
                   st.sampled_from(["a\x00b", "\x1b[31m", "tab\there"]), st.lists(st.just("\x00"), max_size=1))


def obj(c, e, x, t, extra, v):
    record = {"customer_id": c, "event_type": e, "transaction_id": x, "timestamp": t}
    if v:
        record["v"] = 1
    record.update(extra)
    return record


valid_objects = st.builds(obj, ids, ids, ids, st.one_of(stamps, st.integers(1_600_000_000_000, 1_700_000_000_000)),
                          st.dictionaries(st.sampled_from(["url", "revenue", "a\x1bb", "\n"]), values, max_size=2),
                          st.booleans())
odd_objects = st.builds(obj, values, ids, values, st.one_of(stamps, values), st.just({}), st.booleans())
# As the daemon writes them (`Event.to_json_line`): the native path's shape,
# with texts that must leave it (escapes, control characters, lone surrogates).
hostile_ids = st.one_of(ids, st.text(min_size=0, max_size=4), st.sampled_from(['a"b', "a\\b", "\ud800", "\x1f", "é", "a\x7fb"]))


def canonical(c, e, x, t, ascii_only):
    field = lambda v: json.dumps(v, ensure_ascii=ascii_only)  # noqa: E731
    return (f'{{"v":1,"customer_id":{field(c)},"event_type":{field(e)},"transaction_id":{field(x)},'
            f'"timestamp":{field(t)}}}').encode("utf-8", "surrogatepass")


canonical_records = st.builds(canonical, hostile_ids, hostile_ids, hostile_ids,
                              st.one_of(stamps, st.just("2021-03-01T00:01:11.123456Z")), st.booleans())
records = st.one_of(
    canonical_records,
    valid_objects.map(lambda o: json.dumps(o, ensure_ascii=False).encode()),
    valid_objects.map(lambda o: json.dumps(o).encode()),
    odd_objects.map(lambda o: json.dumps(o).encode()),
    valid_objects.map(lambda o: b"  " + json.dumps(o).encode() + b" "),  # padded: still valid
    st.sampled_from([b"", b"   ", b"[1,2]", b"42", b'"x"', b"{", b'{"a":1},{"b":2}', b'{"a":"}', b'{"b":"}',
                     b"\xff\xfe{}", b'{"customer_id":"a\x00"}', b"[" * 5000 + b"]" * 5000, b'{"a":NaN}']),
)


def oracle(record: bytes) -> tuple | None:
    """(customer, type, transaction, µs, properties) or None."""
    try:
        text = record.decode().strip()
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if "\x00" in text or not isinstance(value, dict):
        return None
    try:  # a lone surrogate (JSON "\ud800") is not Unicode text: dead-lettered
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return None
    core = [value.pop(name, None) for name in ("customer_id", "event_type", "transaction_id", "timestamp")]
    value.pop("v", None)
    if not all(isinstance(f, str) and f for f in core[:3]):
        return None
    # Refused as over HTTP: control characters in the core fields and in field
    # names, NUL in any text.
    if any(ord(ch) < 32 or ord(ch) == 127 for f in core[:3] for ch in f):
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for name in value for ch in name) or "\\u0000" in text:
        return None
    t = core[3]
    if isinstance(t, str):
        us = stamp_to_us(t)
    elif isinstance(t, int) and not isinstance(t, bool):
        us = t * 1000
    else:
        us = None
    return None if us is None else (*core[:3], us, value)


@settings(max_examples=500, deadline=None)
@given(st.lists(records, max_size=60))
def test_a_batch_parses_as_each_line_alone_by_the_oracle(batch):
    positions = list(range(5, 5 + len(batch)))
    parsed = NdjsonParser().parse_batch(RecordBatch.data("p", batch, positions))
    got = [(e.customer_id, e.event_type, e.transaction_id, e.event_time_us, dict(e.properties), e.position)
           for e in parsed.events]
    expected, dead = [], []
    for record, position in zip(batch, positions):
        event = oracle(record)
        if event is not None:
            expected.append((*event, position))
        elif record.strip():
            dead.append(position)
    assert got == expected
    assert sorted(d.position for d in parsed.dead_letters) == dead
    assert parsed.blank == sum(1 for r in batch if not r.strip())
