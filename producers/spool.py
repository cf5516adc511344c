"""`spool:DIR`: a durable local queue in one SQLite file (WAL mode).

`produce` and `consume` can run as separate processes and either side can be
killed or restarted at any time. Records get a global, ever-increasing `seq`
(AUTOINCREMENT, so a seq is never reused even after old rows are deleted);
each consumer group stores the next seq it needs per partition.

Usage::

    writer = SpoolWriter("data/spool")
    writer.send([b'{"customer_id": "c1", ...}'])
    writer.close()

    reader = SpoolReader("data/spool", group="default")
    def on_batch(batch):
        if batch.kind is BatchKind.DATA:
            ...  # make the records durable downstream, then:
            reader.commit(batch.partition, batch.positions[-1] + 1)
    reader.batches().subscribe(on_batch)  # blocks until reader.stop()
    reader.close()

Delivery is at-least-once: rows read but not committed before a crash are
delivered again after the restart.

One reader per (spool, group) at a time: a reader holds an exclusive lock
(`flock`, released when it closes or its process dies) on
`locks/group-<digest>.lock` in the spool's directory, and a second one fails
at once with `SpoolBusy`, naming the process that reads. Two readers of one
group would each read every record (the group's offset is one).
"""

from __future__ import annotations

import dataclasses
from itertools import accumulate
import errno
import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import reactivex
from reactivex import abc

from producers.transport import TransportFull, blocking_observable, wall_clock_us
from streams.batches import RecordBatch

SPOOL_FILE = "spool.sqlite3"
DEFAULT_MAX_PENDING = 5_000_000
# The one storage partition the writer uses; the column exists so that a
# partitioned spool can be added without a schema change.
STORAGE_PARTITION = "spool"
# A producer waiting on another producer's transaction gives up after this long.
BUSY_TIMEOUT_MS = 10_000
# Pruning deletes at most this many rows per transaction so that it never holds
# the write lock long enough to stall producers.
PRUNE_CHUNK = 50_000
PRUNE_EVERY_COMMITS = 64
STOP_CHECK_SECONDS = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partition TEXT NOT NULL DEFAULT 'spool',
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    partition TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    watermark_us INTEGER,  -- the watermark a replay from next_seq starts with
    PRIMARY KEY (grp, partition)
);
"""


def spool_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory).resolve() / SPOOL_FILE


def read_spool_status(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What the spool in `directory` holds and where each consumer group
    stands, read-only: `{"spool": path, "found": bool, "stored_records",
    "last_seq", "groups": {group: {"partition", "next_seq", "watermark_us",
    "pending"}}}` (only `spool` and `found` when there is no spool)."""
    path = spool_path(directory)
    if not path.is_file():
        return {"spool": str(path), "found": False}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (max_seq,) = conn.execute("SELECT MAX(seq) FROM records").fetchone()
        (stored,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
        groups = {}
        for grp, partition, next_seq, watermark in conn.execute(
                "SELECT grp, partition, next_seq, watermark_us FROM offsets ORDER BY grp, partition"):
            groups[grp] = {"partition": partition, "next_seq": next_seq, "watermark_us": watermark,
                           "pending": max(0, (max_seq or 0) - next_seq + 1)}
    finally:
        conn.close()
    return {"spool": str(path), "found": True, "stored_records": stored, "last_seq": max_seq, "groups": groups}


def _set_wal(conn: sqlite3.Connection) -> None:
    """WAL mode. Two processes opening a new spool at once can both try to
    switch it, and SQLite answers "database is locked" at once instead of
    waiting its busy timeout: retry for as long as that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _connect(directory: str | os.PathLike[str]) -> sqlite3.Connection:
    path = spool_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, and plain SELECTs
    # run in autocommit, so no read transaction outlives its statement.
    # check_same_thread=False: callers serialise access with their own lock.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _set_wal(conn)
    # FULL: a send() or commit() that returned survives a power cut, not just a crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(offsets)")}
    if "watermark_us" not in columns:  # a spool made before watermarks were stored
        try:
            conn.execute("ALTER TABLE offsets ADD COLUMN watermark_us INTEGER")
        except sqlite3.OperationalError:  # another process added it first
            pass
    return conn


class SpoolBusy(OSError):
    """Another reader holds this spool's consumer group."""


def _lock_group(directory: Path, group: str) -> int:
    """An exclusive lock on (spool, group) for this reader: the open file
    descriptor, or `SpoolBusy`."""
    locks = directory / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"group-{hashlib.sha256(group.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n", 1)[0].strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise SpoolBusy(
            f"spool {directory}: consumer group {group!r} is already being read"
            f"{f' by process {holder}' if holder.isdigit() else ''}; one reader per spool and group "
            f"(stop that one, or read with another --group)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{group}\n".encode("utf-8", "surrogatepass"), 0)
    return fd


