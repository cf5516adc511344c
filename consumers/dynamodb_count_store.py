"""`CountStore` on DynamoDB: the same contract and answers as `SqliteCountStore`,
written in bulk (BatchWriteItem, 25 items a request, many requests in flight).

Items are versions
------------------
A count is stored as an immutable *version* item, never updated in place::

    pk  (HASH)   "<rollup>#<key as compact JSON>"                 customer_hourly#["c1"]
    sk  (RANGE)  "<window start + 10^18, 20 digits>|<count><f|p>|<partition>"
                                      01001614556800000000|12f|kinesis:events/shardId-000000000000
    count        N   the same count, as a number (for people and projections)
    expires_at   N   epoch seconds of window start + `count_ttl_days`, only when
                     TTL is configured (DynamoDB TTL deletes the item after it)

`f` marks a final count (the window closed in that partition), `p` a
provisional one.

Windows of one key that start in the same UTC day and come in one frame share
a *chunk* item instead (at most `CHUNK_WINDOWS` to an item)::

    sk       "<day start + 10^18, 20 digits>|c<hash of windows>|<partition>"
    windows  S   "<start - day start>,<count><f|p> ..." for each window

A chunk is content-addressed like a version item (the same windows written
again rewrite the same item), and each of its windows is one more version of
that window, read by the same rule. On sparse traffic a minute rollup packs a
day's windows of a key into one item instead of hundreds.

An item's content is a function of its key, so a put can never overwrite a
count with a different one: writing the same version again (a replay)
rewrites the same item, and any other version is another item.
**The count of (rollup, key, window, partition) is the largest version
stored**, and readers sum that over partitions: the reader rule of the S3
aggregates (docs/store.md), applied by `buckets`, `total` and `export`.

Why this keeps the contract with plain puts (no condition, no read):

- a provisional count never lowers a final one, and a partial rebuild after a
  crash (a window final before the checkpoint, replayed from its middle) never
  lowers a complete count: each is its own item next to the larger one, and
  the maximum wins;
- a replay never moves a count backwards where a reader can see it: versions
  are only added, and a version is deleted only after a larger version of the
  same (window, partition) was acknowledged (see below), so the maximum a
  reader sees only grows;
- re-running the same input writes the same items: never doubled.

Garbage collection: when this process has a provisional version acknowledged
and later a larger version of the same (window, partition) (a newer running
count, or the final count), it deletes the item holding the smaller one once
that item holds no window's largest acknowledged version any more (an item
with a final version is never deleted), in the same BatchWriteItem requests
as the puts. Deleting a version below an acknowledged larger one never
lowers the maximum, whoever wrote it. What a stop or crash
leaves (the last provisional version of each window open at that moment, a
partial rebuild next to a complete count) is harmless: readers take the
maximum. At most one such item per open window and stop.

Writes
------
`upsert` groups and encodes whole frames with polars column expressions (keys,
sort keys, chunk contents), then queues the items; every full request of 25
goes out at once on a bounded pool (`threads`, default 16, concurrent requests), so the pipeline
keeps counting while DynamoDB writes. `commit()` sends the last, partial
request and waits for every request: only then is anything acknowledged to
the checkpoint. `UnprocessedItems` and throttling are retried with capped,
jittered exponential backoff; a request that still fails is kept and sent
again by the next `upsert` or `commit`, which raise until it goes through
(`RetryingCountStore` waits out an outage that way, and the pipeline stops
taking batches meanwhile). When every request slot is busy, `upsert` waits
for one: a slow table slows the pipeline instead of growing memory.

Items written by earlier versions of this store (one item per window and
partition, `sk = "<start>#<partition>"`, updated by a conditional max) are
still read: they are one more version of their window.

Reads
-----
- `buckets`: one Query on pk with `sk BETWEEN` the start of the range's first
  day (where its chunk sorts) and its end (the offset keeps the zero-padded
  start sortable for pre-1970 windows too),
  following `LastEvaluatedKey`; max per (window, partition), summed.
- `total`: one Query on pk; `export`: a parallel Scan filtered on the pk
  prefix of the rollup. A GSI on rollup would make every write of a rollup
  also hit one GSI partition (a write hot spot) to speed up an offline
  command, so there is none.
- Reads are strongly consistent: a query right after a commit sees its writes.

Usage::

    store = DynamoDbCountStore(aws_client("dynamodb", aws), "rivulet-counts")
    store.upsert(window_counts)  # a list of WindowCounts frames: queued, sending
    store.commit()               # everything upserted so far is written
    store.buckets("customer_hourly", ("c1",), start_us, end_us)
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import botocore.exceptions
import polars as pl

from consumers.sqlite_count_store import key_column
from resilience.backoff import Backoff
from streams.window_counts import COUNT, FINAL, WINDOW_START, WindowCounts

HASH_KEY = "pk"
RANGE_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
SK_OFFSET = 10**18  # window starts from year -29719 to 33658 stay non-negative and 20 digits
_SK_MAX = 10**20 - 1
BATCH_ITEMS = 25  # BatchWriteItem's limit
VERSION_SEP = "|"  # a version item: "<start>|<count><f|p>|<partition>"
LEGACY_SEP = "#"  # an item of the update-in-place design: "<start>#<partition>"
CHUNK_MARK = "c"  # a chunk item: "<day start>|c<hash of its windows>|<partition>"
CHUNK_SPAN_US = 86_400_000_000  # a chunk holds windows that start in one UTC day
CHUNK_WINDOWS = 1000  # at most this many windows per chunk (~20 KB: far below the 400 KB item limit)
WINDOWS_ATTRIBUTE = "windows"
_HI = "~"  # sorts after both separators
THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
})

log = logging.getLogger(__name__)


def encode_key(key: tuple[str, ...]) -> str:
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def item_pk(rollup: str, key: tuple[str, ...]) -> str:
    return f"{rollup}#{encode_key(key)}"


def _sk_start(window_start_us: int) -> str:
    value = min(max(window_start_us + SK_OFFSET, 0), _SK_MAX)
    return f"{value:020d}"


def item_sk(window_start_us: int, partition: str, count: int, final: bool) -> str:
    """The sort key of one version of a window's count in a partition."""
    if not 0 <= window_start_us + SK_OFFSET <= _SK_MAX:
        raise ValueError(f"window start out of range: {window_start_us}")
    return f"{_sk_start(window_start_us)}{VERSION_SEP}{count}{'f' if final else 'p'}{VERSION_SEP}{partition}"


