"""Issue 13, items 3 and 6: hostile input files, through the CLI as a user
runs it. Every case ends in dead letters with a reason, or in one line on
stderr with exit status 2, never in a traceback; a damaged compressed input
counts every complete line before the damage and names its byte offset; a
file's identity is its content. The last test mixes every hostile feature
into valid rows and holds the counts to the independent oracle."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, run_cli
from tests.oracle import DEFAULT_ROLLUPS, MINUTE, file_lines, run_oracle, stamp_to_us

HEADER = b"customer_id,event_type,transaction_id,timestamp\n"


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    no_traceback(result)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_json(path: Path, data_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = run_cli("run", "--input", str(path), "--data-dir", str(data_dir), "--json", *extra)
    no_traceback(result)
    return result, (json.loads(result.stdout) if result.stdout.strip() else {})


def exported(data_dir: Path, rollup: str = "customer_hourly") -> Counter:
    result = run_cli("export", "--rollup", rollup, "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert rows[0][0] == "window_start"
    counts: Counter = Counter()
    for row in rows[1:]:
        assert len(row[0]) == 20 and row[0][4] == "-", row[0]  # 4-digit years
        counts[(stamp_to_us(row[0]), row[1])] += int(row[2])
    return counts


def dead_letters(data_dir: Path) -> list[dict]:
    path = data_dir / "dead_letters.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def oracle_of(data: bytes, lateness_us: int = 10 * MINUTE):
    return run_oracle(file_lines(data), lateness_us, DEFAULT_ROLLUPS)


# -- item 6: CSV -----------------------------------------------------------------


def test_a_quoted_field_with_a_line_break_makes_no_event(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(HEADER + b'"acme\ncorp",view,t1,2021-03-01T00:00:00Z\nok,view,t2,2021-03-01T00:00:01Z\n')
    result, summary = run_json(path, tmp_path)
    assert result.returncode == 0
    assert (summary["valid"], summary["malformed"]) == (1, 2)
    assert {key for _, key in exported(tmp_path)} == {"ok"}
    errors = {d["position"]: d["error"] for d in dead_letters(tmp_path)}
    assert "without its closing quote" in errors[2] and "quote inside a bare field" in errors[3]


def test_a_quote_inside_a_bare_field_is_refused(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'ab"c,view,t1,2021-03-01T00:00:00Z\n"a"b,view,t2,2021-03-01T00:00:00Z\n'
                     b'"a ""quoted"", name",view,t3,2021-03-01T00:00:00Z\n')
    result, summary = run_json(path, tmp_path)
    assert (result.returncode, summary["valid"], summary["malformed"]) == (0, 1, 2)
    assert {key for _, key in exported(tmp_path)} == {'a "quoted", name'}


def test_a_byte_order_mark_is_not_data(tmp_path):
    with_header = tmp_path / "h.csv"
    with_header.write_bytes(b"\xef\xbb\xbf" + HEADER + b"c1,view,t1,2021-03-01T00:00:00Z\n")
    result, summary = run_json(with_header, tmp_path / "h")
    assert (summary["valid"], summary["malformed"]) == (1, 0) and not dead_letters(tmp_path / "h")
    first_row = tmp_path / "r.csv"
    first_row.write_bytes(b"\xef\xbb\xbfc1,view,t1,2021-03-01T00:00:00Z\n")
    run_json(first_row, tmp_path / "r")
    assert {key for _, key in exported(tmp_path / "r")} == {"c1"}


@pytest.mark.parametrize("control", [b"\x1b", b"\r", b"\x7f", b"\x01", b"\x0b", b"\t"])
def test_control_characters_inside_a_field_are_refused_as_over_http(tmp_path, control):
    path = tmp_path / "in.csv"
    path.write_bytes(b"c" + control + b"x,view,t1,2021-03-01T00:00:00Z\n"
                     b'"q' + control + b'",view,t2,2021-03-01T00:00:00Z\n'
                     b"ok,vi" + control + b"ew,t3,2021-03-01T00:00:00Z\n"
                     b"ok,view,t4,2021-03-01T00:00:00Z\r\n")  # a CRLF line end is not in a field
    result, summary = run_json(path, tmp_path)
    assert (result.returncode, summary["valid"], summary["malformed"]) == (0, 1, 3)
    assert all("control character" in d["error"] for d in dead_letters(tmp_path))
    assert {key for _, key in exported(tmp_path)} == {"ok"}


def test_timestamps_outside_years_1_to_9999_in_utc_are_dead_letters_in_run_and_produce(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b,c,0001-01-01T00:00:00+14:00\na,b,d,9999-12-31T23:59:59-14:00\na,b,e,2021-03-01T00:00:00Z\n")
    result, summary = run_json(path, tmp_path / "run")
    assert (result.returncode, summary["valid"], summary["malformed"]) == (0, 1, 2)
    assert {d["reason"] for d in dead_letters(tmp_path / "run")} == {"bad timestamp"}
    produced = run_cli("produce", "--input", str(path), "--to", "console", "--data-dir", str(tmp_path / "p"))
    no_traceback(produced)
    assert produced.returncode == 0 and produced.stdout.count('"v":1') == 1
    query = run_cli("query", "buckets", "--customer", "a", "--start", "0001-01-01T00:00:00+14:00",
                    "--end", "2021-03-01T00:00:00Z", "--data-dir", str(tmp_path / "run"))
    one_error_line(query, "out of range")


def test_years_before_1000_survive_a_spool_hop_with_four_digits(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b,c,0999-06-01T00:00:00Z\na,b,d,0001-01-01T00:00:00Z\na,b,e,0999-06-01T00:30:00+01:00\n")
    spool = f"spool:{tmp_path / 'spool'}"
    produced = run_cli("produce", "--input", str(path), "--to", spool, "--data-dir", str(tmp_path))
    no_traceback(produced)
    assert produced.returncode == 0 and "sent 3 events" in produced.stdout
    consumed = run_cli("consume", "--from", spool, "--drain", "0.5", "--data-dir", str(tmp_path), "--lateness", "3660000d",
                       "--json")
    no_traceback(consumed)
    assert json.loads(consumed.stdout)["valid"] == 3 and not dead_letters(tmp_path)
    assert exported(tmp_path) == Counter({(stamp_to_us("0999-05-31T23:00:00Z"), "a"): 1,
                                          (stamp_to_us("0999-06-01T00:00:00Z"), "a"): 1,
                                          (stamp_to_us("0001-01-01T00:00:00Z"), "a"): 1})
    keys = [p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*.parquet")]
    assert keys and all("dt=0999-" in key or "dt=0001-" in key for key in keys), keys
    assert any("-09990531T230000Z" in key for key in keys)


def test_ndjson_with_a_lone_surrogate_is_a_dead_letter(tmp_path):
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"customer_id":"\\ud800","event_type":"e","transaction_id":"t1","timestamp":"2021-03-01T00:00:00Z"}\n'
                     b'{"customer_id":"c","event_type":"e","transaction_id":"t2","timestamp":"2021-03-01T00:00:00Z",'
                     b'"p":"\\udfff"}\n'
                     b'{"customer_id":"c","event_type":"e","transaction_id":"t3","timestamp":"2021-03-01T00:00:00Z"}\n')
    result, summary = run_json(path, tmp_path, "--format", "ndjson")
    assert (result.returncode, summary["valid"], summary["malformed"]) == (0, 1, 2)
    assert [d["position"] for d in dead_letters(tmp_path)] == [1, 2]


# -- item 6: compressed input ----------------------------------------------------


def _rows(n: int, start: int = 0) -> bytes:
    return b"".join(b"c%d,view,t%d,2021-03-01T00:%02d:%02dZ\n" % (i % 7, i, (i // 60) % 60, i % 60)
                    for i in range(start, start + n))


def _complete_lines_before(damaged: bytes) -> bytes:
    """What zlib decodes of a damaged gzip stream, cut after its last line end."""
    inflater = zlib.decompressobj(31)
    out = b""
    for index in range(len(damaged)):
        try:
            out += inflater.decompress(damaged[index:index + 1])
        except zlib.error:
            break
        if inflater.eof:
            break
    return out[:out.rfind(b"\n") + 1]


BODY = HEADER + _rows(3000)
GOOD = gzip.compress(BODY)


@pytest.mark.parametrize("name, data, offset, message", [
    ("truncated", GOOD[:len(GOOD) // 2], len(GOOD) // 2, "truncated"),
    ("only the magic", b"\x1f\x8b", 2, "truncated"),
    ("trailing garbage", GOOD + b"not gzip", len(GOOD), "trailing garbage"),
    ("corrupt", GOOD[:300] + bytes([GOOD[300] ^ 0x55]) + GOOD[301:], None, "damaged gzip data"),
])
def test_a_damaged_gzip_counts_every_complete_line_before_the_damage_then_exits_2(tmp_path, name, data, offset, message):
    path = tmp_path / "in.csv.gz"
    path.write_bytes(data)
    result, summary = run_json(path, tmp_path)
    one_error_line(result, message, "at byte")
    if offset is not None:
        assert f"at byte {offset:,} " in result.stderr
    complete = BODY if name == "trailing garbage" else _complete_lines_before(data)
    expected = oracle_of(complete)
    assert summary["valid"] == expected.valid
    if expected.valid:
        assert exported(tmp_path) == Counter(expected.counts["customer_hourly"])
    # produce and --processes 2 stop the same way
    produced = run_cli("produce", "--input", str(path), "--to", "console", "--data-dir", str(tmp_path / "p"))
    one_error_line(produced, message)
    assert produced.stdout.count('"v":1') == expected.valid
    two = run_cli("run", "--input", str(path), "--processes", "2", "--json", "--data-dir", str(tmp_path / "two"))
    one_error_line(two, message)
    assert json.loads(two.stdout)["valid"] == expected.valid


def test_concatenated_gzip_members_are_all_read(tmp_path):
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(HEADER + _rows(50)) + gzip.compress(_rows(50, 50)) + b"\0" * 512)
    result, summary = run_json(path, tmp_path)
    assert (result.returncode, summary["valid"]) == (0, 100)


# -- item 6: arguments and pipes -------------------------------------------------


def test_argument_errors_are_one_line(tmp_path):
    one_error_line(run_cli("run", "--input", str(tmp_path), "--data-dir", str(tmp_path)), "is a directory")
    sample = tmp_path / "s.csv"
    sample.write_bytes(HEADER)
    one_error_line(run_cli("run", "--input", str(sample), "--lateness", "999999999999h", "--data-dir", str(tmp_path)),
                   "--lateness", "too long")
    one_error_line(run_cli("run", "--input", str(sample), "--lateness", "9" * 400, "--data-dir", str(tmp_path)),
                   "--lateness")


def test_export_into_a_closed_pipe_is_quiet(tmp_path):
    path = tmp_path / "many.csv"
    path.write_bytes(b"".join(b"customer-%06d,view,t%d,2021-03-01T00:00:00Z\n" % (i, i) for i in range(20_000)))
    assert run_cli("run", "--input", str(path), "--data-dir", str(tmp_path)).returncode == 0
    command = (f"'{sys.executable}' '{ROOT / 'run_stream_processing.py'}' export --rollup customer_hourly "
               f"--data-dir '{tmp_path}' | head -2")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout.count("\n") == 2
    assert result.stderr == "", result.stderr
    assert result.returncode == 0


# -- item 3: a file's identity is its content ----------------------------------------


def test_the_same_bytes_from_another_path_count_once_and_another_file_adds(tmp_path):
    original = tmp_path / "a" / "events.csv"
    original.parent.mkdir()
    original.write_bytes(HEADER + _rows(500))
    copy = tmp_path / "b" / "renamed.csv"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    data_dir = tmp_path / "data"
    for path in (original, copy, original):
        assert run_json(path, data_dir)[0].returncode == 0
    once = oracle_of(original.read_bytes())
    assert exported(data_dir) == Counter(once.counts["customer_hourly"])

    other = tmp_path / "other.csv"
    other.write_bytes(HEADER + _rows(500) + b"zz,view,t-new,2021-03-01T00:00:00Z\n")  # another file: adds
    assert run_json(other, data_dir)[0].returncode == 0
    twice = Counter(once.counts["customer_hourly"])
    for key, count in oracle_of(other.read_bytes()).counts["customer_hourly"].items():
        twice[key] += count
    assert exported(data_dir) == twice


# -- every hostile feature at once, against the oracle -------------------------------

_customers = st.sampled_from(["c1", "c2", "bob@x.com", "bob_x.com-c81301bd1aee", "a/b", "a_b-8f1d19cf4f86", "é ü",
                              "x=y", ".."])
_moment = st.integers(0, 3 * 3600 - 1).map(lambda s: f"2021-03-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}")
_stamp = st.one_of(_moment.map(lambda m: m + "Z"), _moment.map(lambda m: m.replace("T", " ") + ".5+00"),
                   _moment.map(lambda m: m + "+00:00"))


def _row(customer: str, txn: int, stamp: str) -> bytes:
    field = f'"{customer}"' if "," in customer else customer
    return f"{field},view,t{txn},{stamp}".encode()


_valid = st.builds(_row, _customers, st.integers(0, 40), _stamp)
_hostile = st.one_of(
    st.builds(lambda c, t: b'"' + c.encode() + b"\n" + b"corp" + b'",view,t1,' + t.encode(), _customers, _stamp),
    st.builds(lambda c, t: c.encode() + b'"x,view,t2,' + t.encode(), _customers, _stamp),
    st.builds(lambda ch, t: b"c" + ch + b"x,view,t3," + t.encode(), st.sampled_from([b"\x1b", b"\r", b"\x7f", b"\x00"]),
              _stamp),
    st.sampled_from([b"", b"   ", b"\t", HEADER.strip(), b"a,b,c,0001-01-01T00:00:00+14:00",
                     b"a,b,c,9999-12-31T23:59:59-14:00", b"a,b,c,0999-06-01T00:00:00Z", b"\xed\xa0\x80,view,t,2021-03-01T00:00:00Z",
                     b"\xff,view,t,2021-03-01T00:00:00Z", b"c1,view,t1", b"c1,view,t1,2021-03-01T00:00:00Z,extra",
                     b'"c1","view","t1","2021-03-01T00:00:00Z"', b" c1,view,t9,2021-03-01T00:00:00Z\t"]),
)


@st.composite
def hostile_files(draw) -> tuple[bytes, bytes, bool]:
    """(file bytes, the decompressed bytes the oracle reads, damaged?)"""
    rows = draw(st.lists(st.one_of(_valid, _valid, _hostile), min_size=1, max_size=120))
    rows += draw(st.lists(st.sampled_from(rows), max_size=20))  # re-sent: duplicates, some of them late
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + ending.join(rows) + (ending if draw(st.booleans()) else b"")
    mode = draw(st.sampled_from(["plain", "plain", "gzip", "truncated", "garbage"]))
    if mode == "plain":
        return body, body, False
    packed = gzip.compress(body)
    if mode == "gzip":
        return packed, body, False
    if mode == "garbage":  # every member is read; a last line without its line end counts as cut
        return packed + b"junk", body[:body.rfind(b"\n") + 1], True
    cut = draw(st.integers(10, max(10, len(packed) - 1)))
    return packed[:cut], _complete_lines_before(packed[:cut]), True


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_files())
def test_hostile_files_count_as_the_oracle_and_never_print_a_traceback(tmp_path_factory, case):
    data, readable, damaged = case
    tmp = tmp_path_factory.mktemp("hostile")
    path = tmp / "input"
    path.write_bytes(data)
    result, summary = run_json(path, tmp / "data")
    if damaged:
        one_error_line(result, "at byte")
    else:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    expected = oracle_of(readable)
    assert (summary["valid"], summary["duplicates"], summary["late"], summary["malformed"]) == (
        expected.valid, expected.duplicates, expected.late, expected.malformed)
    for rollup in DEFAULT_ROLLUPS:
        if expected.valid:
            assert exported(tmp / "data", rollup) == Counter(expected.counts[rollup]), rollup
    letters = dead_letters(tmp / "data")
    assert sorted(d["position"] for d in letters if d["reason"] not in ("late", "future")) == expected.malformed_positions
    assert sorted(d["position"] for d in letters if d["reason"] == "late") == expected.late_positions
    # produce parses at the edge the same way: every record that parses is sent, nothing else
    produced = run_cli("produce", "--input", str(path), "--to", "console", "--data-dir", str(tmp / "produce"))
    if damaged:
        one_error_line(produced, "at byte")
    else:
        no_traceback(produced)
        assert produced.returncode == 0, produced.stderr
    parsed = expected.valid + expected.duplicates + expected.late + expected.future
    assert produced.stdout.count('{"v":1,') == parsed
