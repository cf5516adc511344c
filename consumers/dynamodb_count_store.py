"""`CountStore` on DynamoDB: the same contract and answers as `SqliteCountStore`.

Table design (string keys, on-demand billing)::

    pk  (HASH)   "<rollup>#<key as compact JSON>"        customer_hourly#["c1"]
    sk  (RANGE)  "<window start + 10^18, 20 digits>#<partition>"
                                            01001614556800000000#kinesis:events/shardId-000000000000
    count        N   this partition's count of the window (the max ever written)
    final        N   1 once the window closed in that partition, else 0
    rollup, key, window_start, partition: the same values as plain attributes
    expires_at   N   epoch seconds of window start + `count_ttl_days`, only when
                     TTL is configured (DynamoDB TTL deletes the item after it)

- One item per (rollup, key, window start, source partition): each Kinesis
  shard writes only its own items, so writers never contend for an item.
- `upsert` is an UpdateItem per item with `ConditionExpression
  attribute_not_exists(count) OR count < :new`: the stored count becomes
  max(stored, new); a failed condition means "already at least this", and is
  ignored. Replays and provisional counts are therefore idempotent; nothing is
  ever ADDed. (BatchWriteItem cannot take a condition, so it is not used.)
  Items of one call go out in parallel on a small thread pool; within a call,
  counts for the same item are merged first (max), so no two requests of one
  call race on an item. `upsert` takes the counter's frames (`WindowCounts`)
  and sends one request per row: a write is durable when its request
  returns, so `commit()` has nothing to do.
- `buckets` is one Query on pk with `sk BETWEEN` the window-start range (the
  offset keeps the zero-padded start sortable for pre-1970 windows too),
  following `LastEvaluatedKey`, summing the partitions client-side.
- `total` is one Query on pk; `export` is a parallel Scan filtered on
  `rollup`, summed and sorted client-side. A GSI on rollup would make every
  write of a rollup also hit one GSI partition (a write hot spot) to speed up
  an offline command, so there is none.
- Reads are strongly consistent: a query right after a job sees its writes.

Usage::

    store = DynamoDbCountStore(aws_client("dynamodb", aws), "rivulet-counts")
    store.upsert(window_counts)  # a list of WindowCounts frames
    store.commit()               # nothing to do: each write is already durable
    store.buckets("customer_hourly", ("c1",), start_us, end_us)
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

from streams.events import WindowCount
from streams.window_counts import WindowCounts

HASH_KEY = "pk"
RANGE_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
SK_OFFSET = 10**18  # window starts from year -29719 to 33658 stay non-negative and 20 digits
_SK_MAX = 10**20 - 1
_NAMES = {"#c": "count", "#f": "final", "#r": "rollup", "#k": "key", "#w": "window_start", "#p": "partition"}
_TTL_NAMES = {**_NAMES, "#x": TTL_ATTRIBUTE}


def encode_key(key: tuple[str, ...]) -> str:
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def item_pk(rollup: str, key: tuple[str, ...]) -> str:
    return f"{rollup}#{encode_key(key)}"


def _sk_start(window_start_us: int) -> str:
    value = min(max(window_start_us + SK_OFFSET, 0), _SK_MAX)
    return f"{value:020d}"


def item_sk(window_start_us: int, partition: str) -> str:
    if not 0 <= window_start_us + SK_OFFSET <= _SK_MAX:
        raise ValueError(f"window start out of range: {window_start_us}")
    return f"{_sk_start(window_start_us)}#{partition}"


class DynamoDbCountStore:
    def __init__(
        self,
        client: Any,
        table: str,
        threads: int = 16,
        scan_segments: int = 4,
        page_size: int | None = None,
        ttl_seconds: int = 0,
    ) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.table = table
        self.scan_segments = scan_segments
        # Items per Query/Scan page (`Limit`); None: DynamoDB's 1 MB pages.
        self._paging = {"PaginationConfig": {"PageSize": page_size}} if page_size else {}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ddb-upsert")
        self.update_calls = 0

    # -- writes ---------------------------------------------------------------

    def upsert(self, windows: Sequence[WindowCounts]) -> None:
        """max(stored, new) per item; raises the first failure after all tries."""
        merged: dict[tuple[str, str], WindowCount] = {}
        for c in (row for counts in windows for row in counts.rows()):
            ident = (item_pk(c.rollup, c.key), item_sk(c.window_start_us, c.partition))
            old = merged.get(ident)
            if old is not None:
                c = WindowCount(c.rollup, c.key, c.window_start_us, c.partition, max(c.count, old.count), c.final or old.final)
            merged[ident] = c
        if not merged:
            return
        futures = [self._pool.submit(self._upsert_one, pk, sk, c) for (pk, sk), c in merged.items()]
        errors = [f.exception() for f in futures]
        self.update_calls += len(futures)
        for error in errors:
            if error is not None:
                raise error

    def commit(self) -> None:
        """Nothing to do: every `upsert` request is durable when it returns."""

    def _upsert_one(self, pk: str, sk: str, c: WindowCount) -> None:
        values = {
            ":c": {"N": str(c.count)},
            ":f": {"N": "1" if c.final else "0"},
            ":r": {"S": c.rollup},
            ":k": {"S": encode_key(c.key)},
            ":w": {"N": str(c.window_start_us)},
            ":p": {"S": c.partition},
        }
        # A provisional count must not clear a stored `final`.
        final_expr = ":f" if c.final else "if_not_exists(#f, :f)"
        update = f"SET #c = :c, #f = {final_expr}, #r = :r, #k = :k, #w = :w, #p = :p"
        if self.ttl_seconds:
            update += ", #x = :x"
            values[":x"] = {"N": str(c.window_start_us // 1_000_000 + self.ttl_seconds)}
        try:
            self.client.update_item(
                TableName=self.table,
                Key={HASH_KEY: {"S": pk}, RANGE_KEY: {"S": sk}},
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(#c) OR #c < :c",
                ExpressionAttributeNames=_TTL_NAMES if self.ttl_seconds else _NAMES,
                ExpressionAttributeValues=values,
                **({"ReturnValuesOnConditionCheckFailure": "ALL_OLD"} if c.final else {}),
            )
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            # The stored count is already >= this one. Only `final` may still
            # need raising (same count, window now closed).
            old = exc.response.get("Item") or {}
            if c.final and old.get("final", {}).get("N") != "1":
                try:
                    self.client.update_item(
                        TableName=self.table,
                        Key={HASH_KEY: {"S": pk}, RANGE_KEY: {"S": sk}},
                        UpdateExpression="SET #f = :one",
                        ConditionExpression="attribute_exists(#c) AND #f < :one",
                        ExpressionAttributeNames={"#c": "count", "#f": "final"},
                        ExpressionAttributeValues={":one": {"N": "1"}},
                    )
                except self.client.exceptions.ConditionalCheckFailedException:
                    pass

    # -- reads ----------------------------------------------------------------

    def _query(self, **params: Any) -> Iterator[dict]:
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(TableName=self.table, ConsistentRead=True, **params, **self._paging):
            yield from page.get("Items", ())

    def buckets(self, rollup: str, key: tuple[str, ...], start_us: int, end_us: int) -> list[tuple[int, int]]:
        if end_us <= start_us:
            return []
        # The sk of window start s is "<s>#<partition>". "<end-1>~" sorts after
        # every sk of start end-1 ('~' > '#') and before any sk of start end.
        items = self._query(
            KeyConditionExpression="#pk = :pk AND #sk BETWEEN :lo AND :hi",
            ExpressionAttributeNames={"#pk": HASH_KEY, "#sk": RANGE_KEY, "#w": "window_start", "#c": "count"},
            ExpressionAttributeValues={
                ":pk": {"S": item_pk(rollup, key)},
                ":lo": {"S": _sk_start(start_us)},
                ":hi": {"S": _sk_start(end_us - 1) + "~"},
            },
            ProjectionExpression="#w, #c",
        )
        sums: dict[int, int] = defaultdict(int)
        for item in items:
            start = int(item["window_start"]["N"])
            if start_us <= start < end_us:
                sums[start] += int(item["count"]["N"])
        return [(start, count) for start, count in sorted(sums.items()) if count]

    def total(self, rollup: str, key: tuple[str, ...]) -> int:
        items = self._query(
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": HASH_KEY, "#c": "count"},
            ExpressionAttributeValues={":pk": {"S": item_pk(rollup, key)}},
            ProjectionExpression="#c",
        )
        return sum(int(item["count"]["N"]) for item in items)

    def export(self, rollup: str) -> Iterator[tuple[int, tuple[str, ...], int]]:
        segments = self.scan_segments
        parts = list(self._pool.map(lambda segment: self._scan_segment(rollup, segment, segments), range(segments)))
        sums: dict[tuple[int, str], int] = defaultdict(int)
        for part in parts:
            for ident, count in part.items():
                sums[ident] += count
        decoded = sorted((start, tuple(json.loads(key)), count) for (start, key), count in sums.items())
        return iter(decoded)

    def _scan_segment(self, rollup: str, segment: int, total_segments: int) -> dict[tuple[int, str], int]:
        sums: dict[tuple[int, str], int] = defaultdict(int)
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table,
            ConsistentRead=True,
            Segment=segment,
            TotalSegments=total_segments,
            FilterExpression="#r = :r",
            ExpressionAttributeNames={"#r": "rollup", "#k": "key", "#w": "window_start", "#c": "count"},
            ExpressionAttributeValues={":r": {"S": rollup}},
            ProjectionExpression="#k, #w, #c",
            **self._paging,
        )
        for page in pages:
            for item in page.get("Items", ()):
                sums[(int(item["window_start"]["N"]), item["key"]["S"])] += int(item["count"]["N"])
        return sums

    def close(self) -> None:
        self._pool.shutdown(wait=True)
