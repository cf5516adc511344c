"""The count store on SQLite: the local adapter of `CountStore`."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterator, Sequence

from streams.events import WindowCount

_SCHEMA = """
CREATE TABLE IF NOT EXISTS window_counts (
    rollup       TEXT    NOT NULL,
    key          TEXT    NOT NULL,  -- JSON array of the key field values
    window_start INTEGER NOT NULL,  -- UTC epoch microseconds
    partition    TEXT    NOT NULL,  -- source partition: a file, a spool, a shard
    count        INTEGER NOT NULL,
    final        INTEGER NOT NULL,
    PRIMARY KEY (rollup, key, window_start, partition)
) WITHOUT ROWID;
"""

# max(): a replay or a provisional count never lowers nor doubles a count.
_UPSERT = """
INSERT INTO window_counts (rollup, key, window_start, partition, count, final)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (rollup, key, window_start, partition) DO UPDATE SET
    count = max(count, excluded.count),
    final = max(final, excluded.final)
"""


def encode_key(key: tuple[str, ...]) -> str:
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


class SqliteCountStore:
    """`CountStore` on one SQLite file (WAL, so queries read while a job writes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def upsert(self, counts: Sequence[WindowCount]) -> None:
        if not counts:
            return
        rows = [(c.rollup, encode_key(c.key), c.window_start_us, c.partition, c.count, int(c.final)) for c in counts]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT window_start, SUM(count) FROM window_counts WHERE rollup=? AND key=? "
                "AND window_start>=? AND window_start<? GROUP BY window_start ORDER BY window_start",
                (rollup, encode_key(key), start_us, end_us),
            ).fetchall()
        return [(int(s), int(c)) for s, c in rows if c]

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT window_start, key, SUM(count) FROM window_counts WHERE rollup=? "
                "GROUP BY window_start, key",
                (rollup,),
            ).fetchall()
        decoded = sorted((int(s), tuple(json.loads(k)), int(c)) for s, k, c in rows)
        return iter(decoded)

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        with self._lock:
            (value,) = self._db.execute(
                "SELECT COALESCE(SUM(count), 0) FROM window_counts WHERE rollup=? AND key=?",
                (rollup, encode_key(key)),
            ).fetchone()
        return int(value)

    def close(self) -> None:
        with self._lock:
            self._db.close()
