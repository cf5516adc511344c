#!/usr/bin/env python3
"""Kernel bake-off: the data plane's steps in the standard library, pyarrow,
polars and DuckDB, on the sparse workload, micro-batch by micro-batch.

    python bench/kernels.py                         # 1M sparse rows, median of 3, updates docs/benchmarks.md
    python bench/kernels.py --rows 200000 --runs 1 --no-docs
    python bench/kernels.py --libraries pyarrow,polars

The file is handed over the way the sources do: micro-batches of 65,536 lines,
each a Python list of `bytes` without the newline. Per batch, each library
runs the same five steps, each timed on its own (wall seconds, summed over the
batches, reported per 1M rows):

  (a) split     the lines into 4 string columns; rows without exactly 4
                fields or with an empty field are invalid
  (b) parse     validate the timestamp contract
                `\\d{4}-\\d{2}-\\d{2}[T ]\\d{2}:\\d{2}(:\\d{2})?(\\.\\d{1,9})?(Z|[+-]\\d{2}(:?\\d{2})?)`
                and parse to UTC epoch microseconds, mixed offsets, exactly as
                `datetime.fromisoformat` (offset required; fraction truncated)
  (c) dedup     the first occurrence in the batch of each (customer, event
                type, transaction, µs) key
  (d) group-by  count per (hour window, customer) and (minute window, event type)
  (e) parquet   write both window tables of the batch as Parquet (zstd)

How each library does (b): a stricter regex picks the rows its own parser is
known to read exactly like Python (years 1700-2199, no February 29th, offsets
below 24 h, seconds present where the parser needs them); the parser reads
those, and the few others (malformed rows, and valid but unusual ones) take
the Python path. Exactness is checked, outside the timings, against a plain
Python reference on every row of every batch of the first run (valid rows,
distinct keys and window counts) and on a fuzz set of mostly valid-looking
timestamps with random digits.

Each library runs in its own process (`--worker`), the libraries in rotated
order, `--runs` times, each run after one untimed warm-up batch; the table
shows the median per step, the RSS after importing the library (and the
kernels' modules), and the peak RSS of the worker (VmHWM; it holds one batch
at a time; the first run, which also checks exactness and times the
alternatives, is left out of it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from itertools import compress, islice, repeat
from operator import floordiv, mod, sub
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LIBRARIES = ["stdlib", "pyarrow", "polars", "duckdb"]
STEPS = ["split", "parse", "dedup", "group", "parquet"]
STEP_TITLES = {"split": "(a) split", "parse": "(b) parse", "dedup": "(c) dedup", "group": "(d) group-by",
               "parquet": "(e) parquet"}
HOUR_US, MINUTE_US = 3_600_000_000, 60_000_000

CONTRACT = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d{1,9})?(?:Z|[+-]\d{2}(?::?\d{2})?)"
_CONTRACT = re.compile(CONTRACT, re.ASCII)
# Contract rows that the libraries' own parsers read exactly as fromisoformat
# does: years 1700-2199 (inside timestamp[ns]), valid day of month except
# February 29th, hours 00-23, minutes and seconds 00-59, offsets below 24 h.
# A fraction only after seconds; `{sec}` makes the seconds required or not.
_STRICT = (r"^(?:1[7-9]\d\d|2[01]\d\d)-"
           r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
           r"[T ](?:[01]\d|2[0-3]):[0-5]\d{sec}(?:Z|[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?)$")
STRICT_SECONDS_OPTIONAL = _STRICT.format(sec=r"(?::[0-5]\d(?:\.\d{1,9})?)?")
STRICT_SECONDS_REQUIRED = _STRICT.format(sec=r":[0-5]\d(?:\.\d{1,9})?")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_fromiso = datetime.fromisoformat


def python_us(text: str) -> int | None:
    """The reference: UTC epoch µs of a contract timestamp, else None."""
    if _CONTRACT.fullmatch(text) is None:
        return None
    try:
        moment = _fromiso(text)
    except ValueError:
        return None
    return (moment - _EPOCH) // _ONE_US


# --- the libraries -------------------------------------------------------------------------------------------

class Stdlib:
    """Columns as lists, every loop in C: one join/decode/split per batch,
    timestamp shapes checked once per distinct shape, `fromisoformat` mapped."""

    name = "stdlib"
    method = ("`b','.join` + `split` (rows with 3 commas); shape = digits→9 via `bytes.translate`, checked once per "
              "distinct shape; `map(fromisoformat)`; a dict of key tuples to first rows; `Counter` of (window, key); "
              "no Parquet writer")
    _NINES = bytes.maketrans(b"0123456789", b"9999999999")
    _SHAPE = re.compile(CONTRACT.replace(r"\d", "9").encode())

    def __init__(self) -> None:
        self.shape_ok: dict[bytes, bool] = {}

    def split(self, lines: list[bytes]):
        ok = list(map((3).__eq__, map(bytes.count, lines, repeat(b","))))
        rows = list(compress(range(len(lines)), ok))
        try:
            fields = b",".join(compress(lines, ok)).decode().split(",") if rows else []
        except UnicodeDecodeError:  # find the rows that are not UTF-8, this once
            for i in rows:
                try:
                    lines[i].decode()
                except UnicodeDecodeError:
                    ok[i] = False
            rows = list(compress(range(len(lines)), ok))
            fields = b",".join(compress(lines, ok)).decode().split(",") if rows else []
        c, e, t, ts = fields[0::4], fields[1::4], fields[2::4], fields[3::4]
        if "" in fields:
            full = list(map(all, zip(c, e, t, ts)))
            c, e, t, ts, rows = (list(compress(x, full)) for x in (c, e, t, ts, rows))
        return c, e, t, ts, rows

    def parse(self, cols):
        c, e, t, ts, rows = cols
        shapes = "\n".join(ts).encode().translate(self._NINES).split(b"\n")
        known = self.shape_ok
        for shape in set(shapes).difference(known):
            known[shape] = self._SHAPE.fullmatch(shape) is not None
        ok = list(map(known.__getitem__, shapes))
        if not all(ok):
            c, e, t, ts, rows = (list(compress(x, ok)) for x in (c, e, t, ts, rows))
        moments: list = []
        while len(moments) < len(ts):
            try:  # items mapped before an exception stay; the failing text is next
                moments.extend(map(_fromiso, ts[len(moments):]))
            except ValueError:
                moments.append(None)
        if None in moments:
            good = list(map(bool, moments))
            c, e, t, rows, moments = (list(compress(x, good)) for x in (c, e, t, rows, moments))
        us = list(map(floordiv, map(sub, moments, repeat(_EPOCH)), repeat(_ONE_US)))
        return c, e, t, us, rows

    def dedup(self, parsed):
        c, e, t, us, rows = parsed
        keys = list(zip(c, e, t, us))
        return dict(zip(reversed(keys), reversed(rows)))  # key -> its first row: the earliest row is written last

    def group(self, firsts):
        c, e, _, us = zip(*firsts) if firsts else ((), (), (), ())
        hours = Counter(zip(map(sub, us, map(mod, us, repeat(HOUR_US))), c))
        minutes = Counter(zip(map(sub, us, map(mod, us, repeat(MINUTE_US))), e))
        return hours, minutes

    def parquet(self, windows, prefix: str) -> int:
        return 0

    # outside the timings
    def valid_rows(self, parsed) -> Counter:
        c, e, t, us, _ = parsed
        return Counter(zip(c, e, t, us))

    def distinct_keys(self, firsts) -> set:
        return set(firsts)

    def window_counts(self, windows) -> tuple[Counter, Counter]:
        return Counter(windows[0]), Counter(windows[1])


class Pyarrow:
    name = "pyarrow"
    method = ("`pa.array(lines, binary)` + `compute.split_pattern`, the 4-field rows' values cast to string and "
              "taken as columns "
              "(a′: `csv.read_csv` of the joined batch); `match_substring_regex` (strict) + `cast` to "
              "timestamp[ns, UTC] + Python for the rest; `Table.group_by(...).aggregate(min row)`; "
              "`group_by(...).aggregate(count_all)` on integer window starts; `parquet.write_table`")

    def __init__(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        self.pa, self.pc, self.pacsv, self.pq = pa, pc, pacsv, pq
        self._every_4th = [pa.array([], pa.int64())] * 4  # index arrays of field j, grown to the largest batch

    def split(self, lines):
        pa, pc = self.pa, self.pc
        lists = pc.split_pattern(pa.array(lines, pa.binary()), b",")
        four = pc.equal(pc.list_value_length(lists), 4)
        rows = pc.indices_nonzero(four)
        flat = lists.filter(four).flatten()  # 4 values per row: row i's field j is value 4i + j
        try:
            flat = flat.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8: such a value becomes empty, which drops its row below
            flat = pa.array([v.decode() if _utf8(v) else "" for v in flat.to_pylist()], pa.string())
        m = len(rows)
        if len(self._every_4th[0]) < m:
            self._every_4th = [pa.array(range(j, 4 * m, 4), pa.int64()) for j in range(4)]
        cols = [flat.take(self._every_4th[j].slice(0, m)) for j in range(4)]
        full = pc.and_(pc.and_(pc.greater(pc.utf8_length(cols[0]), 0), pc.greater(pc.utf8_length(cols[1]), 0)),
                       pc.and_(pc.greater(pc.utf8_length(cols[2]), 0), pc.greater(pc.utf8_length(cols[3]), 0)))
        return pa.table({"c": cols[0], "e": cols[1], "t": cols[2], "ts": cols[3], "row": rows}).filter(full)

    def split_read_csv(self, lines):
        """(a′) the same with pyarrow's CSV reader on the joined batch."""
        import io

        pa, pacsv = self.pa, self.pacsv
        names = ["c", "e", "t", "ts"]
        table = pacsv.read_csv(
            io.BytesIO(b"\n".join(lines)),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(quote_char=False, invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        return table

    def parse(self, table):
        pa, pc = self.pa, self.pc
        ts = table.column("ts").combine_chunks()
        strict = pc.match_substring_regex(ts, STRICT_SECONDS_OPTIONAL)
        ns = pc.cast(pc.if_else(strict, ts, pa.scalar("1970-01-01T00:00Z")), pa.timestamp("ns", "UTC"))
        ns = ns.cast(pa.int64())
        us = pc.divide(pc.subtract(ns, pc.if_else(pc.less(ns, 0), 999, 0)), 1000)  # floor: truncate the fraction
        rest = pc.invert(strict)
        if pc.any(rest).as_py():
            others = [python_us(text) for text in ts.filter(rest).to_pylist()]
            us = pc.replace_with_mask(us, rest, pa.array(others, pa.int64()))
        table = table.drop_columns(["ts"]).append_column("us", us)
        return table.filter(pc.is_valid(us))

    def dedup(self, table):
        return table.group_by(["c", "e", "t", "us"], use_threads=False).aggregate([("row", "min")])

    def group(self, keys):
        pc = self.pc
        us = keys.column("us")
        out = []
        for width, key in ((HOUR_US, "c"), (MINUTE_US, "e")):
            window = pc.subtract(us, pc.modulo(us, width))  # floored modulo: right before 1970 too
            table = self.pa.table({"window": window, "key": keys.column(key)})
            out.append(table.group_by(["window", "key"], use_threads=False).aggregate([([], "count_all")]))
        return out

    def parquet(self, windows, prefix: str) -> int:
        size = 0
        for name, table in zip(("hourly", "minutely"), windows):
            path = f"{prefix}-{name}.parquet"
            self.pq.write_table(table, path, compression="zstd")
            size += os.path.getsize(path)
        return size

    def read_back(self, prefix: str) -> tuple[Counter, Counter]:
        return tuple(self._counts(self.pq.read_table(f"{prefix}-{name}.parquet"), "count_all")
                     for name in ("hourly", "minutely"))

    @staticmethod
    def _counts(table, count: str) -> Counter:
        return Counter(dict(zip(zip(table.column("window").to_pylist(), table.column("key").to_pylist()),
                                table.column(count).to_pylist())))

    def valid_rows(self, table) -> Counter:
        return Counter(zip(*(table.column(n).to_pylist() for n in ("c", "e", "t", "us"))))

    def distinct_keys(self, keys) -> set:
        return set(zip(*(keys.column(n).to_pylist() for n in ("c", "e", "t", "us"))))

    def window_counts(self, windows) -> tuple[Counter, Counter]:
        return tuple(self._counts(w, "count_all") for w in windows)


class Polars:
    name = "polars"
    method = ("`pl.Series(lines, Binary)` → `cast(String)` → `str.split_exact`; `str.contains` (strict) + "
              "`str.to_datetime('%Y-%m-%dT%H:%M:%S%.f%#z', cache=False)` + Python for the rest (`scatter`); "
              "`filter(pl.struct(...).is_first_distinct())`; `group_by(...).len()`; `write_parquet`")

    def __init__(self) -> None:
        import polars as pl

        self.pl = pl

    def split(self, lines):
        pl = self.pl
        text = pl.Series("line", lines, dtype=pl.Binary).cast(pl.String, strict=False)  # not UTF-8: null
        parts = text.str.split_exact(",", 4).struct.unnest()
        frame = parts.select(c="field_0", e="field_1", t="field_2", ts="field_3", rest="field_4").with_row_index("row")
        return frame.filter(pl.col("rest").is_null() & (pl.col("c") != "") & (pl.col("e") != "")
                            & (pl.col("t") != "") & (pl.col("ts") != "")).drop("rest")

    def parse(self, frame):
        pl = self.pl
        ts = frame["ts"]
        strict = ts.str.contains(STRICT_SECONDS_REQUIRED)
        us = (pl.select(pl.when(strict).then(
            ts.str.replace(" ", "T", literal=True, n=1)
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", time_zone="UTC", strict=False, cache=False)
            .dt.epoch("us"))).to_series())
        rest = (~strict).arg_true()
        if len(rest):
            us = us.scatter(rest, pl.Series([python_us(text) for text in ts.gather(rest).to_list()], dtype=pl.Int64))
        return frame.drop("ts").with_columns(us=us).filter(us.is_not_null())

    def dedup(self, frame):
        pl = self.pl
        return frame.filter(pl.struct("c", "e", "t", "us").is_first_distinct())

    def group(self, keys):
        pl = self.pl
        return [keys.group_by(window=pl.col("us") // width * width, key=key).len()
                for width, key in ((HOUR_US, "c"), (MINUTE_US, "e"))]

    def parquet(self, windows, prefix: str) -> int:
        size = 0
        for name, frame in zip(("hourly", "minutely"), windows):
            path = f"{prefix}-{name}.parquet"
            frame.write_parquet(path, compression="zstd")
            size += os.path.getsize(path)
        return size

    def read_back(self, prefix: str) -> tuple[Counter, Counter]:
        return tuple(Counter({(w, k): n for w, k, n in self.pl.read_parquet(f"{prefix}-{name}.parquet")
                             .select("window", "key", "len").iter_rows()}) for name in ("hourly", "minutely"))

    def valid_rows(self, frame) -> Counter:
        return Counter(frame.select("c", "e", "t", "us").iter_rows())

    def distinct_keys(self, keys) -> set:
        return set(keys.select("c", "e", "t", "us").iter_rows())

    def window_counts(self, windows) -> tuple[Counter, Counter]:
        return tuple(Counter({(w, k): n for w, k, n in frame.select("window", "key", "len").iter_rows()})
                     for frame in windows)


class Duckdb:
    name = "duckdb"
    method = ("batch written to a file (tmpfs) + `read_csv` (all VARCHAR, no quoting, bad rows skipped), "
              "`row_number()` for positions; `regexp_full_match` (strict) + `TRY_CAST(... AS TIMESTAMPTZ)` + "
              "Python for the rest; `GROUP BY` key with `min(row)`; `GROUP BY` window, key; "
              "`COPY ... (FORMAT parquet, COMPRESSION zstd)`; temp tables between steps")

    def __init__(self) -> None:
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        tmp = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, self.batch_path = tempfile.mkstemp(prefix="rivulet-kernels-", suffix=".csv", dir=tmp)
        os.close(fd)

    def split(self, lines):
        with open(self.batch_path, "wb") as f:
            f.write(b"\n".join(lines))
            f.write(b"\n")
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE s AS
            SELECT c, e, t, ts, row_number() OVER () - 1 AS row
            FROM read_csv('{self.batch_path}', header = false, auto_detect = false, delim = ',', quote = '',
                          escape = '', columns = {{'c': 'VARCHAR', 'e': 'VARCHAR', 't': 'VARCHAR', 'ts': 'VARCHAR'}},
                          ignore_errors = true)
            WHERE c <> '' AND e <> '' AND t <> '' AND ts <> ''""")
        return "s"

    def parse(self, table):
        con = self.con
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE p AS
            SELECT c, e, t, row, ts, regexp_full_match(ts, '{STRICT_SECONDS_OPTIONAL}') AS strict,
                   CASE WHEN strict THEN epoch_us(TRY_CAST(ts AS TIMESTAMPTZ)) END AS us
            FROM {table}""")
        rest = con.execute("SELECT row, ts FROM p WHERE NOT strict").fetchall()
        if not rest:
            con.execute("CREATE OR REPLACE TEMP TABLE v AS SELECT c, e, t, us, row FROM p WHERE us IS NOT NULL")
            return "v"
        con.execute("CREATE OR REPLACE TEMP TABLE r AS SELECT unnest($1::BIGINT[]) AS row, unnest($2::BIGINT[]) AS us",
                    [[row for row, _ in rest], [python_us(text) for _, text in rest]])
        con.execute("""
            CREATE OR REPLACE TEMP TABLE v AS
            SELECT c, e, t, coalesce(p.us, r.us) AS us, p.row FROM p LEFT JOIN r ON p.row = r.row
            WHERE coalesce(p.us, r.us) IS NOT NULL""")
        return "v"

    def fused(self, lines, prefix: str) -> None:
        """(a)-(e) in three statements: the distinct keys, then each rollup's
        group-by straight into its Parquet file. Not part of the steps."""
        with open(self.batch_path, "wb") as f:
            f.write(b"\n".join(lines))
            f.write(b"\n")
        con = self.con
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE f AS
            WITH s AS (
                SELECT c, e, t, ts, row_number() OVER () - 1 AS row
                FROM read_csv('{self.batch_path}', header = false, auto_detect = false, delim = ',', quote = '',
                              escape = '', columns = {{'c': 'VARCHAR', 'e': 'VARCHAR', 't': 'VARCHAR', 'ts': 'VARCHAR'}},
                              ignore_errors = true)
                WHERE c <> '' AND e <> '' AND t <> '' AND ts <> ''),
            p AS (
                SELECT c, e, t, row, ts, regexp_full_match(ts, '{STRICT_SECONDS_OPTIONAL}') AS strict,
                       CASE WHEN strict THEN epoch_us(TRY_CAST(ts AS TIMESTAMPTZ)) END AS us
                FROM s)
            SELECT * FROM p""")
        rest = con.execute("SELECT row, ts FROM f WHERE NOT strict").fetchall()
        con.execute("CREATE OR REPLACE TEMP TABLE r AS SELECT unnest($1::BIGINT[]) AS row, unnest($2::BIGINT[]) AS us",
                    [[row for row, _ in rest], [python_us(text) for _, text in rest]])
        con.execute("""
            CREATE OR REPLACE TEMP TABLE fk AS
            SELECT c, e, t, coalesce(f.us, r.us) AS us, min(f.row) AS row FROM f LEFT JOIN r ON f.row = r.row
            WHERE coalesce(f.us, r.us) IS NOT NULL GROUP BY ALL""")
        for name, width, key in (("hourly", HOUR_US, "c"), ("minutely", MINUTE_US, "e")):
            con.execute(f"COPY (SELECT us - (((us % {width}) + {width}) % {width}) AS window_start, {key} AS key, "
                        f"count(*) AS n FROM fk GROUP BY ALL) TO '{prefix}-{name}.parquet' "
                        f"(FORMAT parquet, COMPRESSION zstd)")

    def dedup(self, table):
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE k AS SELECT c, e, t, us, min(row) AS row FROM {table} "
                         f"GROUP BY c, e, t, us")
        return "k"

    def group(self, table):
        for name, width, key in (("wh", HOUR_US, "c"), ("wm", MINUTE_US, "e")):
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT us - (((us % {width}) + {width}) % "
                             f"{width}) AS window_start, {key} AS key, count(*) AS n FROM {table} GROUP BY ALL")
        return ["wh", "wm"]

    def parquet(self, windows, prefix: str) -> int:
        size = 0
        for name, table in zip(("hourly", "minutely"), windows):
            path = f"{prefix}-{name}.parquet"
            self.con.execute(f"COPY {table} TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
            size += os.path.getsize(path)
        return size

    def read_back(self, prefix: str) -> tuple[Counter, Counter]:
        return tuple(Counter({(w, k): n for w, k, n in self.con.execute(
            f"SELECT window_start, key, n FROM read_parquet('{prefix}-{name}.parquet')").fetchall()})
            for name in ("hourly", "minutely"))

    def valid_rows(self, table) -> Counter:
        return Counter(self.con.execute(f"SELECT c, e, t, us FROM {table}").fetchall())

    def distinct_keys(self, table) -> set:
        return set(self.con.execute(f"SELECT c, e, t, us FROM {table}").fetchall())

    def window_counts(self, windows) -> tuple[Counter, Counter]:
        return tuple(Counter({(w, k): n for w, k, n in self.con.execute(f"SELECT window_start, key, n FROM {t}").fetchall()})
                     for t in windows)

    def close(self) -> None:
        os.unlink(self.batch_path)


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


# --- the reference and the fuzz set (outside the timings) ----------------------------------------------------

def reference(lines: list[bytes]) -> tuple[Counter, set, Counter, Counter]:
    """Plain per-row Python: valid rows, distinct keys, window counts."""
    valid: Counter = Counter()
    for raw in lines:
        try:
            fields = raw.decode().split(",")
        except UnicodeDecodeError:
            continue
        if len(fields) != 4 or not all(fields):
            continue
        us = python_us(fields[3])
        if us is not None:
            valid[(fields[0], fields[1], fields[2], us)] += 1
    keys = set(valid)
    hours = Counter((k[3] - k[3] % HOUR_US, k[0]) for k in keys)
    minutes = Counter((k[3] - k[3] % MINUTE_US, k[1]) for k in keys)
    return valid, keys, hours, minutes


def fuzz_lines(n: int = 20_000, seed: int = 5) -> list[bytes]:
    """Rows whose timestamps look valid, with random digits (impossible
    dates, hour 24, second 60, offsets past 24 h, years 0000 and 9999, Feb
    29th) and every contract form, plus near misses of the contract."""
    import random

    rng = random.Random(seed)

    def two(hi: int) -> str:
        return f"{rng.randrange(hi):02d}"

    out = []
    for i in range(n):
        year = rng.choice([f"{rng.randrange(10000):04d}", "2020", "2021", "2100", "2000", "1969", "1700", "0001", "9999"])
        month = rng.choice([two(13), "02", "13", "00"]) if rng.random() < 0.3 else f"{rng.randint(1, 12):02d}"
        day = rng.choice([two(32), "29", "30", "31", "00"]) if rng.random() < 0.4 else f"{rng.randint(1, 28):02d}"
        hour = rng.choice([two(25), "24"]) if rng.random() < 0.1 else two(24)
        minute = rng.choice([two(61), "60"]) if rng.random() < 0.1 else two(60)
        text = f"{year}-{month}-{day}{rng.choice('T ')}{hour}:{minute}"
        if rng.random() < 0.8:
            text += ":" + (rng.choice([two(61), "60"]) if rng.random() < 0.1 else two(60))
        if rng.random() < 0.6:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9)))
        sign = rng.choice("+-")
        hh = rng.choice([two(25), "23", "24", "99"]) if rng.random() < 0.2 else two(15)
        mm = rng.choice([two(100), "59", "60"]) if rng.random() < 0.2 else rng.choice(["00", "30", "45"])
        text += rng.choice(["Z", f"{sign}{hh}", f"{sign}{hh}{mm}", f"{sign}{hh}:{mm}", f"{sign}{hh}:{mm}"])
        if rng.random() < 0.05:  # a near miss: one character changed, added or removed
            at = rng.randrange(len(text))
            text = rng.choice([text[:at] + rng.choice("0123456789:-.+TZ ,") + text[at + 1:],
                               text[:at] + rng.choice("0123456789:.") + text[at:], text[:at] + text[at + 1:]])
        out.append(f"c{i % 97},e{i % 5},f{i},{text}".encode())
    return out


# --- the worker --------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def batches(path: str, size: int):
    with open(path, "rb") as f:
        first = f.readline()
        if not first.startswith(b"customer_id,"):
            f.seek(0)
        while True:
            lines = [line[:-1] if line.endswith(b"\n") else line for line in islice(f, size)]
            if not lines:
                return
            yield lines


def worker(library: str, path: str, size: int, verify: bool) -> dict:
    started = time.perf_counter()
    kernels = {"stdlib": Stdlib, "pyarrow": Pyarrow, "polars": Polars, "duckdb": Duckdb}[library]()
    import_s = time.perf_counter() - started
    rss_import = _status_kib("VmRSS")
    wall = dict.fromkeys(STEPS, 0.0)
    cpu = dict.fromkeys(STEPS, 0.0)
    alt = 0.0
    counts = Counter()
    mismatches: list[str] = []
    out_dir = tempfile.mkdtemp(prefix="rivulet-kernels-")
    clock, cpu_clock = time.perf_counter, time.process_time
    try:
        # One untimed warm-up batch: the first batches otherwise pay for the
        # allocators' and caches' growth (pyarrow's first two batches took 3x).
        warm = next(batches(path, size), [])
        if warm:
            kernels.parquet(kernels.group(kernels.dedup(kernels.parse(kernels.split(warm)))),
                            os.path.join(out_dir, "warm-up"))
        for number, lines in enumerate(batches(path, size)):
            counts["rows"] += len(lines)
            counts["batches"] += 1
            w0, c0 = clock(), cpu_clock()
            cols = kernels.split(lines)
            w1, c1 = clock(), cpu_clock()
            parsed = kernels.parse(cols)
            w2, c2 = clock(), cpu_clock()
            keys = kernels.dedup(parsed)
            w3, c3 = clock(), cpu_clock()
            windows = kernels.group(keys)
            w4, c4 = clock(), cpu_clock()
            counts["parquet_bytes"] += kernels.parquet(windows, os.path.join(out_dir, f"{number:05d}"))
            w5, c5 = clock(), cpu_clock()
            for step, (a, b, ca, cb) in zip(STEPS, ((w0, w1, c0, c1), (w1, w2, c1, c2), (w2, w3, c2, c3),
                                                    (w3, w4, c3, c4), (w4, w5, c4, c5))):
                wall[step] += b - a
                cpu[step] += cb - ca
            if verify and hasattr(kernels, "split_read_csv"):  # the alternatives: in the checked run only
                a = clock()
                kernels.split_read_csv(lines)
                alt += clock() - a
            if verify and hasattr(kernels, "fused"):
                a = clock()
                kernels.fused(lines, os.path.join(out_dir, f"fused-{number:05d}"))
                alt += clock() - a
                if kernels.distinct_keys("fk") != reference(lines)[1]:
                    mismatches.append(f"batch {number}: fused distinct keys differ")
            if verify:
                mismatches += compare(kernels, lines, parsed, keys, windows, f"batch {number}", counts)
                if hasattr(kernels, "read_back") and kernels.read_back(os.path.join(out_dir, f"{number:05d}")) \
                        != kernels.window_counts(windows):
                    mismatches.append(f"batch {number}: the Parquet files do not hold the window counts")
        if verify:
            lines = fuzz_lines()
            cols = kernels.split(lines)
            parsed = kernels.parse(cols)
            keys = kernels.dedup(parsed)
            windows = kernels.group(keys)
            fuzz_counts: Counter = Counter()
            mismatches += compare(kernels, lines, parsed, keys, windows, "fuzz", fuzz_counts)
            counts["fuzz_rows"] = len(lines)
            counts["fuzz_valid"] = fuzz_counts["valid"]
    finally:
        if hasattr(kernels, "close"):
            kernels.close()
        for name in os.listdir(out_dir):
            os.unlink(os.path.join(out_dir, name))
        os.rmdir(out_dir)
    has_alternative = verify and (hasattr(kernels, "split_read_csv") or hasattr(kernels, "fused"))
    return {"library": library, "versions": versions(library), "method": kernels.method, "import_s": import_s,
            "rss_import_mib": rss_import / 1024, "rss_peak_mib": _status_kib("VmHWM") / 1024, "wall": wall,
            "cpu": cpu, "alternative": alt if has_alternative else None, "counts": dict(counts), "verified": verify,
            "mismatches": mismatches[:20], "mismatch_count": len(mismatches)}


def compare(kernels, lines, parsed, keys, windows, where: str, counts: Counter) -> list[str]:
    valid, distinct, hours, minutes = reference(lines)
    got_valid = kernels.valid_rows(parsed)
    got_keys = kernels.distinct_keys(keys)
    got_hours, got_minutes = kernels.window_counts(windows)
    counts["valid"] += sum(valid.values())
    counts["distinct"] += len(distinct)
    counts["windows"] += len(hours) + len(minutes)
    problems = []
    if got_valid != valid:
        extra, missing = got_valid - valid, valid - got_valid
        problems.append(f"{where}: valid rows differ: {sum(extra.values())} extra e.g. {list(extra)[:3]}, "
                        f"{sum(missing.values())} missing e.g. {list(missing)[:3]}")
    if got_keys != distinct:
        problems.append(f"{where}: distinct keys differ ({len(got_keys)} vs {len(distinct)})")
    if got_hours != hours or got_minutes != minutes:
        problems.append(f"{where}: window counts differ")
    return problems


def versions(library: str) -> str:
    if library == "stdlib":
        return f"Python {sys.version.split()[0]}"
    module = __import__(library)
    return f"{library} {module.__version__}"


# --- the orchestrator --------------------------------------------------------------------------------------

def run_worker(library: str, path: Path, size: int, verify: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", library, "--input", str(path), "--batch",
           str(size)] + (["--verify"] if verify else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{library} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict]], rows: int) -> str:
    per_m = 1_000_000 / rows
    head = ["library"] + [STEP_TITLES[s] for s in STEPS] + ["total (a)-(e)", "CPU s", "import s", "RSS after import MiB",
                                                             "peak RSS MiB", "exact"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    for library, runs in results.items():
        step_s = {s: statistics.median(r["wall"][s] for r in runs) * per_m for s in STEPS}
        cells = [f"{step_s[s]:.3f}" if (s != "parquet" or library != "stdlib") else "n/a" for s in STEPS]
        total = sum(step_s.values())
        cpu = statistics.median(sum(r["cpu"].values()) for r in runs) * per_m
        verified = [r for r in runs if r["verified"]]
        timed = [r for r in runs if not r["verified"]] or runs  # the checks' own memory is not the kernels'
        exact = ("yes" if all(r["mismatch_count"] == 0 for r in verified) else "NO") if verified else "not checked"
        lines.append("| " + " | ".join([library, *cells, f"{total:.3f}", f"{cpu:.3f}",
                                         f"{statistics.median(r['import_s'] for r in runs):.2f}",
                                         f"{statistics.median(r['rss_import_mib'] for r in runs):.0f}",
                                         f"{statistics.median(r['rss_peak_mib'] for r in timed):.0f}", exact]) + " |")
    return "\n".join(lines)


def update_docs(doc: Path, section: str) -> None:
    """Replace the "## Kernel bake-off" section (to the next "## " heading),
    or append it; the rest of the file stays as it is."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    match = re.search(r"^## Kernel bake-off[^\n]*\n", text, re.MULTILINE)
    if match is None:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = re.compile(r"^## ", re.MULTILINE).search(text, match.end())
        text = text[:match.start()] + section.rstrip("\n") + "\n" + ("\n" + text[end.start():] if end else "")
    doc.write_text(text)


def fastest(results: dict[str, list[dict]]) -> str:
    parts = []
    for step in STEPS:
        times = {name: statistics.median(r["wall"][step] for r in runs) for name, runs in results.items()
                 if not (step == "parquet" and name == "stdlib")}
        if times:
            ranked = sorted(times, key=times.get)
            lead = ranked[0]
            runner = ""
            if len(ranked) > 1 and times[lead]:
                runner = f" ({times[ranked[1]] / times[lead]:.2f}× the speed of {ranked[1]})"
            parts.append(f"{STEP_TITLES[step]} {lead}{runner}")
    totals = {name: sum(statistics.median(r["wall"][step] for r in runs) for step in STEPS)
              for name, runs in results.items() if name != "stdlib"}
    text = "Fastest per step: " + "; ".join(parts) + "."
    if totals:
        lead = min(totals, key=totals.get)
        text += f" Fastest over (a)-(e): {lead}"
        if "stdlib" in results:
            def a_to_d(name: str) -> float:
                return sum(statistics.median(r["wall"][step] for r in results[name]) for step in STEPS[:4])

            text += f"; over (a)-(d) it runs at {a_to_d('stdlib') / a_to_d(lead):.1f}× the speed of the stdlib columns"
        text += "."
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--workdir", default=None, help="where the input file is cached")
    parser.add_argument("--docs", default=str(BENCH.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    parser.add_argument("--no-verify", action="store_true", help="skip the exactness check of the first run")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.input, args.batch, args.verify)))
        return

    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rivulet-kernels-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"events-sparse-{args.rows}-{args.seed if args.seed is not None else 'default'}.csv"
    if not path.exists():
        sys.path.insert(0, str(BENCH.parent))
        from bench.generate_events import write_events

        write_events(str(path) + ".part", args.rows, "sparse", args.seed, header=True)
        os.replace(str(path) + ".part", path)
    results: dict[str, list[dict]] = {name: [] for name in libraries}
    load_before = os.getloadavg()[0]
    for run in range(args.runs):
        order = libraries[run % len(libraries):] + libraries[:run % len(libraries)]
        for library in order:
            result = run_worker(library, path, args.batch, verify=run == 0 and not args.no_verify)
            results[library].append(result)
            print(f"  run {run + 1} {library}: " + ", ".join(f"{s} {result['wall'][s]:.3f}" for s in STEPS)
                  + (f"; {result['mismatch_count']} mismatches" if result["verified"] else ""), file=sys.stderr,
                  flush=True)
            for problem in result["mismatches"]:
                print(f"    {problem}", file=sys.stderr)
    load_after = os.getloadavg()[0]
    first = next(iter(results.values()))[0]
    rows = first["counts"]["rows"]
    checked = [r for runs in results.values() for r in runs if r["verified"]]
    valid = checked[0]["counts"] if checked else None
    versions_text = ", ".join(results[name][0]["versions"] for name in libraries)
    body = table(results, rows)
    def alternative(library: str) -> float | None:
        timed = [r["alternative"] for r in results.get(library, []) if r["alternative"] is not None]
        return statistics.median(timed) * 1_000_000 / rows if timed else None
    notes = [
        f"{rows:,} rows of the sparse workload (`bench/generate_events.py --shape sparse`, seed "
        f"{args.seed if args.seed is not None else 42}) in micro-batches of {args.batch:,} lines (a Python list of "
        f"`bytes`), each library in its own process, median of {args.runs} run(s), seconds per 1M rows (wall); "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} → {load_after:.1f}; {versions_text}.",
    ]
    notes.append("(b) everywhere but the stdlib: a stricter regex (years 1700-2199, no February 29th, hours 00-23, "
                 "minutes and seconds 00-59, offsets below 24 h, seconds before a fraction; polars also needs the "
                 "seconds) picks the rows the library's own parser reads exactly as `fromisoformat`; the rest (here "
                 "the ~0.1% malformed rows) go through Python, inside the timing.")
    if valid:
        notes.append(f"Exactness (first run, outside the timings): every batch's valid rows ({valid['valid']:,}), "
                     f"distinct keys ({valid['distinct']:,}) and windows ({valid['windows']:,}) compared with a "
                     f"plain Python reference (`datetime.fromisoformat` after the contract regex), and "
                     f"{valid.get('fuzz_rows', 0):,} fuzzed timestamps ({valid.get('fuzz_valid', 0):,} valid).")
    if alternative("pyarrow") is not None:
        notes.append(f"(a′), first run: pyarrow `csv.read_csv` of the joined batch instead of `split_pattern`: "
                     f"{alternative('pyarrow'):.3f} s per 1M rows (it skips bad rows; their positions only come "
                     f"through an `invalid_row_handler`).")
    if alternative("duckdb") is not None:
        notes.append(f"First run: DuckDB with the steps fused into three statements per batch (the distinct keys as one "
                     f"table from `read_csv`, then each rollup's `GROUP BY` straight into `COPY ... TO` Parquet): "
                     f"{alternative('duckdb'):.3f} s per 1M rows for (a)-(e); the step-wise figures pay a temp "
                     f"table per step.")
    methods = "\n".join(f"* **{name}**: {results[name][0]['method']}" for name in libraries)
    notes.insert(1, fastest(results))
    section = ("## Kernel bake-off\n\n`bench/kernels.py`: " + notes[0] + "\n\n" + body + "\n\n"
               + "\n".join(f"* {note}" for note in notes[1:]) + "\n\nHow each library does the steps:\n\n" + methods + "\n")
    print()
    print(section)
    if not args.no_docs:
        update_docs(Path(args.docs), section)
        print(f"updated {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
