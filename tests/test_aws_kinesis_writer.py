"""The Kinesis writer against moto: batch limits, oversize records, partition
keys, and (through the fault proxy) partial failures and throttling."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from aws.settings import AwsConfig
from producers.kinesis_writer import MAX_BATCH_BYTES, MAX_RECORD_BYTES, KinesisWriter
from producers.transport import TransportFull
from tests.aws_fixtures import client, unique
from tests.conftest import ROOT
from tests.fault_proxy import PUT_RECORDS, FaultProxy

pytestmark = pytest.mark.timeout(60)


def make_stream(endpoint: str, shards: int = 2) -> str:
    name = unique("kw")
    kinesis = client("kinesis", endpoint)
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return name


def stored(endpoint: str, stream: str) -> list[dict]:
    """Every record in the stream, read straight from moto (not via our reader)."""
    kinesis = client("kinesis", endpoint)
    out: list[dict] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            out.extend(page["Records"])
            iterator = page["NextShardIterator"]
            if not page["Records"]:
                break
    return out


def events(n: int, customers: int = 37) -> list[bytes]:
    return [
        json.dumps({"v": 1, "customer_id": f"c{i % customers}", "event_type": "click", "transaction_id": f"t{i}",
                    "timestamp": "2021-03-01T00:00:00.000000Z"}).encode()
        for i in range(n)
    ]


def count_calls(kinesis) -> list[int]:
    """Records per PutRecords call, seen through botocore's own event hooks."""
    sizes: list[int] = []
    kinesis.meta.events.register("provide-client-params.kinesis.PutRecords", lambda params, **_: sizes.append(len(params["Records"])))
    return sizes


def fast_config(**changes) -> AwsConfig:
    return AwsConfig(backoff_base=0.01, backoff_cap=0.05, **changes)


def test_1234_records_go_in_three_calls_and_all_arrive_once(aws_env: str) -> None:
    stream = make_stream(aws_env)
    kinesis = client("kinesis", aws_env)
    sizes = count_calls(kinesis)
    writer = KinesisWriter(stream, client=kinesis, config=fast_config())
    records = events(1234)

    assert writer.send(records) == 1234

    assert sizes == [500, 500, 234]
    got = stored(aws_env, stream)
    assert Counter(r["Data"] for r in got) == Counter(records)
    # The partition key is the customer_id field.
    assert {r["PartitionKey"] for r in got} == {f"c{i}" for i in range(37)}


def test_batches_stay_under_five_mib(aws_env: str) -> None:
    stream = make_stream(aws_env)
    kinesis = client("kinesis", aws_env)
    bodies: list[int] = []
    kinesis.meta.events.register(
        "provide-client-params.kinesis.PutRecords",
        lambda params, **_: bodies.append(sum(len(r["Data"]) + len(r["PartitionKey"]) for r in params["Records"])),
    )
    big = [json.dumps({"customer_id": f"c{i}", "pad": "x" * 300_000}).encode() for i in range(40)]
    writer = KinesisWriter(stream, client=kinesis, config=fast_config())

    assert writer.send(big) == 40

    assert len(bodies) == 3 and all(b <= MAX_BATCH_BYTES for b in bodies)
    assert sorted(r["Data"] for r in stored(aws_env, stream)) == sorted(big)


def test_oversize_record_is_rejected_not_sent(aws_env: str) -> None:
    stream = make_stream(aws_env)
    writer = KinesisWriter(stream, client=client("kinesis", aws_env), config=fast_config())
    key = "c1"
    just_fits = json.dumps({"customer_id": key, "pad": ""}).encode()
    just_fits = just_fits.replace(b'"pad": ""', b'"pad": "' + b"y" * (MAX_RECORD_BYTES - len(just_fits) - len(key)) + b'"')
    too_big = just_fits.replace(b'"pad": "', b'"pad": "z', 1)
    assert len(just_fits) + len(key) == MAX_RECORD_BYTES

    accepted = writer.send([events(1)[0], too_big, just_fits])

    assert accepted == 2
    rejected = writer.take_rejected()
    assert [(r.index, r.record, r.reason) for r in rejected] == [(1, too_big, "oversize")]
    assert writer.take_rejected() == []
    assert sorted(r["Data"] for r in stored(aws_env, stream)) == sorted([events(1)[0], just_fits])


def test_record_without_the_key_field_gets_a_stable_digest_key(aws_env: str) -> None:
    stream = make_stream(aws_env)
    writer = KinesisWriter(stream, client=client("kinesis", aws_env), config=fast_config(partition_key="tenant"))
    with_tenant = b'{"tenant": "acme", "customer_id": "c1"}'
    without = b'{"customer_id": "c2"}'
    not_json = b"not json"

    writer.send([with_tenant, without, not_json])

    keys = {r["Data"]: r["PartitionKey"] for r in stored(aws_env, stream)}
    assert keys == {
        with_tenant: "acme",
        without: hashlib.md5(without).hexdigest(),
        not_json: hashlib.md5(not_json).hexdigest(),
    }


