import json
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import ParseError, Reason

from streams.timestamps import parse_duration, parse_timestamp_column, parse_timestamp_us
from streams.utc import format_utc
from tests.oracle import stamp_to_us

FIXTURES = Path(__file__).parent / "fixtures"


def test_seed_timestamp_cases_normalise_to_utc():
    cases = json.loads((FIXTURES / "timestamp_cases.json").read_text())
    assert len(cases) >= 10
    for text, expected in cases:
        assert format_utc(parse_timestamp_us(text)) == expected, text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2021-03-01T00:01:11Z", "2021-03-01T00:01:11.000000Z"),
        ("2021-03-01 00:01:11Z", "2021-03-01T00:01:11.000000Z"),
        ("2021-03-01 00:01:11.055+00", "2021-03-01T00:01:11.055000Z"),
        ("2021-03-01 00:01:11.1+0100", "2021-02-28T23:01:11.100000Z"),
        ("2021-03-01 00:01:11.123456789-05:30", "2021-03-01T05:31:11.123456Z"),  # 9 digits: truncated
        ("2021-03-01T00:01:11.999999999Z", "2021-03-01T00:01:11.999999Z"),  # never rounds up a second
        ("2021-03-01T00:01+02:00", "2021-02-28T22:01:00.000000Z"),
        ("2020-02-29T23:59:59-01", "2020-03-01T00:59:59.000000Z"),
    ],
)
def test_every_form_of_the_contract(text, expected):
    assert format_utc(parse_timestamp_us(text)) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("2021-03-01 00:01:11", Reason.NO_UTC_OFFSET),
        ("2021-03-01T00:01:11.5", Reason.NO_UTC_OFFSET),
        ("2021-02-30 00:00:00Z", Reason.BAD_TIMESTAMP),
        ("2021-03-01 24:00:00Z", Reason.BAD_TIMESTAMP),
        ("2021-03-01 00:00:00+24:00", Reason.BAD_TIMESTAMP),
        ("yesterday", Reason.BAD_TIMESTAMP),
        ("", Reason.BAD_TIMESTAMP),
        ("2021-03-01 00:00:00.Z", Reason.BAD_TIMESTAMP),
        ("20210301T000000Z", Reason.BAD_TIMESTAMP),
        ("2021-03-01 00:00:00.1234567890Z", Reason.BAD_TIMESTAMP),
    ],
)
def test_bad_timestamps_are_rejected_with_a_reason(text, reason):
    with pytest.raises(ParseError) as info:
        parse_timestamp_us(text)
    assert info.value.reason is reason


def test_naive_timestamps_use_the_configured_zone():
    berlin = ZoneInfo("Europe/Berlin")
    assert format_utc(parse_timestamp_us("2021-03-01 01:00:00", berlin)) == "2021-03-01T00:00:00.000000Z"
    assert format_utc(parse_timestamp_us("2021-07-01 02:00:00", berlin)) == "2021-07-01T00:00:00.000000Z"
    assert parse_timestamp_us("2021-03-01 00:00:00", timezone.utc) == parse_timestamp_us("2021-03-01T00:00:00Z")


def test_the_same_instant_with_other_offsets_is_equal():
    a = parse_timestamp_us("2021-03-01T10:00:00.5Z")
    assert a == parse_timestamp_us("2021-03-01 15:30:00.500+05:30") == parse_timestamp_us("2021-03-01T02:00:00.5-0800")


offsets = st.one_of(
    st.just("Z"),
    st.builds(lambda s, h, m, form: form.format(s=s, h=h, m=m),
              st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59),
              st.sampled_from(["{s}{h:02d}:{m:02d}", "{s}{h:02d}{m:02d}"])),
    st.builds(lambda s, h: f"{s}{h:02d}", st.sampled_from("+-"), st.integers(0, 23)),
)


@settings(max_examples=400, deadline=None)
@given(
    st.datetimes(min_value=__import__("datetime").datetime(1971, 1, 1), max_value=__import__("datetime").datetime(9998, 1, 1)),
    st.sampled_from(["T", " "]),
    st.integers(0, 9),
    st.integers(0, 999),
    offsets,
)
def test_parser_agrees_with_an_independent_oracle(moment, sep, digits, extra, offset):
    text = moment.strftime("%Y-%m-%d") + sep + moment.strftime("%H:%M:%S")
    if digits:
        text += "." + (f"{moment.microsecond:06d}{extra:03d}")[:digits]
    text += offset
    assert parse_timestamp_us(text) == stamp_to_us(text)


def test_durations():
    assert parse_duration("10m").total_seconds() == 600
    assert parse_duration("3h").total_seconds() == 10800
    assert parse_duration("250ms").total_seconds() == 0.25
    assert parse_duration("90").total_seconds() == 90
    with pytest.raises(ValueError):
        parse_duration("ten minutes")


