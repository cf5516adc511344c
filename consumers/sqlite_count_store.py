"""The count store on SQLite: the local adapter of `CountStore`.

Batch at a time
---------------
`upsert` takes the counter's frames (`WindowCounts`, one per rollup and
partition) and keeps them, encoded, until `WRITE_ROWS` windows wait; then
it writes them into a transaction that stays open, in one pass sorted by the
table's key (max-upsert statements whose rows come as JSON arrays), and
`commit()` writes what still waits and ends the transaction.
`CountSink.flush()` calls `commit()` at every checkpoint, before the source
commits its position, so the store writes ONE transaction per checkpoint
instead of one per batch.

A crash between checkpoints loses only what was not committed: all of it
came from records after the source's last committed checkpoint, so the
source replays them, and the max-upsert makes the replay land on the same
counts (never doubled, never lowered). Committing earlier than a checkpoint
is always safe for the same reason (`CountSink` also commits on its own when
no checkpoint comes, e.g. a file run, which has no source commit).

A commit is all or nothing: on any error (SQLite rolls a transaction back by
itself on SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM) it rolls back, and the
upserts since the last commit stay pending (encoded frames, not Python rows)
for the next `commit`, so a retried call (`RetryingCountStore`) never commits
a transaction with a hole in it (the ids it gave new keys are looked up
again: see below). A failed pass does the same, and its `upsert` call leaves
nothing pending of its own, since its retry brings the frames again.

Queries (`buckets`, `total`, `export`) read through a second connection, so
they see what is committed (what survives a crash), and never wait behind the
writer: WAL lets one writer and readers work at once. Each connection has its
own lock (a Python sqlite3 connection is not for two threads at once); the
HTTP API queries from its own threads while a job writes.

Tables
------
A series is a (rollup, key) pair, a partition a source partition's name;
both are interned as integers, and a count is stored once per (series id,
window start, partition id)::

    series     (id, rollup, key)        UNIQUE (rollup, key)
    partitions (id, name)               UNIQUE (name)
    counts     (series, window_start, partition, count, final)
               PRIMARY KEY (series, window_start, partition), WITHOUT ROWID

and the VIEW `window_counts` (rollup, key, window_start, partition, count,
final) gives the rows as earlier versions stored them, for SQL written
against those (reads only). `buckets` and `total` look the series id up in
`series`' unique index, then read one range of `counts`.

`key` is the compact JSON array of the key field values, byte for byte
`json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))` (the
encoding of earlier versions). `upsert` builds it for a whole frame with
polars string expressions (`key_column`): every value is escaped as JSON
requires (`"`, `\\`, control characters), so two different keys never share a
text.

Ids in bulk: the store keeps, per rollup, a frame of the (key, id) pairs it
knows, and joins each frame's key column against it (polars, no Python call
per window). Keys it does not know go to SQLite as one JSON array: one
`INSERT OR IGNORE ... SELECT FROM json_each(?)`, one select of their ids.
That runs inside the write transaction (`BEGIN IMMEDIATE`), so an id another
process gave the same key first is found, not duplicated. Ids given in the
open transaction are trusted only once it commits: when SQLite rolls it back,
they are forgotten and the re-applied upserts look their keys up again (the
ids may be another key's by then). Committed ids never change. The frame is
bounded (`KNOWN_SERIES_MAX`); past it, it restarts from the last
transaction's keys.

Migration: a file written by an earlier version has a TABLE `window_counts`
(the view's columns, primary key (rollup, key, window_start, partition)).
Opening it copies it into the tables above and drops it, in one transaction
(a second process opening the file waits, then finds it done). The 1M sparse
file's 563k windows (78 MB): 2.0 s wall, 1.4 CPU s, every row the same. The
old table's pages stay in the file as free pages, used again as it grows
(`VACUUM` gives them back). `read_store_status` reads either layout.

Sorted passes, one statement at a time
--------------------------------------
Python's sqlite3 lets go of the GIL around each step of a statement, and
`executemany` steps once per row: each row then waits to take the GIL back
from whichever thread holds it. Alone that is cheap, but the store writes on
its own thread beside the parser and the other sinks (`SinkLane`). The 1M
sparse file's 563k windows in 44 frames, one transaction (a throwaway
script, single runs): `executemany` 1.38 s alone and 217 s beside a thread
running Python; one `INSERT ... SELECT FROM json_each(?)` per frame 1.19 s
alone and 1.59 s beside it. So the rows go as one JSON array of integer
arrays, built by polars (`_rows_json`), and SQLite inserts them in one step
with the GIL let go.

Sparse windows land all over the table (key first, see below), and each
frame's rows touched the leaves of most keys again. So upserts wait until
`WRITE_ROWS` windows (or a commit) can go in one pass, sorted by the table's
key across frames, which reaches each leaf once. Synthetic rows of the same
shape, single runs: the 563k windows as 44 sorted statements took 0.90 to
1.13 s, as 4 statements 0.71 to 0.80 s, as one 0.55 to 0.59 s. At 10M
sparse rows (2.1M windows, a table larger than the page cache, so every
pass also reads and spills most leaves) the count lane of the default `run`
took 5.0 CPU s with passes of 32,768 windows, 3.5 to 3.75 s with 131,072,
3.3 s with 262,144 (single runs). A pass goes as statements of
`STATEMENT_ROWS` (consecutive slices of the sorted rows): as one statement,
131,072 windows took 57 MiB more peak RSS (402 against 345 MiB) for the
JSON text and SQLite's parse of it; as slices, 352 MiB.

Table layout, measured
----------------------
Synthetic sparse stream like the bench's (10k customers over 30 days, 516 of
them per hour, plus 5 event types per minute: 566k windows in 200 batches of
about 3.6 event-hours), committed every 13 batches (about one checkpoint a
second in the bench run). CPU seconds of the upserts (process time: the
machine was shared, wall times were noisy), then one 30-day `buckets` and
one `total` query per key (a throwaway script, not kept):

=====================================================  ======  ========  =======  =====
layout                                                  upsert  buckets   total    file
=====================================================  ======  ========  =======  =====
before: per-batch commits, json.dumps per window        6.3 s   0.03 ms   0.01 ms  47 MB
PK (rollup, key, start, partition), 2 MiB page cache    3.4 s   0.03 ms   0.01 ms  47 MB
same, 64 MiB page cache, rows sent in key order         2.5 s   0.03 ms   0.01 ms  47 MB
PK (rollup, start, key, partition) + covering index     4.1 s   0.03 ms   0.01 ms  92 MB
  on (rollup, key, start, partition, count)
same, 64 MiB page cache                                 3.0 s   0.03 ms   0.01 ms  92 MB
PK (rollup, start, key, partition), no index            1.4 s   50 ms     39 ms    (full scans)
=====================================================  ======  ========  =======  =====

(The rows above had a short partition name; a file's partition is
`file:sha256:<64 hex>`, 76 characters, in every row.) The window-first key
does append closed windows, but `buckets` and `total` need the key order,
and an index in key order takes the same scattered writes the table took, on
top of the appends (and without `count` in it, SQLite's planner does not
even use it). So the primary key stays key-first: (series id, start,
partition id) now. What pays is the bulk encoding, one transaction per
checkpoint, a page cache that holds the hot leaves, rows sent in key order,
and rows of integers. At 90 days (1.7M windows) key-first cost 10.4 s vs
12.9 s window-first with the index. Feeding `executemany` from `zip` of the
frame's column lists was the fastest way tried on one thread (566k windows,
one transaction: 1.8 s; 1.96 s with `DataFrame.iter_rows()`; 2.7 s with one
`json_each` statement per frame, of key texts), before the store wrote
beside other threads (above).

Before the ids, this class on the same stream (CPU / wall seconds of the
upserts): 6.1 / 12.3 s with per-batch commits (half the wall time waiting
on I/O after 200 commits), 2.4 / 3.1 s with one transaction per checkpoint.
The page cache: at 30 days 3.2 s CPU with SQLite's default 2 MiB, 2.6 s with
16 MiB, 2.4 s with 32 or 64 MiB; it costs memory only as pages are used.

The ids (series and partition interned), on the 1M sparse bench file's
563,377 windows in 61 steps (both rollups a step), a commit every 13 steps,
the file's 76-character partition, 8 MiB page cache; 5 alternated runs each,
medians (range), load average 6.6-7.6 on 2 shared cores:

=======================================  ======================  ========================
                                         text in every row       ids
=======================================  ======================  ========================
upserts alone, CPU s                     3.59 (3.35-3.75)        1.62 (1.36-1.74)
upserts alone, wall s                    5.45 (5.36-7.18)        2.06 (1.76-2.66)
file                                     77.5 MB                 13.0 MB
`run` counts_only.toml, CPU s            6.17 (6.01-6.97)        4.63 (4.29-4.85)
`run`, of which sys                      1.73                    0.46
`run`, wall s                            10.4 (6.6-11.8)         6.0 (5.2-7.4)
`run`, peak RSS                          140 MiB                 142 MiB
`run`, pwrite64 / pread64 / fdatasync    362,526 / 274,658 / 38  23,122 / 9,218 / 17
`buckets` 30 days / `total`, per key     0.04-0.06 / 0.02 ms     0.04-0.06 / 0.01-0.02 ms
`export` customer_hourly (371k windows)  1.5-2.1 s               1.7-1.8 s
`read_store_status`                      0.40-0.45 s             0.22-0.23 s
=======================================  ======================  ========================

(`run`: `--input` the 1M sparse file, a fresh `--data-dir`, `--json`; the
syscalls counted with `strace -f -c` in one run each.) Of the 1.9 s of one
profiled upsert run, `executemany` takes 1.1 s, polars (encoding, join, sort;
process time over its threads) 0.4 s, new ids and commits 0.2 s. The floor:
563k inserts in key order into an empty table of this shape take 0.71 s; the
rest is leaves scattered one per active key. Not kept: the partition id
written into the statement (one parameter fewer per row; 1.38-1.62 vs
1.41-1.58 CPU s, 4 alternated runs); a 2 or 16 MiB page cache (1.73-2.18 and
1.54-1.88 s vs 1.56-1.94 s with 8 MiB, 3 alternated runs).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterator, Sequence

import polars as pl

from streams.window_counts import COUNT, FINAL, WINDOW_START, WindowCounts

_TABLES = (
    """