def parse_sk(sk: str) -> tuple[int, str, int | None, bool | None]:
    """(window start, partition, count, final) of a sort key; count and final
    are None for an item of the update-in-place design (read its attributes)
    and for a chunk item (whose start is its day's; read its `windows`)."""
    start = int(sk[:20]) - SK_OFFSET
    if sk[20] == LEGACY_SEP:
        return start, sk[21:], None, None
    version, partition = sk[21:].split(VERSION_SEP, 1)
    if version.startswith(CHUNK_MARK):
        return start, partition, None, None
    return start, partition, int(version[:-1]), version[-1] == "f"


@dataclass(slots=True)
class _Put:
    """One item: a version of one window, or a chunk of several windows'."""

    pk: str
    sk: str
    partition: str
    starts: list[int]
    counts: list[int]
    finals: list[bool]
    windows: str | None  # a chunk's `windows` attribute; None for a one-window version item

    @property
    def key(self) -> tuple[str, str]:
        return self.pk, self.sk


@dataclass
class _Request:
    """One BatchWriteItem's worth of items (≤ 25), and what they are."""

    puts: list[_Put] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes)


def _flag(final: pl.Expr) -> pl.Expr:
    return pl.when(final).then(pl.lit("f")).otherwise(pl.lit("p"))


def _encode(counts: WindowCounts) -> list[_Put]:
    """The items of one frame: its windows grouped by (key, UTC day), one
    version item for a window alone in its day, a chunk item for the rest.
    Strings are built as columns; Python only sees one row per item."""
    frame = counts.frame
    starts = frame[WINDOW_START]
    if frame.height and not (-SK_OFFSET <= starts.min() and starts.max() <= _SK_MAX - SK_OFFSET):  # type: ignore[operator]
        raise ValueError(f"window start out of range in {counts.rollup}: {starts.min()}..{starts.max()}")
    nullable = [name for name in counts.key_fields if frame[name].null_count()]
    start, count, final = pl.col(WINDOW_START), pl.col(COUNT), pl.col(FINAL)
    day = (start // CHUNK_SPAN_US) * CHUNK_SPAN_US
    items = (
        frame.select(
            pl.concat_str([pl.lit(f"{counts.rollup}#"), key_column(counts.key_fields, nullable)]).alias("pk"),
            day.alias("day"), start, count, final,
        )
        .sort("pk", "day", WINDOW_START)
        # A day of many small windows (seconds) is cut into several chunks.
        .with_columns((pl.int_range(pl.len()).over("pk", "day") // CHUNK_WINDOWS).alias("part"))
        .group_by("pk", "day", "part", maintain_order=True)
        .agg(
            start, count, final,
            pl.concat_str([(start - pl.col("day")).cast(pl.String), pl.lit(","), count.cast(pl.String), _flag(final)])
            .str.join(" ").alias("windows"),
            pl.concat_str([
                (start.first() + SK_OFFSET).cast(pl.String).str.zfill(20), pl.lit(VERSION_SEP),
                count.first().cast(pl.String), _flag(final.first()), pl.lit(VERSION_SEP + counts.partition),
            ]).alias("version_sk"),
        )
    )
    suffix = VERSION_SEP + counts.partition
    puts = []
    for pk, day, starts_, counts_, finals, windows, version_sk in zip(
        items["pk"].to_list(), items["day"].to_list(), items[WINDOW_START].to_list(), items[COUNT].to_list(),
        items[FINAL].to_list(), items["windows"].to_list(), items["version_sk"].to_list(),
    ):
        if len(starts_) == 1:
            puts.append(_Put(pk, version_sk, counts.partition, starts_, counts_, finals, None))
        else:
            digest = hashlib.blake2b(windows.encode(), digest_size=12).hexdigest()
            sk = f"{_sk_start(day)}{VERSION_SEP}{CHUNK_MARK}{digest}{suffix}"
            puts.append(_Put(pk, sk, counts.partition, starts_, counts_, finals, windows))
    return puts


def _chunk_windows(day: int, windows: str) -> Iterator[tuple[int, int]]:
    """(window start, count) of each window of a chunk item of `day`."""
    for entry in windows.split(" "):
        offset, version = entry.split(",")
        yield day + int(offset), int(version[:-1])


class DynamoDbCountStore:
    def __init__(
        self,
        client: Any,
        table: str,
        threads: int = 16,
        queue_requests: int = 0,
        scan_segments: int = 4,
        page_size: int | None = None,
        ttl_seconds: int = 0,
        max_attempts: int = 8,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.table = table
        self.scan_segments = scan_segments
        self.threads = max(1, threads)
        self.max_attempts = max(1, max_attempts)
        self._backoff = Backoff(backoff_base, backoff_cap)
        self._sleep = sleep
        # Items per Query/Scan page (`Limit`); None: DynamoDB's 1 MB pages.
        self._paging = {"PaginationConfig": {"PageSize": page_size}} if page_size else {}
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ddb-write")
        self._read_pool = ThreadPoolExecutor(max_workers=max(1, scan_segments), thread_name_prefix="ddb-scan")
        # Requests sent or waiting for a thread: beyond this, upsert() waits.
        self.queue_requests = max(self.threads, queue_requests or 8 * self.threads)
        self._slots = threading.BoundedSemaphore(self.queue_requests)
        self._lock = threading.Lock()
        self._open = _Request()  # being filled
        self._in_flight: set[Future] = set()
        self._failed: list[_Request] = []  # sent, failed for good: sent again by the next upsert/commit
        self._errors: list[BaseException] = []
        # The largest provisional version of each (pk, window start,
        # partition) this process had acknowledged: (count, the item holding
        # it), so that a larger acknowledged version can retire it.
        self._provisional: dict[tuple[str, int, str], tuple[int, tuple[str, str]]] = {}
        # Items without a final version, by how many of their windows'
        # largest acknowledged versions they still hold: at 0 they go.
        self._holding: dict[tuple[str, str], int] = {}
        self._deletes: list[tuple[str, str]] = []
        # Figures for tests and the bench.
        self.requests = 0
        self.items_put = 0
        self.items_deleted = 0
        self.retries = 0

    # -- writes ---------------------------------------------------------------

    def upsert(self, windows: Sequence[WindowCounts]) -> None:
        """Queue a version item per row (max per window and partition, read
        side); full requests go out at once. Raises a write that failed for
        good after its retries (the next call sends it again)."""
        self._resend_failed()
        for counts in windows:
            if len(counts):
                self._queue(_encode(counts))

    def commit(self) -> None:
        """Send what is queued and wait until every write so far is acknowledged."""
        self._resend_failed()
        with self._lock:
            request, self._open = self._open, _Request()
        self._top_up(request)
        if len(request):
            self._send(request)
        self._wait_all()
        self._raise_failures()

    def _queue(self, puts: list[_Put]) -> None:
        for put in puts:
            self._open.puts.append(put)
            if len(self._open) >= BATCH_ITEMS:
                request, self._open = self._open, _Request()
                self._send(request)

    def _top_up(self, request: _Request) -> None:
        """Fill a request's free places with queued deletions."""
        with self._lock:
            room = BATCH_ITEMS - len(request)
            if room > 0 and self._deletes:
                request.deletes.extend(self._deletes[:room])
                del self._deletes[:room]

    def _send(self, request: _Request) -> None:
        self._top_up(request)
        self._slots.acquire()  # backpressure: at most `queue_requests` requests queued or in flight
        try:
            future = self._pool.submit(self._write, request)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self._slots.release()
        with self._lock:
            self._in_flight.discard(future)

    def _write(self, request: _Request) -> None:
        """One BatchWriteItem, its unprocessed items retried until none is left."""
        try:
            self._write_items(request)
        except BaseException as exc:  # noqa: BLE001 - kept and raised on the pipeline's thread
            with self._lock:
                self._failed.append(request)
                self._errors.append(exc)
            return
        self._acknowledged(request)

    def _write_items(self, request: _Request) -> None:
        items = self._request_items(request)
        attempt = 0
        while items:
            try:
                response = self.client.batch_write_item(RequestItems={self.table: items})
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in THROTTLING_CODES or attempt + 1 >= self.max_attempts:
                    raise
                response = {"UnprocessedItems": {self.table: items}}
            finally:
                with self._lock:
                    self.requests += 1
            items = response.get("UnprocessedItems", {}).get(self.table, [])
            if items:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise RuntimeError(f"dynamodb table {self.table!r}: {len(items)} item(s) still unprocessed "
                                       f"after {attempt} attempts")
                with self._lock:
                    self.retries += 1
                self._sleep(self._backoff.delay(attempt))

    def _request_items(self, request: _Request) -> list[dict]:
        items: dict[tuple[str, str], dict] = {}  # DynamoDB refuses one key twice in a request
        for put in request.puts:
            item: dict[str, dict[str, str]] = {HASH_KEY: {"S": put.pk}, RANGE_KEY: {"S": put.sk}}
            if put.windows is None:
                item["count"] = {"N": str(put.counts[0])}
            else:
                item[WINDOWS_ATTRIBUTE] = {"S": put.windows}
            if self.ttl_seconds:  # a chunk lives as long as its last window
                item[TTL_ATTRIBUTE] = {"N": str(put.starts[-1] // 1_000_000 + self.ttl_seconds)}
            items[(put.pk, put.sk)] = {"PutRequest": {"Item": item}}
        for pk, sk in request.deletes:
            # A put of the same version in the same request wins: the delete is
            # only garbage collection.
            items.setdefault((pk, sk), {"DeleteRequest": {"Key": {HASH_KEY: {"S": pk}, RANGE_KEY: {"S": sk}}}})
        return list(items.values())

    def _acknowledged(self, request: _Request) -> None:
        """Every item of `request` is written: items whose every window now has
        a larger (or equal) acknowledged version elsewhere may go."""
        with self._lock:
            self.items_put += len(request.puts)
            self.items_deleted += len(request.deletes)
            tracked = self._provisional
            for put in request.puts:
                item = put.key
                held = 0
                for start, count, final in zip(put.starts, put.counts, put.finals):
                    slot = (put.pk, start, put.partition)
                    if final:
                        old = tracked.pop(slot, None) if tracked else None
                        if old is not None and old[0] <= count:
                            self._release(old[1])
                        continue
                    old = tracked.get(slot)
                    if old is None or old[0] < count:
                        tracked[slot] = (count, item)
                        held += 1
                        if old is not None:
                            self._release(old[1])
                    elif old[1] == item:
                        held += 1  # the same item again (a replay): still holding
                if any(put.finals):  # a final version is never deleted
                    continue
                if held:
                    self._holding[item] = held
                else:  # acknowledged after larger versions of all its windows
                    self._holding.pop(item, None)
                    self._deletes.append(item)

    def _release(self, item: tuple[str, str]) -> None:
        """One window of `item` has a larger acknowledged version elsewhere."""
        left = self._holding.get(item)
        if left is None:  # holds a final version, or was never tracked
            return
        if left > 1:
            self._holding[item] = left - 1
        else:
            del self._holding[item]
            self._deletes.append(item)

    def _wait_all(self) -> None:
        while True:
            with self._lock:
                pending = list(self._in_flight)
            if not pending:
                return
            for future in pending:
                future.exception()  # waits; failures are recorded by _write

    def _resend_failed(self) -> None:
        """Send the requests that failed for good once more and wait for them."""
        with self._lock:
            if not self._failed:
                return
            failed, self._failed = self._failed, []
            self._errors.clear()
        for request in failed:
            self._send(request)
        self._wait_all()
        self._raise_failures()

    def _raise_failures(self) -> None:
        with self._lock:
            if not self._errors:
                return
            error = self._errors[0]
            self._errors.clear()
        raise error

    def flush_deletes(self) -> None:
        """Send every queued deletion of superseded versions (at close)."""
        while True:
            with self._lock:
                if not self._deletes:
                    break
                chunk, self._deletes = self._deletes[:BATCH_ITEMS], self._deletes[BATCH_ITEMS:]
            self._send(_Request(deletes=chunk))
        self._wait_all()

    # -- reads ----------------------------------------------------------------

    def _query(self, **params: Any) -> Iterator[dict]:
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(TableName=self.table, ConsistentRead=True, **params, **self._paging):
            yield from page.get("Items", ())

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        if end_us <= start_us:
            return []
        # Sort keys start with the zero-padded window start (a chunk's: its
        # day's); "<end-1>~" sorts after every sort key of start end-1
        # ('~' > '|' > '#') and before any of start end.
        items = self._query(
            KeyConditionExpression="#pk = :pk AND #sk BETWEEN :lo AND :hi",
            ExpressionAttributeNames={"#pk": HASH_KEY, "#sk": RANGE_KEY, "#c": "count", "#w": WINDOWS_ATTRIBUTE},
            ExpressionAttributeValues={
                ":pk": {"S": item_pk(rollup, key)},
                ":lo": {"S": _sk_start(start_us // CHUNK_SPAN_US * CHUNK_SPAN_US)},  # the chunk of start_us's day
                ":hi": {"S": _sk_start(end_us - 1) + _HI},
            },
            ProjectionExpression="#sk, #c, #w",
        )
        sums: dict[int, int] = defaultdict(int)
        for (start, _), count in _max_per_slot(items).items():
            if start_us <= start < end_us:
                sums[start] += count
        return [(start, count) for start, count in sorted(sums.items()) if count]

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        items = self._query(
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": HASH_KEY, "#sk": RANGE_KEY, "#c": "count", "#w": WINDOWS_ATTRIBUTE},
            ExpressionAttributeValues={":pk": {"S": item_pk(rollup, key)}},
            ProjectionExpression="#sk, #c, #w",
        )
        return sum(_max_per_slot(items).values())

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        segments = self.scan_segments
        parts = list(self._read_pool.map(lambda segment: self._scan_segment(rollup, segment, segments), range(segments)))
        best: dict[tuple[str, int, str], int] = {}
        for part in parts:  # a (window, partition) can only be in one segment (same pk), but be safe
            for ident, count in part.items():
                if count > best.get(ident, -1):
                    best[ident] = count
        sums: dict[tuple[int, str], int] = defaultdict(int)
        for (key, start, _), count in best.items():
            sums[(start, key)] += count
        prefix = len(rollup) + 1
        decoded = sorted((start, tuple(json.loads(key[prefix:])), count) for (start, key), count in sums.items())
        return iter(decoded)

    def _scan_segment(self, rollup: str, segment: int, total_segments: int) -> dict[tuple[str, int, str], int]:
        best: dict[tuple[str, int, str], int] = {}
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table,
            ConsistentRead=True,
            Segment=segment,
            TotalSegments=total_segments,
            # The key's JSON array starts with '[': "a#[" never matches rollup "a#b".
            FilterExpression="begins_with(#pk, :prefix)",
            ExpressionAttributeNames={"#pk": HASH_KEY, "#sk": RANGE_KEY, "#c": "count", "#w": WINDOWS_ATTRIBUTE},
            ExpressionAttributeValues={":prefix": {"S": f"{rollup}#["}},
            ProjectionExpression="#pk, #sk, #c, #w",
            **self._paging,
        )
        for page in pages:
            for item in page.get("Items", ()):
                pk = item[HASH_KEY]["S"]
                for start, partition, count in _versions(item):
                    ident = (pk, start, partition)
                    if count > best.get(ident, -1):
                        best[ident] = count
        return best

    def close(self) -> None:
        try:
            self.commit()
            self.flush_deletes()
        finally:
            self._pool.shutdown(wait=True)
            self._read_pool.shutdown(wait=True)


def _versions(item: dict) -> Iterator[tuple[int, str, int]]:
    """(window start, partition, count) of each window an item holds."""
    start, partition, count, _ = parse_sk(item[RANGE_KEY]["S"])
    if WINDOWS_ATTRIBUTE in item:  # a chunk: its sort key starts with its day
        for window_start, count in _chunk_windows(start, item[WINDOWS_ATTRIBUTE]["S"]):
            yield window_start, partition, count
    else:
        yield start, partition, count if count is not None else int(item["count"]["N"])


def _max_per_slot(items: Iterable[dict]) -> dict[tuple[int, str], int]:
    """The largest version per (window start, partition) of one pk's items."""
    best: dict[tuple[int, str], int] = {}
    for item in items:
        for start, partition, count in _versions(item):
            if count > best.get((start, partition), -1):
                best[(start, partition)] = count
    return best