bad_or_odd = st.sampled_from([
    "2021-03-01 00:01:11", "2021-02-30 00:00:00Z", "2021-03-01 24:00:00Z", "2021-03-01 00:00:00+24:00",
    "yesterday", "", "2021-03-01 00:00:00.Z", "20210301T000000Z", "2021-03-01 00:00:00.1234567890Z",
    " 2021-03-01T00:00:00Z", "2021-03-01T00:00:00Z ", "2021-13-01T00:00:00Z", "2021-03-01T00:00:00+01:00:30",
    "２０２１-03-01T00:00:00Z", "2021-W09-1T00:00:00Z", "2021-03-01T00Z",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.builds(
        lambda moment, sep, digits, extra, offset: moment.strftime("%Y-%m-%d") + sep + moment.strftime("%H:%M:%S")
        + ("." + f"{moment.microsecond:06d}{extra:03d}"[:digits] if digits else "") + offset,
        st.datetimes(min_value=__import__("datetime").datetime(1971, 1, 1), max_value=__import__("datetime").datetime(9998, 1, 1)),
        st.sampled_from(["T", " "]), st.integers(0, 9), st.integers(0, 999), offsets),
    bad_or_odd,
    st.text(max_size=30).filter(lambda t: "\n" not in t),  # a newline defers the whole column
), max_size=60))
def test_the_column_parser_agrees_with_the_oracle_or_defers(texts):
    """Each text gets the oracle's value, or None: then the per-text parser
    decides (and words the error). A valid timestamp without padding is never
    deferred."""
    column = parse_timestamp_column(texts)
    assert len(column) == len(texts)
    for text, value in zip(texts, column):
        expected = stamp_to_us(text)
        if value is not None:
            assert value == expected, text
        elif expected is not None and text == text.strip() and text.isascii():
            raise AssertionError(f"deferred a valid timestamp: {text!r}")


_digits = lambda n: st.text("0123456789", min_size=n, max_size=n)  # noqa: E731
_near_valid = st.builds(
    lambda y, mo, d, sep, h, mi, sec, frac, off: f"{y}-{mo}-{d}{sep}{h}:{mi}{sec}{frac}{off}",
    st.one_of(_digits(4), st.sampled_from(["2021", "2020", "1999", "0999", "0000", "9999", "1000"])),
    st.one_of(_digits(2), st.sampled_from(["01", "02", "12", "13"])),
    st.one_of(_digits(2), st.sampled_from(["28", "29", "30", "31"])),
    st.sampled_from(["T", " ", "t", "_"]),
    st.one_of(_digits(2), st.sampled_from(["00", "23", "24"])),
    st.one_of(_digits(2), st.sampled_from(["00", "59", "60"])),
    st.one_of(st.just(""), st.builds(lambda s: ":" + s, st.one_of(_digits(2), st.sampled_from(["59", "60"])))),
    st.one_of(st.just(""), st.just("."), st.builds(lambda n: "." + "7" * n, st.integers(1, 12))),
    st.one_of(st.sampled_from(["Z", "", "z", "+00", "-00", "+0530", "+05:30", "-23:59", "+24:00", "+05:60", "+5",
                               "+05:3", "+05:30:00"]),
              st.builds(lambda sign, hh, mm: f"{sign}{hh}{mm}", st.sampled_from("+-"), _digits(2),
                        st.sampled_from(["", "00", ":45", "99"]))),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_near_valid, min_size=1, max_size=30))
def test_the_native_column_parser_never_disagrees_with_the_oracle(texts):
    """Where the native path gives an instant, it is the oracle's; where it
    gives none, the text takes the per-text path (checked above)."""
    import polars as pl

    from streams.timestamps import timestamp_column_us

    got = timestamp_column_us(pl.Series(texts, dtype=pl.String)).to_list()
    for text, value in zip(texts, got):
        if value is not None:
            assert value == stamp_to_us(text), text


def test_the_native_column_parser_takes_the_common_shapes():
    import polars as pl

    from streams.timestamps import timestamp_column_us

    texts = ["2021-03-01T00:01:11Z", "2021-03-01 00:01:11.055+00", "2021-03-01T00:01:11.123456789-05:30",
             "2020-02-29T23:59:59-01", "2021-03-01T00:01:11.5+0100"]
    assert timestamp_column_us(pl.Series(texts)).to_list() == [stamp_to_us(t) for t in texts]


def test_an_impossible_date_leaves_the_rest_of_its_column_native():
    """The native cast reads a column at once, and one date it cannot read
    would fail all of it: the shape lets through only real dates, so the
    valid texts beside one keep their instants (a leap day only in a leap
    year, seven to nine fraction digits truncated)."""
    import polars as pl

    from streams.timestamps import timestamp_column_us

    valid = ["2020-02-29T23:59:59Z", "2000-02-29T00:00:00+01:00", "2021-03-01T00:01:11.123456789-05:30",
             "2021-04-30 10:00:00.5Z"]
    impossible = ["2021-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2021-04-31T00:00:00Z", "2021-02-30T09:41:16+00:00"]
    for bad in impossible:
        got = timestamp_column_us(pl.Series([*valid, bad])).to_list()
        assert got == [*(stamp_to_us(t) for t in valid), None], bad
        assert stamp_to_us(bad) is None


@pytest.mark.parametrize("text", ["2021-W09-1T00:05Z", "2021-03-01T00:05:00 Z", "2021-03-01T00:05:00-08.0",
                                  "2021-03-01T00:05:00+05,30", "2021-060T00:05:00Z", "2021-03-01T00:05:00+05:30:00"])
def test_forms_fromisoformat_reads_but_the_contract_refuses(text):
    assert stamp_to_us(text) is None
    with pytest.raises(ParseError) as error:
        parse_timestamp_us(text)
    assert error.value.reason is Reason.BAD_TIMESTAMP


@settings(max_examples=1500, deadline=None)
@given(_near_valid)
def test_the_per_text_parser_agrees_with_the_oracle(text):
    expected = stamp_to_us(text)
    try:
        got = parse_timestamp_us(text)
    except ParseError:
        got = None
    if expected is not None and not -62135596800000000 <= expected <= 253402300799999999:
        expected = None  # outside years 1 to 9999 in UTC: refused
    assert got == expected, text


@settings(max_examples=500, deadline=None)
@given(st.lists(_near_valid, min_size=1, max_size=20))
def test_the_python_column_parser_never_disagrees_with_the_oracle(texts):
    for text, value in zip(texts, parse_timestamp_column(texts)):
        if value is not None:
            assert value == stamp_to_us(text), text