CREATE TABLE IF NOT EXISTS series (
    id     INTEGER PRIMARY KEY,
    rollup TEXT NOT NULL,
    key    TEXT NOT NULL,  -- JSON array of the key field values
    UNIQUE (rollup, key)
)""",
    """
CREATE TABLE IF NOT EXISTS partitions (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE  -- source partition: a file, a spool, a shard
)""",
    """
CREATE TABLE IF NOT EXISTS counts (
    series       INTEGER NOT NULL,  -- series.id
    window_start INTEGER NOT NULL,  -- UTC epoch microseconds
    partition    INTEGER NOT NULL,  -- partitions.id
    count        INTEGER NOT NULL,
    final        INTEGER NOT NULL,
    PRIMARY KEY (series, window_start, partition)
) WITHOUT ROWID""",
)

# The rows as earlier versions stored them, for SQL written against those.
_VIEW = """
CREATE VIEW IF NOT EXISTS window_counts (rollup, key, window_start, partition, count, final) AS
SELECT s.rollup, s.key, c.window_start, p.name, c.count, c.final
FROM counts AS c JOIN series AS s ON s.id = c.series JOIN partitions AS p ON p.id = c.partition
"""

# Earlier versions' TABLE window_counts (rollup, key, window_start, partition,
# count, final), primary key in that order, into the tables above. Ids are
# given in the old key order, so the counts go in in primary-key order.
_MIGRATION = (
    "INSERT INTO series (rollup, key) SELECT DISTINCT rollup, key FROM window_counts ORDER BY rollup, key",
    "INSERT INTO partitions (name) SELECT DISTINCT partition FROM window_counts ORDER BY partition",
    """
