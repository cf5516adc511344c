"""The collector's idempotency ledger: one durable row per (user, event_id).

A client that retries a POST (a timeout, a dropped connection, a 503) sends
the same `event_id` again, possibly hours later and without a `timestamp`.
The daemon's duplicate key holds the event time, which for an event without a
`timestamp` is the collector's receive time: each attempt would look like a
new event. So the collector keeps, for `[http] idempotency_retention` (24 h),
which (user, event_id) pairs it has already put on the transport, and answers
a resend as a duplicate without sending it again.

A row goes through two states, written around the transport's `send`:

1. `claim` (before the send, one fsync'd SQLite transaction per group of
   requests): a new pair is inserted as *pending* with the exact record that
   is about to be sent. A pair already *sent* is a duplicate. A pair still
   *pending* means an earlier attempt's send ended in an unknown way (the
   process died, or a transport failed half-way): its stored record is sent
   again, byte for byte, and the daemon's duplicate check drops it if the
   first one did arrive (the same transaction id and event time).
2. `confirm` (after the send returned): the rows become *sent*.
   `release` deletes the pending rows of a send that certainly wrote nothing
   (a spool transaction that rolled back), so a retry starts afresh.

Rows older than the retention are ignored, and pruned once a minute by a
background thread in short transactions: a resend after the retention counts
again.

The ledger is a SQLite file (WAL) shared safely by every collector process of
a host (`serve` workers, `consume` with `[http] enabled`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Sequence

import orjson

log = logging.getLogger(__name__)

PENDING, SENT = 0, 1
BUSY_TIMEOUT_MS = 10_000
PRUNE_EVERY_SECONDS = 60.0
PRUNE_CHUNK = 5_000
PRUNE_PAUSE_SECONDS = 0.05
LOOKUP_CHUNK = 5_000
INSERT_CHUNK = 1_000  # rows per INSERT (six parameters each, under SQLite's 32,766)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS http_idempotency (
    username TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,   -- first accepted: the retention runs from here
    state INTEGER NOT NULL,        -- 0 pending (send outcome unknown), 1 sent
    event_us INTEGER,              -- the event time of the stored record
    record BLOB,                   -- the exact record, while pending
    PRIMARY KEY (username, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS http_idempotency_created ON http_idempotency (created_us);
"""


@dataclass(frozen=True, slots=True)
class Claim:
    username: str
    event_id: str
    record: bytes
    event_us: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """`new`: send `record` (just claimed); `duplicate`: already sent, or a
    repeat earlier in the same group; `resend`: an earlier attempt's outcome is
    unknown: send its stored `record` (with its `event_us`) instead."""

    kind: str
    record: bytes = b""
    event_us: int = 0


NEW, DUPLICATE, RESEND = "new", "duplicate", "resend"
_DUPLICATE = Verdict(DUPLICATE)


