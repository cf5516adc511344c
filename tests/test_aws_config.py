"""`[aws]` settings, client configuration (region, endpoints, retry mode),
`--create-resources` under concurrency, one-line errors, and bindings."""

from __future__ import annotations

import threading
from pathlib import Path

import inject
import pytest

from config.bindings import configure
from config.settings import ConfigError, load_settings
from consumers.dynamodb_count_store import DynamoDbCountStore
from consumers.ports import CountStore, DeadLetterSink, ObjectStore
from consumers.s3_object_store import S3ObjectStore
from aws.clients import aws_client, resolve_region
from aws.errors import MissingResource
from aws.resources import ensure_bucket, ensure_queue, ensure_stream, ensure_table
from aws.settings import AwsConfig
from tests.aws_fixtures import client, unique
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.timeout(60)

AWS_TOML = ROOT / "config" / "aws.toml"


def test_aws_profile_loads_with_the_local_rollups() -> None:
    aws = load_settings(AWS_TOML, environ={})
    local = load_settings(ROOT / "config" / "local.toml", environ={})
    assert aws.backend == "aws"
    assert [(r.name, r.key_fields, r.window) for r in aws.rollups] == [(r.name, r.key_fields, r.window) for r in local.rollups]
    assert aws.raw_events == local.raw_events
    config = aws.aws
    assert config == AwsConfig()  # the profile spells out the defaults


def test_bad_aws_keys_name_the_key() -> None:
    base = load_settings(AWS_TOML, environ={})
    for env, message in [
        ({"RIVULET__AWS__NO_SUCH_KEY": "1"}, "aws.no_such_key: unknown key"),
        ({"RIVULET__AWS__SHARD_COUNT": '"two"'}, "aws.shard_count: expected int"),
        ({"RIVULET__AWS__RETRY_MODE": "legacy"}, "aws.retry_mode"),
        ({"RIVULET__AWS__ITERATOR_TYPE": "AT_TIMESTAMP"}, "aws.start_timestamp"),
        ({"RIVULET__AWS__POLLS_PER_SECOND": "10"}, "aws.polls_per_second"),
    ]:
        settings = load_settings(AWS_TOML, environ=env)
        with pytest.raises(ConfigError, match=message):
            _ = settings.aws
    assert base.aws.partition_key == "customer_id"