INSERT INTO counts (series, window_start, partition, count, final)
SELECT s.id, w.window_start, p.id, w.count, w.final
FROM window_counts AS w
JOIN series AS s ON s.rollup = w.rollup AND s.key = w.key
JOIN partitions AS p ON p.name = w.partition
ORDER BY 1, 2, 3""",
    "DROP TABLE window_counts",
)

# max(): a replay or a provisional count never lowers nor doubles a count.
# A statement's rows come as one JSON array of [series, start, partition,
# count, final] arrays (`_rows_json`), so that SQLite writes them all in one
# statement: Python's sqlite3 lets go of the GIL around each statement, and
# `executemany` took it back after every row, behind whichever thread held
# it (module docstring, "Sorted passes, one statement at a time").
_UPSERT = """
INSERT INTO counts (series, window_start, partition, count, final)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?) WHERE true
ON CONFLICT (series, window_start, partition) DO UPDATE SET
    count = max(count, excluded.count),
    final = max(final, excluded.final)
"""

# Keys not seen yet, as one JSON array: ids for those that have none, then the
# ids of all of them (some may have come from another process).
_NEW_SERIES = "INSERT OR IGNORE INTO series (rollup, key) SELECT ?, value FROM json_each(?)"
_SERIES_IDS = "SELECT key, id FROM series WHERE rollup = ? AND key IN (SELECT value FROM json_each(?))"

# The writer's page cache: sparse traffic touches one leaf page per active key
# (see the table in the module docstring: 3.4 s with SQLite's default 2 MiB,
# 2.5 s with 64 MiB, before the ids). 16 MiB kept most of that gain; with the
# bulk encoding and one transaction per checkpoint, 8 MiB measured the same
# (the 1M sparse bench's windows, upserts alone, 3 alternated runs: 1.86-1.96
# CPU s with 8 MiB, 1.91-2.08 s with 16 MiB; `run` counts-only on 10M sparse
# rows: 36.9 vs 39.6 CPU s) for 10 MB less peak RSS (1M sparse counts-only:
# 149-152 vs 159-162 MB), and still does with the ids (module docstring).
# Pages are only taken as they are used.
CACHE_KIB = 8 * 1024

# Pages of a new file (an existing file keeps its own: SQLite changes it only
# by VACUUM outside WAL mode). A pass rewrites most leaves of the table, and
# WAL writes each changed page whole, so larger pages cost less per window:
# the upserts of the 1M sparse bench's windows, alone (CPU s, two runs each),
# 1.02-1.03 with 4 KiB (SQLite's default), 0.94-0.96 with 16 KiB, 0.91 with
# 32 and 64; of the 10M file's 2.1M windows, 4.8-5.2 with 4 KiB and 3.9-4.3
# with 16 (system time 1.3-1.6 against 0.8-0.9), 3.9-4.0 with 32 or 64. A
# query reads a range of one series: one page either way.
PAGE_BYTES = 16_384

# Upserted windows wait until this many can be written in one sorted pass
# (or a commit comes): a pass takes the leaves of all active keys once, so
# fewer, larger passes touch fewer pages. A pass goes as statements of
# `STATEMENT_ROWS`, consecutive slices of the sorted rows: the memory of a
# statement (its JSON text, twice, and SQLite's parse of it: about 100 bytes
# a window) stays bounded while the pass grows (module docstring).
WRITE_ROWS = 131_072
STATEMENT_ROWS = 32_768

# Known series ids kept per rollup, a frame of key text and id (20 bytes a key
# of up to 12 bytes, about 55 for a two-field key of 40): past this, it
# restarts from the keys of the last transaction, and keys it no longer holds
# are looked up in the table again.
KNOWN_SERIES_MAX = 500_000

# How JSON escapes a string (as json.dumps does): `"` and `\`, the short forms,
# and every other control character as \u00XX (lower-case hex).
_JSON_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_JSON_ESCAPES.update({'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ESCAPE_FROM, _ESCAPE_TO = list(_JSON_ESCAPES), list(_JSON_ESCAPES.values())

KEY = "key"
_ID = "series_id"
_PARTITION = "partition_id"
_IDS_SCHEMA = {KEY: pl.String(), _ID: pl.Int64()}


def encode_key(key: tuple[str, ...]) -> str:
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def _json_string(name: str, nullable: bool) -> pl.Expr:
    # One pass per column (Aho-Corasick over the single-character patterns; a
    # replacement is never scanned again, so the order does not matter).
    quoted = pl.concat_str([pl.lit('"'), pl.col(name).str.replace_many(_ESCAPE_FROM, _ESCAPE_TO), pl.lit('"')])
    return pl.when(pl.col(name).is_null()).then(pl.lit("null")).otherwise(quoted) if nullable else quoted


def key_column(key_fields: Sequence[str], nullable: Sequence[str] = ()) -> pl.Expr:
    """`encode_key` of every row's key fields, as one String expression."""
    if not key_fields:
        return pl.repeat("[]", pl.len(), dtype=pl.String).alias(KEY)
    parts = [_json_string(name, name in nullable) for name in key_fields]
    return pl.concat_str([pl.lit("["), pl.concat_str(parts, separator=","), pl.lit("]")]).alias(KEY)