# A send is one INSERT statement: the records joined into one blob, and
# where each one ends as fixed-width decimals, cut back apart by SQLite. The
# statement text never changes, so it is prepared once, and the Python side
# binds three values instead of one per record (binding a `bytes` parameter
# costs the sqlite3 module a failed adapter lookup each time). The collector's
# group commit runs on a thread beside the event loop: everything per record
# happens inside `sqlite3_step`, which runs without the GIL.
# A send whose blob is larger is written in several statements (SQLite's
# default limit on a value is 1e9 bytes).
MAX_STATEMENT_BYTES = 64 << 20
_CUT = (
    "WITH RECURSIVE cut(n, first, last) AS ("
    " SELECT 1, 1, CAST(substr(:ends, 1, 10) AS INTEGER)"
    " UNION ALL"
    " SELECT n + 1, last + 1, CAST(substr(:ends, 10 * n + 1, 10) AS INTEGER) FROM cut WHERE n < :count)"
)
# Without a bound check (inside a transaction that made it already) ...
_INSERT_SQL = (
    f"INSERT INTO records (partition, data) {_CUT}"
    f" SELECT '{STORAGE_PARTITION}', ifnull(substr(:blob, first, last - first + 1), x'') FROM cut ORDER BY n"
)
# ... and with it: the whole send is one statement, hence one transaction
# (SQLite takes the write lock when the statement starts, as BEGIN IMMEDIATE
# does), in which nothing is inserted when the bound would be passed. The
# rule is `_pending`'s (a send into an empty spool is always accepted), with
# the newest seq read from sqlite_sequence (the largest seq ever given) and
# the oldest, when no group reads, taken as 1: a statement that read the
# table it inserts into would first copy every row through a temporary table.
# The two agree: rows are deleted only below every group's offset (`prune`),
# so never without a group, and never the newest while a group still needs it.
_PENDING_SQL = (
    "ifnull(max(0, (SELECT seq FROM sqlite_sequence WHERE name = 'records')"
    " - coalesce((SELECT MIN(next_seq) FROM offsets), 1) + 1), 0)"
)
_BOUNDED_INSERT_SQL = (
    f"INSERT INTO records (partition, data) {_CUT}, room(pending) AS (SELECT {_PENDING_SQL})"
    f" SELECT '{STORAGE_PARTITION}', ifnull(substr(:blob, first, last - first + 1), x'') FROM cut"
    " WHERE (SELECT pending = 0 OR pending + :count <= :bound FROM room) ORDER BY n"
)
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _packed(records: Sequence[Any]) -> dict[str, Any] | None:
    """The parameters of `_INSERT_SQL` for `records`: the ends are 1-based
    offsets of each record's last byte, 10 digits each. None when they are
    over `MAX_STATEMENT_BYTES`, or when a record's len() is not its size in
    bytes (a memoryview of wider items: `bytes()` it first)."""
    ends = tuple(accumulate(map(len, records)))
    if not ends or ends[-1] > MAX_STATEMENT_BYTES:
        return None
    blob = b"".join(records)  # any bytes-like record, without a copy of each first
    if len(blob) != ends[-1]:
        return None
    return {"blob": blob, "ends": (b"%010d" * len(records)) % ends, "count": len(records)}


def _chunks(records: list[bytes]) -> list[list[bytes]]:
    """`records` in runs of at most `MAX_STATEMENT_BYTES` (one record may be more)."""
    chunks: list[list[bytes]] = []
    start = size = 0
    for i, record in enumerate(records):
        if size and size + len(record) > MAX_STATEMENT_BYTES:
            chunks.append(records[start:i])
            start, size = i, 0
        size += len(record)
    chunks.append(records[start:])
    return chunks


def _insert(conn: sqlite3.Connection, records: list[bytes]) -> None:
    """Insert `records` in order, inside the caller's transaction."""
    for chunk in _chunks(records):
        packed = _packed(chunk)
        if packed is None:  # one record over MAX_STATEMENT_BYTES
            packed = {"blob": chunk[0], "ends": b"%010d" % len(chunk[0]), "count": 1}
        conn.execute(_INSERT_SQL, packed)