class IdempotencyLedger:
    def __init__(
        self,
        path: str | os.PathLike[str],
        retention_us: int,
        clock_us: Callable[[], int] | None = None,
    ) -> None:
        if retention_us <= 0:
            raise ValueError("the idempotency retention must be positive")
        self.path = Path(path)
        self.retention_us = retention_us
        self.clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_SCHEMA)
        self._conn: sqlite3.Connection | None = conn
        self._pruned_at = 0.0
        self._pruner: threading.Thread | None = None
        self._closing = False

    # -- the three steps around a send ------------------------------------------------

    def claim(self, claims: Sequence[Claim]) -> list[Verdict]:
        """One verdict per claim, in one durable transaction (see the module doc)."""
        if not claims:
            return []
        now = self.clock_us()
        expired_before = now - self.retention_us
        with self._lock:
            conn = self._open()
            conn.execute("PRAGMA synchronous = FULL")  # a claim must survive a power cut
            conn.execute("BEGIN IMMEDIATE")  # atomic lookup + insert across processes
            try:
                known = self._lookup(conn, claims, expired_before)
                verdicts: list[Verdict] = []
                seen: set[tuple[str, str]] = set()
                fresh: list[tuple[str, str, int, int, int, bytes]] = []
                for claim in claims:
                    key = (claim.username, claim.event_id)
                    if key in seen:
                        verdicts.append(_DUPLICATE)
                        continue
                    seen.add(key)
                    row = known.get(key)
                    if row is None:
                        fresh.append((claim.username, claim.event_id, now, PENDING, claim.event_us, claim.record))
                        verdicts.append(Verdict(NEW, claim.record, claim.event_us))
                    elif row[0] == SENT:
                        verdicts.append(_DUPLICATE)
                    else:
                        verdicts.append(Verdict(RESEND, row[2], row[1]))
                # REPLACE: an expired row (not yet pruned) gives way to the new one.
                # A thousand rows per statement: executemany lets go of the GIL
                # for every row, a wait behind the event loop each time.
                for start in range(0, len(fresh), INSERT_CHUNK):
                    chunk = fresh[start : start + INSERT_CHUNK]
                    conn.execute(
                        "INSERT OR REPLACE INTO http_idempotency (username, event_id, created_us, state, event_us, record)"
                        " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                        list(chain.from_iterable(chunk)),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._maybe_prune(now)
        return verdicts

    def confirm(self, keys: Iterable[tuple[str, str]]) -> None:
        """Mark these pairs sent. Not fsync'd: a power cut may leave them
        pending, whose only effect is an identical resend the daemon drops."""
        self._apply(
            "UPDATE http_idempotency SET state = 1, record = NULL"
            " WHERE username = ? AND event_id IN (SELECT value FROM json_each(?))",
            keys,
        )

    def release(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget pending pairs whose send certainly wrote nothing."""
        self._apply(
            "DELETE FROM http_idempotency WHERE username = ? AND state = 0 AND event_id IN (SELECT value FROM json_each(?))",
            keys,
        )

    def _apply(self, statement: str, keys: Iterable[tuple[str, str]]) -> None:
        """`statement` (parameters: a user, a JSON array of its event_ids) for
        every pair, in one transaction: one statement per user and chunk, not
        one per pair."""
        by_user: dict[str, list[str]] = {}
        for username, event_id in keys:
            by_user.setdefault(username, []).append(event_id)
        if not by_user:
            return
        with self._lock:
            conn = self._open()
            conn.execute("PRAGMA synchronous = NORMAL")
            with _transaction(conn):
                for username, ids in by_user.items():
                    for start in range(0, len(ids), LOOKUP_CHUNK):
                        conn.execute(statement, (username, orjson.dumps(ids[start : start + LOOKUP_CHUNK]).decode()))

    # -- housekeeping ---------------------------------------------------------------

    def prune(self, now_us: int | None = None, max_chunks: int | None = None) -> int:
        """Delete rows past the retention, `PRUNE_CHUNK` per transaction (all of
        them, or `max_chunks` transactions); the number deleted."""
        cutoff = (self.clock_us() if now_us is None else now_us) - self.retention_us
        deleted = 0
        chunks = 0
        while True:
            with self._lock:
                conn = self._open()
                conn.execute("PRAGMA synchronous = NORMAL")
                with _transaction(conn):
                    cursor = conn.execute(
                        "DELETE FROM http_idempotency WHERE (username, event_id) IN (SELECT username, event_id"
                        " FROM http_idempotency WHERE created_us < ? LIMIT ?)",
                        (cutoff, PRUNE_CHUNK),
                    )
                    count = cursor.rowcount
            deleted += count
            chunks += 1
            if count < PRUNE_CHUNK or (max_chunks is not None and chunks >= max_chunks):
                return deleted

    def _maybe_prune(self, now_us: int) -> None:
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = time.monotonic()
            # Off the group-commit thread, in short transactions: never a stall.
            if self._pruner is None or not self._pruner.is_alive():
                self._pruner = threading.Thread(target=self._prune_in_background, name="idempotency-prune", daemon=True)
                self._pruner.start()

    def _prune_in_background(self) -> None:
        try:
            while not self._closing and self.prune(max_chunks=1) == PRUNE_CHUNK:
                time.sleep(PRUNE_PAUSE_SECONDS)  # let claims take the write lock between chunks
        except Exception as exc:  # a closed ledger, a locked file: the next minute tries again
            if not self._closing:
                log.warning("http: idempotency ledger: pruning failed: %s", exc)

    def size(self) -> int:
        with self._lock:
            (count,) = self._open().execute("SELECT COUNT(*) FROM http_idempotency").fetchone()
        return int(count)

    def status(self) -> tuple[bool, str]:
        try:
            with self._lock:
                self._open().execute("SELECT 1 FROM http_idempotency LIMIT 1").fetchall()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
        return True, str(self.path)

    def close(self) -> None:
        self._closing = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- internals --------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the idempotency ledger is closed")
        return self._conn

    @staticmethod
    def _lookup(
        conn: sqlite3.Connection, claims: Sequence[Claim], expired_before: int
    ) -> dict[tuple[str, str], tuple[int, int, bytes]]:
        """(state, event_us, record) of the claimed pairs that exist, unexpired."""
        by_user: dict[str, list[str]] = {}
        for claim in claims:
            by_user.setdefault(claim.username, []).append(claim.event_id)
        found: dict[tuple[str, str], tuple[int, int, bytes]] = {}
        for username, ids in by_user.items():
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = orjson.dumps(ids[start : start + LOOKUP_CHUNK]).decode()
                for event_id, state, event_us, record in conn.execute(
                    "SELECT event_id, state, event_us, record FROM http_idempotency"
                    " WHERE username = ? AND event_id IN (SELECT value FROM json_each(?)) AND created_us >= ?",
                    (username, chunk, expired_before),
                ):
                    found[username, event_id] = (state, event_us, record)
        return found


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