def _rows_json(rows: pl.DataFrame) -> str:
    """The rows' (series id, window start, partition id, count, final) as one
    JSON array of arrays, integers only, built by native kernels."""
    row = pl.concat_str([pl.col(_ID), pl.col(WINDOW_START), pl.col(_PARTITION), pl.col(COUNT), pl.col(FINAL)],
                        separator=",")
    return "[[" + rows.select(row.str.join("],[")).item() + "]]"


class _Encoded:
    """One frame as the upsert's parameters before ids: key text, start,
    count, final."""

    __slots__ = ("rollup", "partition", "frame")

    def __init__(self, counts: WindowCounts) -> None:
        frame = counts.frame
        nullable = [name for name in counts.key_fields if frame[name].null_count()]
        self.rollup = counts.rollup
        self.partition = counts.partition
        self.frame = frame.select(
            key_column(counts.key_fields, nullable),
            pl.col(WINDOW_START),
            pl.col(COUNT),
            pl.col(FINAL).cast(pl.Int8),
        )

    def __len__(self) -> int:
        return self.frame.height


def read_store_status(path: str | os.PathLike[str]) -> list[tuple[str, int, int, int]]:
    """(partition, windows, provisional windows, newest window start) of each
    partition in the store at `path`, read-only (`status`); raises
    `sqlite3.Error` when it cannot be read."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if _has_table(conn, "counts"):
            sql = ("SELECT p.name, n, provisional, newest FROM (SELECT partition, COUNT(*) AS n, SUM(final = 0) "
                   "AS provisional, MAX(window_start) AS newest FROM counts GROUP BY partition) "
                   "JOIN partitions AS p ON p.id = partition ORDER BY p.name")
        else:  # written by an earlier version, not opened for writing since
            sql = ("SELECT partition, COUNT(*), SUM(final = 0), MAX(window_start) FROM window_counts "
                   "GROUP BY partition ORDER BY partition")
        rows = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return [(partition, windows, provisional or 0, newest) for partition, windows, provisional, newest in rows]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


class SqliteCountStore:
    """`CountStore` on one SQLite file (WAL, so queries read while a job writes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(f"PRAGMA page_size={PAGE_BYTES}")  # before WAL, which fixes it
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._create_or_migrate()
        self._reader = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()
        # Upserted since the last commit: applied again if SQLite drops the
        # open transaction (see the module docstring).
        self._pending: list[_Encoded] = []
        self._written = 0  # of `_pending`, in the open transaction
        # Ids that are committed (they never change once they are), and ids
        # given in the open transaction, trusted only once it commits.
        self._series: dict[str, pl.DataFrame] = {}
        self._partitions: dict[str, int] = {}
        self._new_series: dict[str, pl.DataFrame] = {}
        self._new_partitions: dict[str, int] = {}

    def _create_or_migrate(self) -> None:
        # Made already (the common case): no write lock, so opening the store
        # to query never waits for a writer's open transaction.
        if _has_table(self._db, "counts") and not _has_table(self._db, "window_counts"):
            return
        # One transaction, under the write lock: a second process opening the
        # same file waits, then finds the tables made.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            old = _has_table(self._db, "window_counts")
            for statement in _TABLES:
                self._db.execute(statement)
            if old:
                for statement in _MIGRATION:
                    self._db.execute(statement)
            self._db.execute(_VIEW)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # -- writes ---------------------------------------------------------------

    def upsert(self, windows: Sequence[WindowCounts]) -> None:
        """max(stored, new) per (rollup, key, window start, partition), in the
        open transaction (begun if none is) once `WRITE_ROWS` windows wait;
        durable at `commit()`."""
        encoded = [_Encoded(counts) for counts in windows if len(counts)]
        if not encoded:
            return
        with self._lock:
            self._pending.extend(encoded)
            if sum(len(part) for part in self._pending[self._written:]) < WRITE_ROWS:
                return
            try:
                self._write_unwritten()
            except BaseException:
                # The call failed as a whole: its retry brings these again.
                del self._pending[-len(encoded):]
                raise

    def commit(self) -> None:
        """Make every upsert so far durable: write what waits, end the open
        transaction. All or nothing: on an error, everything since the last
        commit stays pending for the next call."""
        with self._lock:
            if not self._pending:
                return
            self._write_unwritten()
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rolled_back()
                raise
            self._pending.clear()
            self._written = 0
            for rollup, new in self._new_series.items():
                known = self._series.get(rollup)
                self._series[rollup] = (new if known is None or known.height + new.height > KNOWN_SERIES_MAX
                                        else pl.concat([known, new]))
            self._partitions.update(self._new_partitions)
            self._new_series.clear()
            self._new_partitions.clear()

    def _write_unwritten(self) -> None:
        """Write the pending upserts not yet in the open transaction (all of
        them if SQLite rolled it back: see the module docstring)."""
        try:
            if not self._db.in_transaction:
                if self._written:  # SQLite rolled back what was written
                    self._rolled_back()
                self._db.execute("BEGIN IMMEDIATE")
            if self._written < len(self._pending):
                self._write(self._pending[self._written:])
        except BaseException:
            self._rolled_back()
            raise
        self._written = len(self._pending)

    def _rolled_back(self) -> None:
        """After a failed write or commit: nothing of the transaction is kept,
        so every pending upsert is to be written again, and ids given in it
        are forgotten (another process may give them to other keys)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._written = 0
        self._new_series.clear()
        self._new_partitions.clear()

    def _write(self, parts: list[_Encoded]) -> None:
        """All of `parts` in one pass, in key order: sorted across many
        frames, the rows reach each leaf of the table once (module
        docstring, "Sorted passes, one statement at a time")."""
        by_rollup: dict[str, list[pl.DataFrame]] = {}
        for part in parts:
            by_rollup.setdefault(part.rollup, []).append(
                part.frame.with_columns(pl.lit(self._partition_id(part.partition), pl.Int64).alias(_PARTITION)))
        rows = pl.concat([self._with_series_ids(rollup, pl.concat(frames)) for rollup, frames in by_rollup.items()])
        rows = rows.sort(_ID, WINDOW_START, _PARTITION)
        # Consecutive slices of the sorted rows: each leaf is still reached
        # once, and one statement's JSON stays small.
        for offset in range(0, rows.height, STATEMENT_ROWS):
            self._db.execute(_UPSERT, (_rows_json(rows.slice(offset, STATEMENT_ROWS)),))

    def _known_series(self, rollup: str) -> pl.DataFrame:
        parts = [ids for ids in (self._series.get(rollup), self._new_series.get(rollup)) if ids is not None]
        return pl.concat(parts) if parts else pl.DataFrame(schema=_IDS_SCHEMA)

    def _with_series_ids(self, rollup: str, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with the series id of each row's key, given to new keys."""
        rows = frame.join(self._known_series(rollup), on=KEY, how="left")
        missing = rows.filter(pl.col(_ID).is_null())[KEY].unique()
        if not missing.len():
            return rows
        keys = json.dumps(missing.to_list(), ensure_ascii=False)
        self._db.execute(_NEW_SERIES, (rollup, keys))
        found = pl.DataFrame(self._db.execute(_SERIES_IDS, (rollup, keys)).fetchall(), schema=_IDS_SCHEMA,
                             orient="row")
        if found.height != missing.len():  # pragma: no cover - a key SQLite's JSON would not carry
            raise RuntimeError(f"{missing.len() - found.height} keys of rollup {rollup!r} got no id")
        new = self._new_series.get(rollup)
        self._new_series[rollup] = found if new is None else pl.concat([new, found])
        return frame.join(self._known_series(rollup), on=KEY, how="inner")

    def _partition_id(self, name: str) -> int:
        known = self._partitions.get(name, self._new_partitions.get(name))
        if known is None:
            self._db.execute("INSERT OR IGNORE INTO partitions (name) VALUES (?)", (name,))
            ((known,),) = self._db.execute("SELECT id FROM partitions WHERE name = ?", (name,)).fetchall()
            self._new_partitions[name] = known
        return known

    # -- reads ----------------------------------------------------------------

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        rows = self._read(
            "SELECT window_start, SUM(count) FROM counts "
            "WHERE series = (SELECT id FROM series WHERE rollup = ? AND key = ?) "
            "AND window_start >= ? AND window_start < ? GROUP BY window_start ORDER BY window_start",
            (rollup, encode_key(key), start_us, end_us),
        )
        return [(int(s), int(c)) for s, c in rows if c]

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        rows = self._read(
            # Sorted here (by the key's text) so that the sort below, by the
            # decoded key, finds the rows (nearly) in order: 1.4 s instead of
            # 2.2 s for 371k windows.
            "SELECT c.window_start, s.key, SUM(c.count) FROM series AS s JOIN counts AS c ON c.series = s.id "
            "WHERE s.rollup = ? GROUP BY s.key, c.window_start ORDER BY c.window_start, s.key",
            (rollup,),
        )
        decoded = sorted((int(s), tuple(json.loads(k)), int(c)) for s, k, c in rows)
        return iter(decoded)

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        ((value,),) = self._read(
            "SELECT COALESCE(SUM(count), 0) FROM counts "
            "WHERE series = (SELECT id FROM series WHERE rollup = ? AND key = ?)",
            (rollup, encode_key(key)),
        )
        return int(value)

    def close(self) -> None:
        """Commit what is open, then close both connections."""
        try:
            self.commit()
        finally:
            with self._lock:
                self._db.close()
            with self._read_lock:
                self._reader.close()
