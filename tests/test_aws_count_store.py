"""One `CountStore` contract, run against SQLite and against DynamoDB (moto),
plus what only the DynamoDB design has: paging, version items (max per window
and partition), bulk and concurrent BatchWriteItem puts, retries of
unprocessed items and throttling, items of the earlier design.
(`upsert` here: the counts as `WindowCounts` frames, then `commit`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import threading
import time

import botocore.exceptions

from consumers.dynamodb_count_store import HASH_KEY, RANGE_KEY, SK_OFFSET, DynamoDbCountStore, item_pk, item_sk, parse_sk
from consumers.ports import CountStore
from consumers.sqlite_count_store import SqliteCountStore
from aws.resources import ensure_table
from streams.events import WindowCount
from tests.aws_fixtures import client, unique
from tests.count_support import as_frames, upsert
from tests.fault_proxy import BATCH_WRITE_ITEM, FaultProxy

pytestmark = pytest.mark.timeout(60)

H = 3_600_000_000
D = 24 * H
T0 = 1_614_556_800_000_000  # 2021-03-01T00:00:00Z


def dynamodb_store(endpoint: str, page_size: int | None = None) -> DynamoDbCountStore:
    dynamodb = client("dynamodb", endpoint, max_pool_connections=20)
    table = unique("counts")
    ensure_table(dynamodb, table, True, HASH_KEY, RANGE_KEY)
    return DynamoDbCountStore(dynamodb, table, threads=8, page_size=page_size)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path: Path) -> Iterator[CountStore]:
    if request.param == "sqlite":
        adapter: CountStore = SqliteCountStore(tmp_path / "counts.sqlite3")
    else:
        adapter = dynamodb_store(request.getfixturevalue("aws_env"))
    yield adapter
    adapter.close()


def wc(key: tuple[str, ...], start: int, partition: str, count: int, final: bool = True, rollup: str = "r") -> WindowCount:
    return WindowCount(rollup, key, start, partition, count, final)


def test_upsert_keeps_the_max_and_never_lowers(store: CountStore) -> None:
    upsert(store, [wc(("c1",), T0, "p1", 5, final=False)])
    upsert(store, [wc(("c1",), T0, "p1", 3)])  # a replay of fewer events
    assert store.buckets("r", ("c1",), T0, T0 + H) == [(T0, 5)]
    upsert(store, [wc(("c1",), T0, "p1", 7)])
    upsert(store, [wc(("c1",), T0, "p1", 7)])  # the same again: idempotent, no doubling
    assert store.buckets("r", ("c1",), T0, T0 + H) == [(T0, 7)]
    assert store.total("r", ("c1",)) == 7


def test_partitions_add_up(store: CountStore) -> None:
    upsert(store, [wc(("c1",), T0, "shard-0", 5), wc(("c1",), T0, "shard-1", 2), wc(("c1",), T0 + H, "shard-1", 4)])
    upsert(store, [wc(("c1",), T0, "shard-1", 1)])  # lower: ignored, not subtracted
    assert store.buckets("r", ("c1",), T0, T0 + 2 * H) == [(T0, 7), (T0 + H, 4)]
    assert store.total("r", ("c1",)) == 11
    assert list(store.export("r")) == [(T0, ("c1",), 7), (T0 + H, ("c1",), 4)]


def test_buckets_range_is_start_inclusive_end_exclusive(store: CountStore) -> None:
    upsert(store, [wc(("c1",), T0 + i * H, "p", i + 1) for i in range(5)] + [wc(("c2",), T0 + H, "p", 50)])
    assert store.buckets("r", ("c1",), T0 + H, T0 + 3 * H) == [(T0 + H, 2), (T0 + 2 * H, 3)]
    assert store.buckets("r", ("c1",), T0 + 1, T0 + 2 * H) == [(T0 + H, 2)]
    assert store.buckets("r", ("c1",), T0 + H, T0 + H) == []
    assert store.buckets("r", ("c1",), T0 + 5 * H, T0 + 9 * H) == []
    assert store.buckets("r", ("nobody",), T0, T0 + 9 * H) == []
    assert store.buckets("other", ("c1",), T0, T0 + 9 * H) == []


def test_export_orders_by_window_start_then_key_and_keeps_rollups_apart(store: CountStore) -> None:
    keys = [("b",), ("a",), ("a#b",), ('q"uote',), ("ünï",), ("a", "x")]
    counts = [wc(k, T0 + (i % 2) * H, "p", i + 1) for i, k in enumerate(keys)]
    counts.append(wc(("a",), T0, "p", 99, rollup="another"))
    upsert(store, counts)

    exported = list(store.export("r"))

    assert exported == sorted((c.window_start_us, c.key, c.count) for c in counts if c.rollup == "r")
    assert list(store.export("another")) == [(T0, ("a",), 99)]
    assert list(store.export("none")) == []
    assert store.total("r", ("a#b",)) == 3


def test_windows_before_1970_and_far_future(store: CountStore) -> None:
    early, late = -5 * H, 253_402_300_000_000_000 - H  # 1969 and year 9999
    upsert(store, [wc(("c",), early, "p", 2), wc(("c",), late, "p", 3)])
    assert store.buckets("r", ("c",), -10 * H, 0) == [(early, 2)]
    assert store.buckets("r", ("c",), early, late + H) == [(early, 2), (late, 3)]


def test_one_call_with_many_items_and_duplicates_within_it(store: CountStore) -> None:
    counts = [wc((f"c{i % 40}",), T0 + (i // 40) * H, f"p{i % 3}", i) for i in range(360)]
    # The same item twice in one call: the larger count wins, whatever the order.
    counts += [wc(("c0",), T0, "p0", 1000), wc(("c0",), T0, "p0", 999)]
    upsert(store, counts)
    expected: dict[tuple[int, tuple[str, ...]], int] = {}
    best: dict[tuple, int] = {}
    for c in counts:
        ident = (c.window_start_us, c.key, c.partition)
        best[ident] = max(best.get(ident, 0), c.count)
    for (start, key, _), count in best.items():
        expected[(start, key)] = expected.get((start, key), 0) + count
    assert list(store.export("r")) == sorted((s, k, n) for (s, k), n in expected.items())


# -- DynamoDB only ----------------------------------------------------------


def test_queries_page_through_results(aws_env: str) -> None:
    store = dynamodb_store(aws_env, page_size=7)
    calls: list[str] = []
    store.client.meta.events.register("provide-client-params.dynamodb.*", lambda model, **_: calls.append(model.name))
    # A day apart: one item per window (windows of one day share a chunk item).
    upsert(store, [wc(("c1",), T0 + i * D, f"p{j}", i + j) for i in range(30) for j in range(2)])

    buckets = store.buckets("r", ("c1",), T0, T0 + 30 * D)
    queries = calls.count("Query")
    total = store.total("r", ("c1",))
    exported = list(store.export("r"))

    assert buckets == [(T0 + i * D, 2 * i + 1) for i in range(30)]
    assert queries >= 60 // 7  # 60 items, 7 a page
    assert total == sum(2 * i + 1 for i in range(30))
    assert exported == [(s, ("c1",), n) for s, n in buckets]
    assert calls.count("Scan") > store.scan_segments  # more than one page per segment
    store.close()


def versions(store: DynamoDbCountStore, rollup: str = "r", key: tuple[str, ...] = ("c",)) -> list[tuple[int, str, int, bool]]:
    """Every version item of one key: (window start, partition, count, final)."""
    items = store.client.query(
        TableName=store.table, ConsistentRead=True, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": item_pk(rollup, key)}},
    )["Items"]
    out = []
    for item in items:
        start, partition, count, final = parse_sk(item[RANGE_KEY]["S"])
        assert count == int(item["count"]["N"])
        out.append((start, partition, count, final))
    return sorted(out)


def test_versions_a_provisional_count_never_lowers_a_final_one_nor_a_rebuild_a_complete_one(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    upsert(store, [wc(("c",), T0, "p", 4, final=False)])
    upsert(store, [wc(("c",), T0, "p", 4, final=True)])  # same count, now final
    upsert(store, [wc(("c",), T0, "p", 3, final=False)])  # a replay's running count, lower
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0, 4)]
    upsert(store, [wc(("c",), T0, "p", 2, final=True)])  # a partial rebuild of the final window
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0, 4)]
    assert store.total("r", ("c",)) == 4
    upsert(store, [wc(("c",), T0, "p", 5, final=False)])  # larger: it counts
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0, 5)]
    assert list(store.export("r")) == [(T0, ("c",), 5)]
    store.close()
    # The provisional 4 went once the final 4 was written; the rest stays (max wins).
    assert versions(store) == [(T0, "p", 2, True), (T0, "p", 3, False), (T0, "p", 4, True), (T0, "p", 5, False)]


def test_superseded_provisional_versions_are_deleted_after_the_larger_one_is_written(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    for count in (1, 2, 5):
        upsert(store, [wc(("c",), T0, "p", count, final=False), wc(("c",), T0 + H, "q", count * 10, final=False)])
    upsert(store, [wc(("c",), T0, "p", 7, final=True)])
    store.close()
    assert versions(store) == [(T0, "p", 7, True), (T0 + H, "q", 50, False)]
    assert store.items_deleted == 5  # 1p, 2p, 5p of the first window; 10p, 20p of the second
    assert store.buckets("r", ("c",), T0, T0 + 2 * H) == [(T0, 7), (T0 + H, 50)]


def test_upserts_are_batches_of_25_plain_puts_sent_concurrently(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    calls: list[str] = []
    sizes: list[int] = []
    in_flight = [0, 0]  # now, most
    lock = threading.Lock()

    def before(model, params, **_) -> None:
        calls.append(model.name)
        if model.name == "BatchWriteItem":
            (entries,) = params["RequestItems"].values()
            sizes.append(len(entries))
            assert all("PutRequest" in e and set(e["PutRequest"]["Item"]) == {"pk", "sk", "count"} for e in entries)
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight)

    def after(model, **_) -> None:
        if model.name == "BatchWriteItem":
            with lock:
                in_flight[0] -= 1

    store.client.meta.events.register("provide-client-params.dynamodb.*", before)
    store.client.meta.events.register("after-call.dynamodb.*", after)
    counts = [wc((f"c{i}",), T0 + (i % 7) * H, "p", i + 1) for i in range(1001)]
    store.upsert(as_frames(counts))
    deadline = time.monotonic() + 10
    while len(sizes) < 40 and time.monotonic() < deadline:  # the full requests go out without a commit
        time.sleep(0.01)
    assert len(sizes) == 40
    store.commit()
    assert set(calls) == {"BatchWriteItem"}  # no UpdateItem, no read
    assert sorted(sizes, reverse=True) == [25] * 40 + [1]
    assert in_flight[1] > 1  # concurrent requests
    assert store.total("r", ("c500",)) == 501
    store.close()


def test_unprocessed_items_and_throttling_are_retried_before_the_commit_returns(proxy: FaultProxy) -> None:
    dynamodb = client("dynamodb", proxy.endpoint)
    table = unique("counts")
    ensure_table(dynamodb, table, True, HASH_KEY, RANGE_KEY)
    store = DynamoDbCountStore(dynamodb, table, threads=1, backoff_base=0.01)
    proxy.unprocessed(lambda i, n: i % 2 == 0, times=3)  # half of each of three requests not written
    proxy.error(BATCH_WRITE_ITEM, "ProvisionedThroughputExceededException", times=2, after=3)
    counts = [wc((f"c{i}",), T0, "p", i + 1) for i in range(100)]
    store.upsert(as_frames(counts))
    store.commit()
    assert store.retries == 5
    assert store.requests == 4 + 5
    assert list(store.export("r")) == sorted((T0, (f"c{i}",), i + 1) for i in range(100))
    store.close()


def test_a_write_that_keeps_failing_is_raised_by_commit_and_sent_again_by_the_next(proxy: FaultProxy) -> None:
    dynamodb = client("dynamodb", proxy.endpoint)
    table = unique("counts")
    ensure_table(dynamodb, table, True, HASH_KEY, RANGE_KEY)
    store = DynamoDbCountStore(dynamodb, table, threads=2, max_attempts=2, backoff_base=0.01)
    proxy.error(BATCH_WRITE_ITEM, "ProvisionedThroughputExceededException", times=2)
    store.upsert(as_frames([wc(("c",), T0, "p", 3)]))
    with pytest.raises(botocore.exceptions.ClientError):
        store.commit()  # nothing acknowledged: the checkpoint must not move
    assert store.total("r", ("c",)) == 0
    proxy.error(BATCH_WRITE_ITEM, "ValidationException", times=1)
    with pytest.raises(botocore.exceptions.ClientError):
        store.upsert(as_frames([wc(("d",), T0, "p", 1)]))  # sends the failed request first: fails again
    store.upsert(as_frames([wc(("d",), T0, "p", 1)]))
    store.commit()
    assert (store.total("r", ("c",)), store.total("r", ("d",))) == (3, 1)
    store.close()


def test_items_of_the_update_in_place_design_are_read_as_one_more_version(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    legacy = {HASH_KEY: {"S": item_pk("r", ("c",))}, RANGE_KEY: {"S": f"{T0 + SK_OFFSET:020d}#shard-0"},
              "count": {"N": "6"}, "final": {"N": "1"}, "rollup": {"S": "r"}, "key": {"S": '["c"]'},
              "window_start": {"N": str(T0)}, "partition": {"S": "shard-0"}}
    store.client.put_item(TableName=store.table, Item=legacy)
    upsert(store, [wc(("c",), T0, "shard-0", 4), wc(("c",), T0, "shard-1", 2), wc(("c",), T0 + H, "shard-0", 9)])
    assert store.buckets("r", ("c",), T0, T0 + 2 * H) == [(T0, 8), (T0 + H, 9)]
    assert store.total("r", ("c",)) == 17
    assert list(store.export("r")) == [(T0, ("c",), 8), (T0 + H, ("c",), 9)]
    store.close()


def test_export_keeps_a_rollup_apart_from_one_whose_name_extends_it(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    upsert(store, [wc(("c",), T0, "p", 1, rollup="a"), wc(("c",), T0, "p", 2, rollup="a#b"),
                   wc(("x#[",), T0, "p", 3, rollup="a")])
    assert list(store.export("a")) == [(T0, ("c",), 1), (T0, ("x#[",), 3)]
    assert list(store.export("a#b")) == [(T0, ("c",), 2)]
    store.close()


def test_items_carry_expires_at_when_ttl_is_configured(aws_env: str) -> None:
    from aws.resources import enable_ttl

    store = dynamodb_store(aws_env)
    store.ttl_seconds = 30 * 86_400
    enable_ttl(store.client, store.table, "expires_at")
    enable_ttl(store.client, store.table, "expires_at")  # already on: fine
    upsert(store, [wc(("c",), T0, "p", 1), wc(("d",), T0, "p", 1), wc(("d",), T0 + H, "p", 2)])
    (chunk,) = raw_items(store, key=("d",))
    assert int(chunk["expires_at"]["N"]) == (T0 + H) // 1_000_000 + 30 * 86_400  # its last window's
    item = store.client.get_item(TableName=store.table, Key={HASH_KEY: {"S": item_pk("r", ("c",))}, RANGE_KEY: {"S": item_sk(T0, "p", 1, True)}})["Item"]
    assert int(item["expires_at"]["N"]) == T0 // 1_000_000 + 30 * 86_400
    ttl = store.client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    store.close()


def raw_items(store: DynamoDbCountStore, rollup: str = "r", key: tuple[str, ...] = ("c",)) -> list[dict]:
    return store.client.query(
        TableName=store.table, ConsistentRead=True, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": item_pk(rollup, key)}},
    )["Items"]


M = 60_000_000
MIDNIGHT = T0 + D  # T0 is a UTC midnight


def test_windows_of_one_key_and_day_share_a_chunk_item(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    # 90 minute windows either side of midnight, two partitions, and a lone window on another day.
    counts = [wc(("c",), MIDNIGHT + i * M, "p", (i * 7) % 11 + 1) for i in range(-40, 50)]
    counts += [wc(("c",), MIDNIGHT + i * M, "q", 3, final=i % 2 == 0) for i in range(-5, 5)]
    counts += [wc(("c",), MIDNIGHT + 5 * D, "p", 9)]
    upsert(store, counts)
    oracle: dict[int, int] = {}
    for c in counts:
        oracle[c.window_start_us] = oracle.get(c.window_start_us, 0) + c.count

    items = raw_items(store)
    assert len(items) == 5  # (day before, day of) x (p, q) chunks, and one version item
    assert sum("windows" in item for item in items) == 4
    assert store.items_put == 5
    for lo, hi in [(T0, T0 + 9 * D), (MIDNIGHT - 3 * M, MIDNIGHT + 4 * M), (MIDNIGHT + 17 * M, MIDNIGHT + 18 * M),
                   (MIDNIGHT - 40 * M + 1, MIDNIGHT), (MIDNIGHT + 5 * D, MIDNIGHT + 5 * D + 1)]:
        assert store.buckets("r", ("c",), lo, hi) == sorted((s, n) for s, n in oracle.items() if lo <= s < hi)
    assert store.total("r", ("c",)) == sum(oracle.values())
    assert list(store.export("r")) == sorted((s, ("c",), n) for s, n in oracle.items())
    store.close()


def test_a_replayed_chunk_rewrites_the_same_item_and_the_max_still_wins(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    first = [wc(("c",), T0 + i * M, "p", 5, final=False) for i in range(10)]
    upsert(store, first)
    upsert(store, first)  # a replay: the same content is the same item
    assert len(raw_items(store)) == 1
    upsert(store, [wc(("c",), T0 + i * M, "p", 3) for i in range(10)])  # a partial rebuild, final
    upsert(store, [wc(("c",), T0 + i * M, "p", 2, final=False) for i in range(0, 10, 3)])  # a lower running count
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0 + i * M, 5) for i in range(10)]
    store.close()


def test_a_provisional_chunk_goes_once_each_of_its_windows_has_a_larger_version(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    upsert(store, [wc(("c",), T0 + i * M, "p", 2, final=False) for i in range(3)])
    upsert(store, [wc(("c",), T0 + i * M, "p", 4, final=False) for i in range(2)])  # windows 0 and 1 only
    assert store.items_deleted == 0
    upsert(store, [wc(("c",), T0 + 2 * M, "p", 6)])  # window 2, final: the first chunk holds nothing now
    store.commit()
    store.flush_deletes()
    assert store.items_deleted == 1
    upsert(store, [wc(("c",), T0 + i * M, "p", 4) for i in range(2)])  # final: the second chunk goes too
    store.close()
    assert store.items_deleted == 2
    items = raw_items(store)
    assert len(items) == 2  # the final chunk of windows 0 and 1, the final version of window 2
    assert store.buckets("r", ("c",), T0, T0 + H) == [(T0, 4), (T0 + M, 4), (T0 + 2 * M, 6)]


def test_a_day_of_many_windows_is_cut_into_chunks_of_bounded_size(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    second = 1_000_000
    counts = [wc(("c",), T0 + i * second, "p", i % 5 + 1) for i in range(2500)]
    upsert(store, counts)
    items = raw_items(store)
    assert sorted(len(item["windows"]["S"].split(" ")) for item in items) == [500, 1000, 1000]
    assert store.total("r", ("c",)) == sum(c.count for c in counts)
    assert store.buckets("r", ("c",), T0 + 1234 * second, T0 + 1240 * second) == [
        (T0 + i * second, i % 5 + 1) for i in range(1234, 1240)]
    store.close()
