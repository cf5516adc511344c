"""Issue 13, item 7: object keys never merge two values.

The old keys put event values in them through a lossy sanitizer with a short,
unkeyed digest: `bob@x.com` and the literal `bob_x.com-c81301bd1aee` shared
an object, and so did `a/b` and `a_b-8f1d19cf4f86`. Now no event value is
part of a key (raw events and aggregates keep values as columns), and the
values that are (a source partition, a rollup name) are percent-escaped, as
Hive and S3 readers decode them: injective, and never a new path level."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.aggregate_writer import table_root
from consumers.object_keys import MAX_NAME_CHARS, check_key, encode_name_part
from consumers.raw_event_writer import raw_event_key
from tests.conftest import run_cli

COLLIDING = ["bob@x.com", "bob_x.com-c81301bd1aee", "a/b", "a_b-8f1d19cf4f86", "a_b", "a%2Fb", "A/B"]


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_the_encoding_is_injective_safe_and_decodes_back(a, b):
    ea, eb = encode_name_part(a), encode_name_part(b)
    assert (ea == eb) == (a == b)
    for value, encoded in ((a, ea), (b, eb)):
        assert len(encoded) <= MAX_NAME_CHARS
        assert all(c.isascii() and (c.isalnum() or c in "._-%~") for c in encoded)
        if "~" not in encoded:  # not shortened: a percent-decoding reader gets the value back
            assert unquote(encoded, errors="surrogatepass") == value


def test_the_values_of_the_issue_get_distinct_names_and_keys():
    names = {encode_name_part(v) for v in COLLIDING}
    assert len(names) == len(COLLIDING)
    keys = {raw_event_key(v, 450_004, 1, ".parquet") for v in COLLIDING}
    assert len(keys) == len(COLLIDING) and all(check_key(k) == k and k.count("/") == 3 for k in keys)
    roots = {table_root("aggregates/{rollup}", v) for v in COLLIDING}
    assert len(roots) == len(COLLIDING) and all(r.count("/") == 1 for r in roots)


def test_no_event_value_reaches_a_key_and_each_value_is_counted_apart(tmp_path):
    path = tmp_path / "in.csv"
    rows = [f"{c},{c},t{i},2021-03-01T00:00:0{i}Z" for i, c in enumerate(COLLIDING)]
    path.write_text("\n".join(rows) + "\n")
    result = run_cli("run", "--input", str(path), "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] == len(COLLIDING)
    store = tmp_path / "store"
    keys = [p.relative_to(store).as_posix() for p in store.rglob("*.parquet")]
    assert keys
    for key in keys:
        assert not any(value in key for value in COLLIDING), key
    raw = pl.concat([pl.read_parquet(store / k) for k in keys if k.startswith("events/")])
    assert Counter(raw["customer_id"]) == Counter(COLLIDING)
    aggregates = pl.concat([pl.read_parquet(store / k) for k in keys if k.startswith("aggregates/customer_hourly/")])
    assert dict(zip(aggregates["customer_id"], aggregates["count"])) == {c: 1 for c in COLLIDING}
    minutely = [k for k in keys if k.startswith("aggregates/event_type_minutely/")]
    assert minutely and all(Path(k).parts[:2] == ("aggregates", "event_type_minutely") for k in minutely)