def test_region_comes_from_config_then_environment_then_us_east_1(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert resolve_region(AwsConfig()) == "us-east-1"
    assert aws_client("kinesis", AwsConfig()).meta.region_name == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert aws_client("kinesis", AwsConfig()).meta.region_name == "eu-west-1"
    assert aws_client("kinesis", AwsConfig(region="ap-south-1")).meta.region_name == "ap-south-1"


def test_service_specific_endpoint_wins_over_the_global_one(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", aws_env)
    kinesis = aws_client("kinesis", AwsConfig())
    assert kinesis.meta.endpoint_url == aws_env
    assert "StreamNames" in kinesis.list_streams()
    assert aws_client("sqs", AwsConfig()).meta.endpoint_url == "http://127.0.0.1:9"


def test_retry_mode_and_attempts_reach_botocore(aws_env: str) -> None:
    retries = aws_client("dynamodb", AwsConfig(retry_mode="adaptive", max_attempts=3)).meta.config.retries
    assert retries == {"mode": "adaptive", "total_max_attempts": 3}


def test_epoch_timestamps_parse_as_utc_instants(aws_env: str) -> None:
    """A Kinesis record's ApproximateArrivalTimestamp (an epoch number on the
    wire) comes back as the same instant in UTC, without dateutil's local zone."""
    from datetime import datetime, timedelta, timezone

    kinesis = aws_client("kinesis", AwsConfig())
    stream = unique("ts")
    ensure_stream(kinesis, stream, True, 1)
    kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="k")
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    arrived = kinesis.get_records(ShardIterator=iterator)["Records"][0]["ApproximateArrivalTimestamp"]
    assert arrived.tzinfo is timezone.utc
    assert abs(arrived - datetime.now(timezone.utc)) < timedelta(minutes=5)
    # Strings still go through botocore's parser.
    from aws.clients import utc_timestamp
    assert utc_timestamp("2021-03-01T04:05:06Z") == datetime(2021, 3, 1, 4, 5, 6, tzinfo=timezone.utc)


def test_missing_resources_are_one_line_errors_naming_them(aws_env: str) -> None:
    kinesis, dynamodb, s3, sqs = (client(s, aws_env) for s in ("kinesis", "dynamodb", "s3", "sqs"))
    name = unique("missing")
    for call, text in [
        (lambda: ensure_stream(kinesis, name, False), f"kinesis stream '{name}' not found"),
        (lambda: ensure_table(dynamodb, name, False, "pk"), f"dynamodb table '{name}' not found"),
        (lambda: ensure_bucket(s3, name, False), f"s3 bucket '{name}' not found"),
        (lambda: ensure_queue(sqs, name, False), f"sqs queue '{name}' not found"),
    ]:
        with pytest.raises(MissingResource) as info:
            call()
        assert text in str(info.value) and "--create-resources" in str(info.value) and "\n" not in str(info.value)


def test_concurrent_creation_is_tolerated(aws_env: str) -> None:
    name = unique("race")
    errors: list[BaseException] = []

    def create_all() -> None:
        try:
            ensure_stream(client("kinesis", aws_env), name, True, 1)
            ensure_table(client("dynamodb", aws_env), name, True, "pk", "sk")
            ensure_bucket(client("s3", aws_env), name, True)
            ensure_queue(client("sqs", aws_env), name, True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    # (ListStreams pages at 100: other tests' streams may push this one off the first page.)
    summary = client("kinesis", aws_env).describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 1
    assert client("dynamodb", aws_env).describe_table(TableName=name)["Table"]["TableStatus"] == "ACTIVE"


def test_cli_query_on_a_missing_table_is_one_line_and_logs_no_secret(aws_env: str, tmp_path: Path) -> None:
    secret = "SuperSecretValue/ShouldNeverBeLogged0123"
    table = unique("nope")
    result = run_cli(
        "--log-level", "DEBUG", "query", "buckets", "--customer", "c1", "--start", "2021-03-01T00:00:00Z",
        "--end", "2021-03-02T00:00:00Z", "--config", "config/aws.toml", "--data-dir", str(tmp_path),
        env={"AWS_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": "AKIAABCDEFGHIJKLMNOP", "RIVULET__AWS__COUNT_TABLE": table},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: dynamodb table '{table}' not found; create it or pass --create-resources"
    )
    assert secret not in result.stderr + result.stdout
    assert "AKIAABCDEFGHIJKLMNOP" not in result.stderr + result.stdout


def test_bindings_choose_the_aws_adapters(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, bucket = unique("bind"), unique("bind")
    ensure_table(client("dynamodb", aws_env), table, True, "pk", "sk")
    ensure_bucket(client("s3", aws_env), bucket, True)
    settings = load_settings(AWS_TOML, environ={
        "RIVULET__AWS__COUNT_TABLE": table, "RIVULET__AWS__BUCKET": bucket, "RIVULET__AWS__OBJECT_PREFIX": "tenant-a",
        "RIVULET_DATA_DIR": str(tmp_path),
    })
    configure(settings)
    try:
        store = inject.instance(CountStore)
        objects = inject.instance(ObjectStore)
        assert isinstance(store, DynamoDbCountStore) and store.table == table
        assert isinstance(objects, S3ObjectStore) and objects.bucket == bucket and objects.prefix == "tenant-a/"
        assert Path(inject.instance(DeadLetterSink).path) == tmp_path / "dead_letters.ndjson"
    finally:
        inject.clear()
