"""Helpers for the aggregate-table tests: sparse event files and the reader
rule of docs/store.md, in DuckDB."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from tests.oracle import stamp_to_us

BASE = datetime(2021, 3, 1, 22, tzinfo=timezone.utc)  # crosses midnight soon
EVENT_TYPES = ["click", "page_view", "purchase", "signup", "search"]


def sparse_events(rows: int, hours: float, customers: int, seed: int) -> list[str]:
    """events-csv lines spread over `hours`: mostly in order with up to two
    minutes of disorder (inside the default lateness), customers so many that
    most (customer, hour) windows hold one event, some re-sent duplicates
    (one written with another UTC offset), a few malformed rows."""
    rng = random.Random(seed)
    step = hours * 3600 / rows
    lines: list[str] = []
    for i in range(rows):
        moment = BASE + timedelta(seconds=i * step - rng.uniform(0, 120))
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        line = f"c{rng.randrange(customers):06d},{rng.choice(EVENT_TYPES)},t{i:08d},{moment.isoformat(timespec='milliseconds')}"
        lines.append(line.replace("+00:00", "Z"))
        if rng.random() < 0.01:
            again = moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(timespec="milliseconds")
            lines.append(line.rsplit(",", 1)[0] + "," + again)
        if rng.random() < 0.001:
            lines.append(f"c1,click,bad{i},not-a-time")
    return lines


def rollup_rows(data_dir: Path, rollup: str) -> duckdb.DuckDBPyRelation:
    """Every row of a rollup's table, as the docs' one-liner reads it."""
    glob = data_dir / "store" / "aggregates" / rollup / "**" / "*.parquet"
    return duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")


def reader_rule_totals(data_dir: Path, rollup: str, key_field: str) -> Counter:
    """(window start in epoch µs, key) -> count by the reader rule: max per
    (window, key, partition), then the sum over partitions."""
    glob = data_dir / "store" / "aggregates" / rollup / "**" / "*.parquet"
    rows = duckdb.sql(f"""
        SELECT epoch_us(window_start), {key_field}, sum(count)::BIGINT
        FROM (
            SELECT window_start, {key_field}, partition, max(count) AS count
            FROM read_parquet('{glob}', hive_partitioning = true)
            GROUP BY ALL
        )
        GROUP BY ALL
    """).fetchall()
    return Counter({(start, key): count for start, key, count in rows})


def exported_counts(export_csv: str) -> Counter:
    """The `export` command's CSV (one key field) as (window start µs, key) -> count."""
    rows = list(csv.reader(io.StringIO(export_csv)))[1:]
    return Counter({(stamp_to_us(start), key): int(count) for start, key, count in rows})
