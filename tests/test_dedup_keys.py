"""DedupKeys against a plain set of every key ever seen, including when the
64-bit row hash collides (a hasher that maps keys to a handful of values)."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.dedup_keys import DedupKeys
from streams.event_columns import KEY_COLUMNS

_keys = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y"]), st.sampled_from(["1", "2"]),
                  st.integers(0, 3))


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={KEY_COLUMNS[0]: pl.String, KEY_COLUMNS[1]: pl.String, KEY_COLUMNS[2]: pl.String,
                                      KEY_COLUMNS[3]: pl.Int64}, orient="row")


def _colliding(keys: pl.DataFrame) -> pl.Series:
    return keys.hash_rows() % 3  # three hash values for 48 keys: most keys collide


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(_keys, min_size=1, max_size=12), min_size=1, max_size=8),
       colliding=st.booleans())
def test_first_seen_matches_a_set_of_every_key(batches, colliding):
    dedup = DedupKeys(_colliding) if colliding else DedupKeys()
    seen: set[tuple] = set()
    for batch in batches:
        expected = []
        for key in batch:
            expected.append(key not in seen)
            seen.add(key)
        mask = dedup.first_seen(_frame(batch))
        got = [True] * len(batch) if mask is None else mask.to_list()
        assert got == expected


def test_forget_drops_a_generation_once_the_watermark_passes_its_minute():
    dedup = DedupKeys()
    minute = 60_000_000
    assert dedup.first_seen(_frame([("a", "x", "1", 5)])) is None
    dedup.forget(0)  # previous is empty: current becomes previous
    assert dedup.first_seen(_frame([("a", "x", "1", 5)])).to_list() == [False]  # still known
    dedup.forget(minute)  # past the minute of the newest key of `previous`
    dedup.forget(minute)
    assert len(dedup) == 0