def test_partial_failure_resends_only_failed_entries(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env)
    sleeps: list[float] = []
    writer = KinesisWriter(stream, client=client("kinesis", proxy.endpoint), config=fast_config(), sleep=sleeps.append)
    # First call: every third entry fails; second call: the first of the resent fails again.
    proxy.fail_entries(lambda i, n: i % 3 == 0, times=1)
    proxy.fail_entries(lambda i, n: i == 0, times=1)
    records = events(30)

    assert writer.send(records) == 30

    calls = proxy.calls(PUT_RECORDS)
    assert [(c.records, c.forwarded) for c in calls] == [(30, 20), (10, 9), (1, 1)]
    assert len(sleeps) == 2
    # Exactly once each: nothing failed was written, nothing accepted was resent.
    assert Counter(r["Data"] for r in stored(aws_env, stream)) == Counter(records)
    assert writer.entries_resent == 11 and writer.records_accepted == 30


def test_throttling_is_retried_with_capped_full_jitter_backoff(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env)
    sleeps: list[float] = []
    config = AwsConfig(backoff_base=0.01, backoff_cap=0.04)
    writer = KinesisWriter(stream, client=client("kinesis", proxy.endpoint), config=config, sleep=sleeps.append,
                           rng=random.Random(3))
    proxy.error(PUT_RECORDS, "ProvisionedThroughputExceededException", times=5)
    records = events(700)

    assert writer.send(records) == 700

    calls = proxy.calls(PUT_RECORDS)
    assert [c.status for c in calls] == [400] * 5 + [200, 200]
    caps = [min(0.04, 0.01 * 2**a) for a in range(5)]
    assert len(sleeps) == 5 and all(0 <= s <= cap for s, cap in zip(sleeps, caps))
    assert Counter(r["Data"] for r in stored(aws_env, stream)) == Counter(records)


def test_nothing_is_reported_written_when_kinesis_never_accepts(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env)
    writer = KinesisWriter(stream, client=client("kinesis", proxy.endpoint),
                           config=AwsConfig(backoff_base=0.01, backoff_cap=0.02, send_timeout=0.3))
    proxy.fail_entries(lambda i, n: True, times=None)

    with pytest.raises(TransportFull, match="not accepted"):
        writer.send(events(10))

    assert writer.records_accepted == 0
    assert stored(aws_env, stream) == []


def test_connection_refused_for_a_while_then_everything_arrives(aws_env: str, proxy: FaultProxy) -> None:
    stream = make_stream(aws_env)
    writer = KinesisWriter(stream, client=client("kinesis", proxy.endpoint, connect_timeout=1),
                           config=AwsConfig(backoff_base=0.05, backoff_cap=0.2))
    proxy.refuse(seconds=1.0)
    records = events(50)

    assert writer.send(records) == 50

    assert Counter(r["Data"] for r in stored(aws_env, stream)) == Counter(records)


def test_produce_dead_letters_what_kinesis_rejects(aws_env: str, tmp_path: Path) -> None:
    """`produce` hands the writer's rejects to the dead-letter output: a line
    under the parser's 1 MiB limit that grows past Kinesis' 1 MiB as NDJSON."""
    from config.settings import load_settings
    from config.transports import open_writer
    from consumers.dead_letter_file import DeadLetterFile
    from daemon.produce import produce
    from producers.file_source import FileSource
    from streams.formats import make_parser

    stream = make_stream(aws_env)
    prop = "p" * (MAX_RECORD_BYTES - 100)
    lines = [
        json.dumps({"customer_id": "c1", "event_type": "e", "transaction_id": "t1", "timestamp": "2021-03-01T00:00:00Z"}),
        json.dumps({"customer_id": "c2", "event_type": "e", "transaction_id": "t2", "timestamp": "2021-03-01T00:00:00Z", "big": prop}),
    ]
    source = tmp_path / "in.ndjson"
    source.write_text("\n".join(lines) + "\n")
    settings = load_settings(ROOT / "config" / "aws.toml").with_overrides(data_dir=tmp_path)
    dead = DeadLetterFile(tmp_path / "dead.ndjson")

    writer = open_writer(f"kinesis:{stream}", settings)
    sent, dead_count = produce(FileSource(source, 100).batches(), make_parser("ndjson"), writer, dead)

    assert (sent, dead_count) == (1, 1)
    letter = json.loads((tmp_path / "dead.ndjson").read_text())
    assert letter["reason"] == "oversize" and letter["position"] == 2
    assert [json.loads(r["Data"])["customer_id"] for r in stored(aws_env, stream)] == ["c1"]
