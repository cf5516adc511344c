"""The Kinesis shard reader against moto: every shard, checkpoints, iterator
types, KPL de-aggregation, idling only when caught up, the GetRecords rate,
and expired iterators (through the fault proxy)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from observability.health import PipelineHealth
from aws.resources import ensure_table
from aws.settings import AwsConfig
from producers.kinesis_lease_table import HASH_KEY, Lease, LeaseTable
from producers.kinesis_positions import SequenceMarks
from producers.kinesis_reader import KinesisReader
from producers.kinesis_settings import KinesisReaderSettings
from producers.kinesis_shard_poller import OUTAGE_AFTER_FAILED_POLLS
from producers.kinesis_shard_set import ShardSet
from streams.batches import BatchKind, RecordBatch
from tests.aws_fixtures import read_batches, client, unique
from tests.fault_proxy import GET_RECORDS, FaultProxy

pytestmark = pytest.mark.timeout(60)

FAST = AwsConfig(polls_per_second=5.0)


def make_stream(endpoint: str, shards: int) -> str:
    name = unique("kr")
    kinesis = client("kinesis", endpoint)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return name


def put(endpoint: str, stream: str, payloads: list[bytes], keys: list[str] | None = None) -> list[tuple[str, str, bytes]]:
    """Write with plain put_records; returns (shard, sequence number, data) as moto stored them."""
    kinesis = client("kinesis", endpoint)
    keys = keys or [f"k{i % 50}" for i in range(len(payloads))]
    out = []
    for i in range(0, len(payloads), 500):
        chunk = payloads[i : i + 500]
        response = kinesis.put_records(
            StreamName=stream, Records=[{"Data": d, "PartitionKey": k} for d, k in zip(chunk, keys[i : i + 500])]
        )
        out.extend((r["ShardId"], r["SequenceNumber"], d) for r, d in zip(response["Records"], chunk))
    return out


def checkpoints(endpoint: str, stream: str) -> LeaseTable:
    dynamodb = client("dynamodb", endpoint)
    table = unique("ckpt")
    ensure_table(dynamodb, table, True, HASH_KEY)
    return LeaseTable(dynamodb, table, stream)


def reader_for(endpoint: str, stream: str, store: LeaseTable | None = None, config: AwsConfig = FAST,
               health: PipelineHealth | None = None, **settings) -> KinesisReader:
    """A reader of `stream` through `endpoint`; `settings` replace fields of
    its `KinesisReaderSettings` (poll_interval 0.05 unless given)."""
    reader_settings = dataclasses.replace(KinesisReaderSettings.from_aws(stream, config, poll_interval=0.05), **settings)
    return KinesisReader(
        reader_settings,
        client("kinesis", endpoint, max_pool_connections=20),
        store or checkpoints(endpoint, stream),
        **({"health": health} if health is not None else {}),
    )


def read(reader, until, timeout: float = 20.0) -> list[RecordBatch]:
    return read_batches(reader, until, timeout)


def idle_in_all(partitions: set[str]):
    return lambda batches: partitions <= {b.partition for b in batches if b.kind is BatchKind.IDLE}


def data_of(batches: list[RecordBatch]) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for b in batches:
        if b.kind is BatchKind.DATA:
            out[b.partition].extend(zip(b.positions, b.records))
    return out


def expected_by_partition(stream: str, written: list[tuple[str, str, bytes]],
                          first: dict[str, int] | None = None) -> dict[str, list[tuple[int, bytes]]]:
    """(position, data) per partition: a shard's records in sequence order,
    numbered from `first[partition]` (0: read from TRIM_HORIZON)."""
    by_shard: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for shard, seq, data in written:
        by_shard[f"kinesis:{stream}/{shard}"].append((int(seq), data))
    return {p: [(i, data) for i, (_, data) in enumerate(sorted(v), start=(first or {}).get(p, 0))]
            for p, v in by_shard.items()}


def sequence_numbers(stream: str, written: list[tuple[str, str, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for shard, seq, _ in written:
        out[f"kinesis:{stream}/{shard}"].append(seq)
    return {p: sorted(v, key=int) for p, v in out.items()}


def test_trim_horizon_reads_every_shard_once_each_its_own_partition(aws_env: str) -> None:
    stream = make_stream(aws_env, 3)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(900)])
    expected = expected_by_partition(stream, written)
    assert len(expected) == 3  # the keys spread over all shards
    reader = reader_for(aws_env, stream)

    batches = read(reader, idle_in_all(set(expected)))

    assert dict(data_of(batches)) == expected
    # A shard idles only after its data: caught up means nothing is left.
    for partition in expected:
        kinds = [b.kind for b in batches if b.partition == partition]
        first_idle = kinds.index(BatchKind.IDLE)
        assert BatchKind.DATA not in kinds[first_idle:]


def test_commit_then_resume_from_the_checkpoint(aws_env: str) -> None:
    stream = make_stream(aws_env, 2)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(200)])
    expected = expected_by_partition(stream, written)
    store = checkpoints(aws_env, stream)
    first = reader_for(aws_env, stream, store)
    read(first, idle_in_all(set(expected)))
    a, b = sorted(expected)
    resume_at = expected[a][10][0]  # records of a before its 11th are durable
    first.commit(a, resume_at)
    first.commit(b, expected[b][-1][0] + 1)  # all of b is durable
    first.commit(a, expected[a][3][0])  # a commit never moves back

    item = store.client.get_item(TableName=store.table, Key={HASH_KEY: {"S": f"{stream}:{a.rsplit('/', 1)[1]}"}})["Item"]
    assert item["checkpoint"]["S"] == sequence_numbers(stream, written)[a][10]
    assert item["checkpointSubSequenceNumber"]["N"] == "0"
    assert item["checkpointPosition"]["N"] == str(resume_at)

    later = put(aws_env, stream, [f"s{i}".encode() for i in range(20)])
    second = reader_for(aws_env, stream, store)
    batches = read(second, idle_in_all(set(expected)))

    # The numbering goes on from the checkpoint: the same positions as the first reader's.
    after = expected_by_partition(stream, later, first={p: len(v) for p, v in expected.items()})
    got = data_of(batches)
    assert got[a] == expected[a][10:] + after.get(a, [])
    assert got[b] == after.get(b, [])


def test_after_sequence_number_start(aws_env: str) -> None:
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(30)])
    shard = written[0][0]
    reader = reader_for(aws_env, stream, start_after={shard: written[4][1]})

    batches = read(reader, idle_in_all({f"kinesis:{stream}/{shard}"}))

    assert [d for _, d in data_of(batches)[f"kinesis:{stream}/{shard}"]] == [d for _, _, d in written[5:]]


def test_at_timestamp_and_latest_starts(aws_env: str) -> None:
    stream = make_stream(aws_env, 1)
    before = put(aws_env, stream, [b"old-1", b"old-2"])
    time.sleep(0.05)
    boundary = datetime.now(timezone.utc)
    time.sleep(0.05)
    put(aws_env, stream, [b"new-1", b"new-2"])
    partition = f"kinesis:{stream}/{before[0][0]}"

    at = reader_for(aws_env, stream, iterator_type="AT_TIMESTAMP", start_timestamp=boundary)
    assert [d for _, d in data_of(read(at, idle_in_all({partition})))[partition]] == [b"new-1", b"new-2"]

    latest = reader_for(aws_env, stream, iterator_type="LATEST")
    sent: list[bool] = []

    def until(batches: list[RecordBatch]) -> bool:
        if not sent and any(b.kind is BatchKind.IDLE for b in batches):
            put(aws_env, stream, [b"after-start"])  # written once the reader is at the tip
            sent.append(True)
        return bool(data_of(batches)[partition])

    assert [d for _, d in data_of(read(latest, until))[partition]] == [b"after-start"]


def aggregated(user_records: list[bytes], key: str) -> bytes:
    aggregator = RecordAggregator()
    for data in user_records:
        assert aggregator.add_user_record(key, data) is None  # all fit in one
    _, _, body = aggregator.clear_and_get().get_contents()
    return body


def test_kpl_aggregated_records_are_deaggregated_and_resume_inside_one(aws_env: str) -> None:
    stream = make_stream(aws_env, 1)
    users = [f"u{i}".encode() for i in range(7)]
    written = put(aws_env, stream, [b"plain-1", aggregated(users, "k"), b"plain-2"], keys=["k", "k", "k"])
    partition = f"kinesis:{stream}/{written[0][0]}"
    store = checkpoints(aws_env, stream)
    reader = reader_for(aws_env, stream, store)

    got = data_of(read(reader, idle_in_all({partition})))[partition]

    assert [d for _, d in got] == [b"plain-1", *users, b"plain-2"]
    positions = [p for p, _ in got]
    assert positions == sorted(set(positions))  # distinct and increasing
    assert positions == list(range(9))  # one per user record
    reader.commit(partition, positions[4])  # u0..u2 durable, u3 not
    item = store.client.get_item(TableName=store.table, Key={HASH_KEY: {"S": f"{stream}:{written[0][0]}"}})["Item"]
    assert (item["checkpoint"]["S"], item["checkpointSubSequenceNumber"]["N"]) == (written[1][1], "3")

    again = reader_for(aws_env, stream, store)
    resumed = data_of(read(again, idle_in_all({partition})))[partition]
    assert resumed == list(zip(range(4, 9), users[3:] + [b"plain-2"]))  # same records, same positions


def test_idle_only_after_an_empty_poll_at_the_tip(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [b"a", b"b", b"c"])
    partition = f"kinesis:{stream}/{written[0][0]}"
    behind = {"left": 3}
    seen: list[tuple[int, int, int]] = []  # (records, MillisBehindLatest, IDLEs emitted so far) per response
    emitted: list[RecordBatch] = []

    def pretend_behind(body: dict) -> dict:
        # The first three empty polls claim the shard is still behind the tip.
        if not body["Records"] and behind["left"] > 0:
            behind["left"] -= 1
            body = {**body, "MillisBehindLatest": 1000}
        seen.append((len(body["Records"]), body["MillisBehindLatest"], sum(b.kind is BatchKind.IDLE for b in emitted)))
        return body

    proxy.rewrite(GET_RECORDS, pretend_behind, times=None)
    reader = reader_for(proxy.endpoint, stream, checkpoints(aws_env, stream), poll_interval=0.1)
    caught_up: list[float] = []
    started = time.monotonic()

    def until(batches: list[RecordBatch]) -> bool:
        emitted.append(batches[-1])
        caught_up.append(reader.caught_up_seconds())
        return sum(b.kind is BatchKind.IDLE for b in batches) >= 3

    batches = read(reader, until)
    elapsed = time.monotonic() - started

    idles = [b for b in batches if b.kind is BatchKind.IDLE]
    # The data poll, three empty polls behind the tip (no IDLE), then at the tip.
    assert seen[:5] == [(3, 0, 0), (0, 1000, 0), (0, 1000, 0), (0, 1000, 0), (0, 0, 0)]
    assert len(idles) == 3 and len([s for s in seen if s[:2] == (0, 0)]) >= 3
    assert [b.kind for b in batches][0] is BatchKind.DATA
    # Each IDLE carries the wall time since the shard's previous poll.
    assert all(0.05 <= b.idle_seconds <= 1.0 for b in idles)
    assert sum(b.idle_seconds for b in idles) <= elapsed
    assert caught_up[0] == 0.0 and caught_up[-1] > 0.0
    assert all(b.partition == partition for b in batches)


def test_at_most_five_get_records_per_second_per_shard(aws_env: str) -> None:
    stream = make_stream(aws_env, 2)
    kinesis = client("kinesis", aws_env, max_pool_connections=20)
    calls: dict[str, list[float]] = defaultdict(list)
    kinesis.meta.events.register(
        "provide-client-params.kinesis.GetRecords",
        lambda **_: calls[threading.current_thread().name].append(time.monotonic()),
    )
    reader = KinesisReader(KinesisReaderSettings.from_aws(stream, FAST, poll_interval=0.0), kinesis, checkpoints(aws_env, stream))
    started = time.monotonic()
    read(reader, lambda batches: time.monotonic() - started > 2.0)

    assert len(calls) == 2
    for times in calls.values():
        assert len(times) >= 5  # it does poll
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) >= 0.19  # 5 a second at most


def test_expired_iterator_is_renewed_after_the_last_record(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(35)])
    partition = f"kinesis:{stream}/{written[0][0]}"
    proxy.error(GET_RECORDS, "ExpiredIteratorException", times=1, after=1)  # the 2nd GetRecords
    reader = reader_for(proxy.endpoint, stream, checkpoints(aws_env, stream), config=AwsConfig(get_records_limit=10))

    batches = read(reader, idle_in_all({partition}))

    assert [d for _, d in data_of(batches)[partition]] == [d for _, _, d in written]
    iterators = proxy.calls("Kinesis_20131202.GetShardIterator")
    assert len(iterators) == 2  # the first, and one renewal
    assert [c.status for c in proxy.calls(GET_RECORDS)][:2] == [200, 400]


def test_commit_of_an_unknown_partition_is_an_error(aws_env: str) -> None:
    stream = make_stream(aws_env, 1)
    reader = reader_for(aws_env, stream)
    with pytest.raises(ValueError, match="unknown partition"):
        reader.commit("kinesis:other/shardId-000000000000", 5)


def test_records_waiting_in_the_queue_are_not_caught_up(aws_env: str) -> None:
    """--drain must not stop while read records still wait for the pipeline."""
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(300)])
    partition = f"kinesis:{stream}/{written[0][0]}"
    reader = reader_for(aws_env, stream, config=AwsConfig(queue_batches=2), batch_size=10, poll_interval=0.05)
    during_data: list[tuple[float, bool]] = []  # (caught_up_seconds, poller at the tip)

    def until(batches: list[RecordBatch]) -> bool:
        if batches[-1].kind is BatchKind.DATA:
            time.sleep(0.03)  # a slow pipeline: the queue stays full
            shard = reader.shards.by_partition[partition]
            during_data.append((reader.caught_up_seconds(), shard.caught_up_since is not None))
            return False
        return reader.caught_up_seconds() > 0.3

    batches = read(reader, until)

    assert len(data_of(batches)[partition]) == 300
    assert all(caught_up == 0.0 for caught_up, _ in during_data)
    assert any(at_tip for _, at_tip in during_data)  # the poller was at the tip before the pipeline caught up


class RecordingHealth(PipelineHealth):
    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str]] = []

    def failing(self, component: str, reason: str) -> None:
        self.changes.append(("failing", component))
        super().failing(component, reason)

    def recovered(self, component: str) -> None:
        self.changes.append(("recovered", component))
        super().recovered(component)


def test_a_throttled_shard_is_reported_to_the_health_model_until_it_recovers(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(30)])
    partition = f"kinesis:{stream}/{written[0][0]}"
    proxy.error(GET_RECORDS, "ProvisionedThroughputExceededException", times=5, after=1)
    health = RecordingHealth()
    reader = reader_for(proxy.endpoint, stream, checkpoints(aws_env, stream), config=AwsConfig(get_records_limit=10),
                        health=health)

    batches = read(reader, idle_in_all({partition}))

    assert [d for _, d in data_of(batches)[partition]] == [d for _, _, d in written]
    component = f"kinesis {written[0][0]}"
    # One throttle is ordinary; the 3rd, 4th and 5th in a row are an outage.
    assert health.changes.count(("failing", component)) == 5 - OUTAGE_AFTER_FAILED_POLLS + 1
    assert health.changes[3] == ("recovered", component)  # on the first good poll, not only at the end
    assert health.problems() == {}


def test_the_quiet_time_runs_while_the_pipeline_works_through_the_backlog(aws_env: str) -> None:
    """--drain S after a backlog exits as soon as the pipeline is done with it
    when the shard has been quiet for S seconds by then, not S seconds later."""
    stream = make_stream(aws_env, 1)
    written = put(aws_env, stream, [f"r{i}".encode() for i in range(40)])
    partition = f"kinesis:{stream}/{written[0][0]}"
    reader = reader_for(aws_env, stream, batch_size=10, poll_interval=0.05)
    after_data: list[float] = []
    data_batches = 0

    def until(batches: list[RecordBatch]) -> bool:
        nonlocal data_batches
        if batches[-1].kind is BatchKind.DATA:
            data_batches += 1
            time.sleep(0.4)  # a slow pipeline: the poller reaches the tip long before it is done
            return False
        if data_batches == 4 and not after_data:
            after_data.append(reader.caught_up_seconds())
        return bool(after_data)

    batches = read(reader, until)

    assert len(data_of(batches)[partition]) == 40
    # Quiet since the first empty poll, about 1.2 s (three slow batches) before the pipeline finished.
    assert after_data[0] >= 0.8


def test_positions_of_aws_sized_sequence_numbers_map_back_for_commits() -> None:
    """AWS sequence numbers have 56 digits (kinesalite's too; moto's are small):
    positions stay 64-bit, and a committed position turns back into its record's
    sequence number and sub-record."""
    first = 49590338271490256608559692538361571095921575989136588898
    marks = SequenceMarks()
    position = 0
    for i, subs in enumerate([1, 5, 1, 1]):  # the second record is a KPL aggregate of 5
        marks.add(position, str(first + i * 2_564_131_663_402_632_534_000_926_720))
        position += subs
    assert marks.locate(0) == (str(first), 0)
    assert marks.locate(3) == (str(first + 2_564_131_663_402_632_534_000_926_720), 2)  # inside the aggregate
    assert marks.locate(8) == (str(first + 3 * 2_564_131_663_402_632_534_000_926_720), 1)  # after the last record
    assert marks.locate(2) is None  # before what a later commit already passed
    assert len(marks) == 1


def test_the_constructor_makes_no_aws_call() -> None:
    """Checking or creating the stream and lease table is open_kinesis_reader's
    job; the first call is made when batches() is subscribed."""

    class NoCalls:
        def __getattr__(self, name: str):
            raise AssertionError(f"an AWS call ({name}) from the constructor")

    reader = KinesisReader(KinesisReaderSettings("events", worker_id="w"), NoCalls(), LeaseTable(NoCalls(), "leases", "events"))
    assert reader.partition_of("shardId-000000000000") == "kinesis:events/shardId-000000000000"
    reader.close()  # nothing held: nothing to hand back


def test_a_child_whose_lease_another_worker_made_inherits_its_parent(aws_env: str) -> None:
    """A split seen first by another worker: it made the children's leases, and
    we take one before our own discovery has listed the child. Our reader must
    still replay the parent (for its dedup keys), not start the child bare."""
    stream = make_stream(aws_env, 1)
    kinesis = client("kinesis", aws_env)
    shards = ShardSet(KinesisReaderSettings(stream, worker_id="late"), kinesis, checkpoints(aws_env, stream), "late",
                      start_poller=lambda shard: None, stopped=lambda: False)
    shards.list_shards()  # our last discovery: before the split
    (parent,) = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]]
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    children = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"] if s.get("ParentShardId") == parent]
    assert len(children) == 2
    for child in children:
        state = shards.start_of(Lease(child, parents=(parent,)))
        assert [ancestor for ancestor, _ in state.inherits] == [parent]
        assert state.start == {"ShardIteratorType": "TRIM_HORIZON"}