def _pending(conn: sqlite3.Connection) -> int:
    """Records not yet committed by the slowest group (all records if no group).

    Computed from seq bounds (index look-ups) rather than COUNT(*), which would
    scan millions of rows on every send. Seq gaps only make it an over-estimate.
    """
    # One statement, not three: each is a GIL round trip for a writer thread.
    max_seq, floor = conn.execute(
        "SELECT (SELECT MAX(seq) FROM records),"
        " COALESCE((SELECT MIN(next_seq) FROM offsets), (SELECT MIN(seq) FROM records))"
    ).fetchone()
    if max_seq is None:
        return 0
    return max(0, max_seq - floor + 1)


class SpoolWriter:
    """Appends records to the spool; safe to use from several processes at once.

    `max_pending` bounds the records the slowest consumer group has not yet
    committed (0 = unbounded); `send` never lets the spool exceed it, except
    that a send into an empty spool is always accepted so that one batch larger
    than the bound cannot deadlock. When full it polls every `poll_interval`
    seconds for up to `block_timeout` seconds, then raises `TransportFull`.

    >>> writer = SpoolWriter(tmp_dir, max_pending=1000)   # doctest: +SKIP
    >>> writer.send([b"a", b"b"])                          # doctest: +SKIP
    2
    """

    all_or_nothing = True  # each send is one SQLite transaction

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_pending: int = DEFAULT_MAX_PENDING,
        block_timeout: float = 5.0,
        poll_interval: float = 0.05,
    ) -> None:
        if max_pending < 0:
            raise ValueError("max_pending must be >= 0 (0 = unbounded)")
        self.directory = Path(directory).resolve()
        self.max_pending = max_pending
        self.block_timeout = block_timeout
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _connect(self.directory)

    def send(self, records: Sequence[bytes]) -> int:
        """Append all of `records` in one transaction, or none of them."""
        if not records:
            return 0
        rows = list(records)
        packed = _packed(rows)  # the collector's hot path: C loops only
        if packed is None:
            rows = list(map(bytes, rows))
            packed = _packed(rows)
        deadline = time.monotonic() + self.block_timeout
        while True:
            if self._try_append(rows, packed):
                return len(rows)
            if time.monotonic() >= deadline:
                raise TransportFull(
                    f"spool {self.directory} holds more than {self.max_pending} uncommitted records"
                )
            time.sleep(self.poll_interval)

    def _try_append(self, rows: list[bytes], packed: dict[str, Any] | None) -> bool:
        with self._lock:
            conn = self._require_open()
            if packed is not None:
                # One statement in autocommit mode: its own durable
                # transaction, and one trip out of the GIL for the whole send.
                try:
                    if self.max_pending:
                        cursor = conn.execute(_BOUNDED_INSERT_SQL, {**packed, "bound": self.max_pending})
                    else:
                        cursor = conn.execute(_INSERT_SQL, packed)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF in _BUSY:  # locked past busy_timeout
                        raise TransportFull(f"spool {self.directory} is locked: {exc}") from exc
                    raise
                return cursor.rowcount == len(rows)
            try:
                # IMMEDIATE takes the write lock before the bound check, so two
                # producers cannot both pass the check and overshoot together.
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # locked past busy_timeout
                raise TransportFull(f"spool {self.directory} is locked: {exc}") from exc
            try:
                if self.max_pending:
                    pending = _pending(conn)
                    if pending and pending + len(rows) > self.max_pending:
                        conn.execute("ROLLBACK")
                        return False
                _insert(conn, rows)
                conn.execute("COMMIT")
                return True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def pending(self) -> int:
        """Records not yet committed by the slowest consumer group."""
        with self._lock:
            return _pending(self._require_open())

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("SpoolWriter is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "SpoolWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolReader:
    """Reads the spool for one consumer group; see the module docstring.

    Opening a reader registers its group (at the oldest stored record), so rows
    it has not committed are kept and count towards writers' `max_pending`.

    `batches()` loops on the subscribing thread until `stop()`; DATA batches
    carry up to `batch_size` records whose position is their seq. An empty poll
    emits an IDLE batch with the `clock` seconds since the previous poll, then
    sleeps `poll_interval`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        group: str = "default",
        batch_size: int = 5000,
        poll_interval: float = 0.2,
        partition_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.directory = Path(directory).resolve()
        self.group = group
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.partition = partition_name or f"spool:{self.directory}"
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        # A plain flag, not a threading.Event: Event.set() takes a lock, which
        # can deadlock when a signal handler interrupts the thread holding it.
        self._stopped = False
        self._lock = threading.RLock()
        self._group_lock: int | None = _lock_group(self.directory, group)
        try:
            self._conn: sqlite3.Connection | None = _connect(self.directory)
        except BaseException:
            self._release_group()
            raise
        self._caught_up = 0.0
        self._commits = 0
        self._register_group()

    def _register_group(self) -> None:
        with self._lock:
            conn = self._require_open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO offsets (grp, partition, next_seq) VALUES (?, ?, COALESCE("
                    " (SELECT MIN(seq) FROM records),"
                    " (SELECT seq + 1 FROM sqlite_sequence WHERE name = 'records'),"
                    " 1))",
                    (self.group, STORAGE_PARTITION),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def committed(self) -> int:
        """The next seq this group needs: where a restarted reader resumes."""
        with self._lock:
            row = self._require_open().execute(
                "SELECT next_seq FROM offsets WHERE grp = ? AND partition = ?", (self.group, STORAGE_PARTITION)
            ).fetchone()
        return row[0] if row else 0

    def committed_watermark(self) -> int | None:
        """The watermark stored with the committed offset, if any."""
        with self._lock:
            row = self._require_open().execute(
                "SELECT watermark_us FROM offsets WHERE grp = ? AND partition = ?", (self.group, STORAGE_PARTITION)
            ).fetchone()
        return row[0] if row else None

    def batches(self) -> reactivex.Observable:
        return blocking_observable(self._loop)

    def _loop(self, observer: abc.ObserverBase) -> None:
        # The read cursor is in memory only: it runs ahead of the committed
        # offset, and a restart falls back to the committed offset.
        cursor = self.committed()
        resume_watermark = self.committed_watermark()
        last_poll = last_data = self._clock()
        while not self._stopped:
            rows = self._read(cursor)
            now = self._clock()
            if rows:
                cursor = rows[-1][0] + 1
                last_data = now
                self._caught_up = 0.0
                batch = RecordBatch.data(
                    self.partition, [bytes(data) for _, data in rows], [seq for seq, _ in rows], self._wall_clock_us()
                )
                if resume_watermark is not None:
                    batch = dataclasses.replace(batch, resume_watermark_us=resume_watermark)
                    resume_watermark = None
                observer.on_next(batch)
            else:
                self._caught_up = now - last_data
                observer.on_next(RecordBatch.idle(self.partition, now - last_poll))
                self._sleep(self.poll_interval)
            last_poll = now
        observer.on_completed()

    def _sleep(self, seconds: float) -> None:
        # Short slices keep stop() prompt without needing a wake-up lock.
        deadline = time.monotonic() + seconds
        while not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, STOP_CHECK_SECONDS))

    def _read(self, cursor: int) -> list[tuple[int, bytes]]:
        with self._lock:
            # fetchall() ends the statement, and with it the read transaction,
            # so the WAL can be checkpointed while downstream works.
            return self._require_open().execute(
                "SELECT seq, data FROM records WHERE partition = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (STORAGE_PARTITION, cursor, self.batch_size),
            ).fetchall()

    def commit(self, partition: str, position: int, watermark_us: int | None = None) -> None:
        """Every record with seq < `position` is durable downstream; a replay
        from it starts with `watermark_us` (given back by `batches()`)."""
        if partition != self.partition:
            raise ValueError(f"unknown partition {partition!r}: this spool reads {self.partition!r}")
        with self._lock:
            conn = self._require_open()
            conn.execute(
                "INSERT INTO offsets (grp, partition, next_seq, watermark_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (grp, partition) DO UPDATE SET"
                " watermark_us = CASE WHEN excluded.next_seq > next_seq THEN excluded.watermark_us ELSE watermark_us END,"
                " next_seq = MAX(next_seq, excluded.next_seq)",
                (self.group, STORAGE_PARTITION, position, watermark_us),
            )
            self._commits += 1
            if self._commits % PRUNE_EVERY_COMMITS == 0:
                self.prune()

    def prune(self) -> int:
        """Delete up to `PRUNE_CHUNK` rows every group has committed; returns the count."""
        with self._lock:
            cur = self._require_open().execute(
                "DELETE FROM records WHERE seq < MIN("
                " (SELECT MIN(next_seq) FROM offsets),"
                " (SELECT MIN(seq) FROM records) + ?)",
                (PRUNE_CHUNK,),
            )
            return cur.rowcount

    def stop(self) -> None:
        """End `batches()` after the current poll; safe from any thread or a signal handler."""
        self._stopped = True

    def caught_up_seconds(self) -> float:
        return self._caught_up

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("SpoolReader is closed")
        return self._conn

    def close(self) -> None:
        """Stop and release the database and the group; call after the last `commit`."""
        self.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_group()

    def _release_group(self) -> None:
        if self._group_lock is not None:
            os.close(self._group_lock)  # closing the descriptor releases the flock
            self._group_lock = None

    def __enter__(self) -> "SpoolReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
