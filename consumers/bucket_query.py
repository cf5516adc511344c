"""One customer's hourly buckets from the count store: the seed API's answer.

Shared by `query buckets` (the CLI) and the HTTP API, so that both apply the
same rules.
"""

from __future__ import annotations

from datetime import timedelta

from consumers.ports import CountStore
from streams.rollups import RollupSpec
from streams.utc import format_utc


class BadRange(ValueError):
    """The asked range is empty, reversed or longer than the maximum."""


def query_buckets(store: CountStore, rollup: RollupSpec, max_range: timedelta, customer_id: str, start_us: int,
                  end_us: int) -> dict:
    """Every bucket with events whose start lies in [start floored to the
    bucket, end), ascending. Raises BadRange on a bad range."""
    if start_us >= end_us:
        raise BadRange("start must be before end")
    if end_us - start_us > max_range.total_seconds() * 1_000_000:
        raise BadRange(f"range is longer than the configured maximum ({max_range})")
    floor = rollup.window.start_of(start_us)
    buckets = store.buckets(rollup.name, (customer_id,), floor, end_us)
    return {
        "customer_id": customer_id,
        "buckets": [{"ts_start_of_hour": format_utc(start), "count": count} for start, count in buckets],
    }
