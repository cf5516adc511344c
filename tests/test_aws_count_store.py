"""One `CountStore` contract, run against SQLite and against DynamoDB (moto),
plus what only the DynamoDB design has: paging, the final flag, no ADD.
(`upsert` here: the counts as `WindowCounts` frames, then `commit`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from consumers.dynamodb_count_store import HASH_KEY, RANGE_KEY, DynamoDbCountStore, item_pk, item_sk
from consumers.ports import CountStore
from consumers.sqlite_count_store import SqliteCountStore
from producers.aws_clients import ensure_table
from streams.events import WindowCount
from tests.aws_fixtures import client, unique
from tests.count_support import upsert

pytestmark = pytest.mark.timeout(60)

H = 3_600_000_000
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
    upsert(store, [wc(("c1",), T0 + i * H, f"p{j}", i + j) for i in range(30) for j in range(2)])

    buckets = store.buckets("r", ("c1",), T0, T0 + 30 * H)
    queries = calls.count("Query")
    total = store.total("r", ("c1",))
    exported = list(store.export("r"))

    assert buckets == [(T0 + i * H, 2 * i + 1) for i in range(30)]
    assert queries >= 60 // 7  # 60 items, 7 a page
    assert total == sum(2 * i + 1 for i in range(30))
    assert exported == [(s, ("c1",), n) for s, n in buckets]
    assert calls.count("Scan") > store.scan_segments  # more than one page per segment
    store.close()


def test_final_flag_rises_and_a_provisional_count_never_clears_it(aws_env: str) -> None:
    store = dynamodb_store(aws_env)

    def item() -> dict:
        return store.client.get_item(
            TableName=store.table, Key={HASH_KEY: {"S": item_pk("r", ("c",))}, RANGE_KEY: {"S": item_sk(T0, "p")}}
        )["Item"]

    upsert(store, [wc(("c",), T0, "p", 4, final=False)])
    assert (item()["count"]["N"], item()["final"]["N"]) == ("4", "0")
    upsert(store, [wc(("c",), T0, "p", 4, final=True)])  # same count, now final
    assert (item()["count"]["N"], item()["final"]["N"]) == ("4", "1")
    upsert(store, [wc(("c",), T0, "p", 5, final=False)])  # a later provisional max
    assert (item()["count"]["N"], item()["final"]["N"]) == ("5", "1")
    store.close()


def test_upserts_are_conditional_updates_never_add(aws_env: str) -> None:
    store = dynamodb_store(aws_env)
    seen: list[dict] = []
    store.client.meta.events.register("provide-client-params.dynamodb.UpdateItem", lambda params, **_: seen.append(dict(params)))
    upsert(store, [wc(("c",), T0, "p", 2), wc(("d",), T0, "p", 3)])
    assert len(seen) == 2
    for params in seen:
        assert "ADD" not in params["UpdateExpression"]
        assert params["ConditionExpression"] == "attribute_not_exists(#c) OR #c < :c"
    store.close()


def test_items_carry_expires_at_when_ttl_is_configured(aws_env: str) -> None:
    from producers.aws_clients import enable_ttl

    store = dynamodb_store(aws_env)
    store.ttl_seconds = 30 * 86_400
    enable_ttl(store.client, store.table, "expires_at")
    enable_ttl(store.client, store.table, "expires_at")  # already on: fine
    upsert(store, [wc(("c",), T0, "p", 1)])
    item = store.client.get_item(TableName=store.table, Key={HASH_KEY: {"S": item_pk("r", ("c",))}, RANGE_KEY: {"S": item_sk(T0, "p")}})["Item"]
    assert int(item["expires_at"]["N"]) == T0 // 1_000_000 + 30 * 86_400
    ttl = store.client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    store.close()
