"""The Parquet writer of the object sinks (raw events and window aggregates).

pyarrow writes each object: polars 2.1's writer goes through its streaming
engine, about 1 ms of mostly fixed cost per object, pyarrow's about 0.3 ms
for a table of a few hundred rows (docs/benchmarks.md, "Third round").
pyarrow is imported when the first object is buffered or written, not with
this module: it adds ~30 MB to a process's RSS (mostly its libraries'
pages), which a run that writes no objects (counts only) should not pay.
The process picks Arrow's allocator before that import (daemon/__init__.py).
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import pyarrow as pa


@cache
def arrow_parquet() -> tuple[ModuleType, ModuleType]:
    """`pyarrow` and `pyarrow.parquet`, imported on first use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def constant_column(value: str, rows: int) -> pa.Array:
    """`value` in each of `rows` rows, as a large string (the type polars
    wrote): an object's partition column."""
    pa, _ = arrow_parquet()
    return pa.repeat(pa.scalar(value, pa.large_string()), rows)


def zstd_parquet(table: pa.Table, dictionary_columns: Sequence[str], statistics_columns: Sequence[str]) -> bytes:
    """`table` as one zstd Parquet object. Only `dictionary_columns`, whose
    values repeat within an object, are dictionary encoded: on mostly
    distinct columns (ids, times, positions) a dictionary costs a third of
    the writer's time and, after zstd, makes the object larger. Only
    `statistics_columns` get min/max statistics: those a reader prunes row
    groups by (times, positions); an object's strings span nearly their
    whole range, and their statistics cost the writer 10-15% for nothing.
    The same table gives the same bytes (for one pyarrow version)."""
    pa, pq = arrow_parquet()
    out = pa.BufferOutputStream()
    pq.write_table(table, out, compression="zstd", use_dictionary=list(dictionary_columns),
                   write_statistics=list(statistics_columns))
    return out.getvalue().to_pybytes()
