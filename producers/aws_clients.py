"""boto3 clients, the `[aws]` settings, and `--create-resources`.

Every AWS adapter gets its client here, so region, endpoint, retry mode and
time-outs are decided in one place:

- region: `[aws] region` if set, else boto3's standard chain (`AWS_REGION`,
  `AWS_DEFAULT_REGION`, the profile in `~/.aws/config`), else `us-east-1`;
- endpoint: boto3's standard configuration (`AWS_ENDPOINT_URL`,
  `AWS_ENDPOINT_URL_<SERVICE>` such as `AWS_ENDPOINT_URL_KINESIS`, or
  `endpoint_url` in the profile), which boto3 >= 1.28 applies natively;
- credentials: boto3's standard chain; they are never read, printed or logged
  here, and botocore's DEBUG logging (which prints signing material) is capped
  at INFO unless a caller configured the `botocore` logger itself;
- retries: botocore `standard` or `adaptive` mode (`[aws] retry_mode`).

Usage::

    aws = AwsConfig.from_settings(settings)
    kinesis = aws_client("kinesis", aws)
    ensure_stream(kinesis, "events", create=args.create_resources, shard_count=2)

A resource that does not exist, without `create=True`, raises `MissingResource`
(a `ValueError`, which the CLI prints as one line and exits 2).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from config.settings import ConfigError, Settings

DEFAULT_REGION = "us-east-1"
RETRY_MODES = ("standard", "adaptive")
ITERATOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")

log = logging.getLogger(__name__)
T = TypeVar("T")


class AwsError(ValueError):
    """An AWS call at start-up failed; the message is one line, without secrets."""


class MissingResource(AwsError):
    """A stream, table, bucket or queue is missing and may not be created."""


@dataclass(frozen=True)
class AwsConfig:
    """Every `[aws]` key (see `config/aws.toml` for what each one means)."""

    region: str = ""
    stream: str = "rivulet-events"
    shard_count: int = 2
    queue: str = "rivulet-events"
    bucket: str = "rivulet-data"
    object_prefix: str = ""
    count_table: str = "rivulet-counts"
    checkpoint_table: str = "rivulet-leases"
    # Kinesis shard leases (docs/scaleout.md). "" = the checkpoint table.
    lease_table: str = ""
    failover_seconds: float = 10.0
    lease_renew_seconds: float = 0.0  # 0 = failover_seconds / 3
    shard_discovery_seconds: float = 10.0
    worker_id: str = ""  # "" = <hostname>-<pid>
    partition_key: str = "customer_id"
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Kinesis writer: capped exponential backoff with full jitter, and how long
    # `send` keeps retrying before it raises `TransportFull`.
    backoff_base: float = 0.1
    backoff_cap: float = 5.0
    send_timeout: float = 120.0
    # Kinesis reader.
    iterator_type: str = "TRIM_HORIZON"
    start_timestamp: str = ""  # ISO 8601, for AT_TIMESTAMP
    get_records_limit: int = 10_000
    polls_per_second: float = 5.0
    queue_batches: int = 32
    # S3.
    multipart_threshold: int = 8 << 20
    multipart_part_size: int = 8 << 20
    s3_sse: str = ""  # "", "AES256" or "aws:kms"
    s3_sse_kms_key_id: str = ""
    s3_addressing_style: str = "auto"
    s3_upload_threads: int = 8  # concurrent uploads of raw-event and aggregate objects
    # DynamoDB count store.
    write_threads: int = 16  # concurrent BatchWriteItem requests of the count store
    scan_segments: int = 4
    count_ttl_days: int = 0  # > 0: items carry `expires_at` (window start + this) for DynamoDB TTL
    # Provisional upserts of open windows (for daemon/job.py; see docs/aws.md).
    provisional_interval: float = 5.0
    # SQS.
    sqs_wait_seconds: int = 5
    sqs_visibility_timeout: int = 120
    sqs_max_held_messages: int = 100_000
    sqs_message_bytes: int = 64 * 1024

    @classmethod
    def from_settings(cls, settings: Settings | None) -> "AwsConfig":
        """Parse `settings.section("aws")`; unknown keys and wrong types are
        `ConfigError`s that name the key."""
        table: Mapping[str, Any] = settings.section("aws") if settings is not None else {}
        if not isinstance(table, Mapping):
            raise ConfigError("config key aws: expected a table")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"config key aws.{key}: unknown key (known: {', '.join(sorted(known))})")
            default = known[key].default
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ConfigError(f"config key aws.{key}: expected {type(default).__name__}, got {value!r}")
            values[key] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(f"config key aws.retry_mode: expected one of {', '.join(RETRY_MODES)}, got {self.retry_mode!r}")
        if self.iterator_type not in ITERATOR_TYPES:
            raise ConfigError(f"config key aws.iterator_type: expected one of {', '.join(ITERATOR_TYPES)}, got {self.iterator_type!r}")
        if self.iterator_type == "AT_TIMESTAMP" and not self.start_timestamp:
            raise ConfigError("config key aws.start_timestamp: required when iterator_type is AT_TIMESTAMP")
        if self.s3_sse not in ("", "AES256", "aws:kms"):
            raise ConfigError(f"config key aws.s3_sse: expected '', 'AES256' or 'aws:kms', got {self.s3_sse!r}")
        if self.count_ttl_days < 0:
            raise ConfigError("config key aws.count_ttl_days: must be >= 0 (0 = no expiry)")
        if self.multipart_part_size < 5 << 20:
            raise ConfigError("config key aws.multipart_part_size: S3 needs parts of at least 5 MiB")
        if not 0 < self.get_records_limit <= 10_000:
            raise ConfigError("config key aws.get_records_limit: must be in 1..10000")
        if not 0 < self.polls_per_second <= 5:
            raise ConfigError("config key aws.polls_per_second: must be in (0, 5] (Kinesis allows 5 GetRecords/s per shard)")
        if not 0 <= self.sqs_wait_seconds <= 20:
            raise ConfigError("config key aws.sqs_wait_seconds: must be in 0..20")
        if not 0 < self.sqs_message_bytes <= 256 * 1024:
            raise ConfigError("config key aws.sqs_message_bytes: must be in 1..262144")
        for name in ("max_attempts", "shard_count", "queue_batches", "write_threads", "scan_segments", "sqs_max_held_messages",
                     "s3_upload_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key aws.{name}: must be positive")


def resolve_region(config: AwsConfig) -> str:
    """`[aws] region`, else boto3's standard configuration, else us-east-1."""
    return config.region or boto3.session.Session().region_name or DEFAULT_REGION


def _quiet_botocore() -> None:
    # botocore at DEBUG prints canonical requests and signing details; a root
    # logger at DEBUG must not turn that on by accident.
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        return
    for name in ("botocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


_CLIENT_OBSERVERS: list[Callable[[Any], None]] = []


def observe_new_clients(callback: Callable[[Any], None]) -> Callable[[], None]:
    """Call `callback(client)` for every client `aws_client` makes from now on
    (e.g. to register botocore event hooks that count requests); returns a
    function that stops observing."""
    _CLIENT_OBSERVERS.append(callback)
    return lambda: _CLIENT_OBSERVERS.remove(callback)


def aws_client(service: str, config: AwsConfig, max_attempts: int | None = None, pool_size: int = 10,
               validate: bool = True) -> Any:
    """A boto3 client for `service` with the project's region, retry and
    time-out policy. A new session per client: sessions are not thread-safe,
    clients are. `validate=False` skips botocore's client-side check of the
    parameters, for adapters that build every request themselves in bulk
    (it costs about 10 µs per DynamoDB item)."""
    _quiet_botocore()
    s3_options = {"addressing_style": config.s3_addressing_style} if service == "s3" else None
    client_config = botocore.config.Config(
        retries={"mode": config.retry_mode, "total_max_attempts": max_attempts or config.max_attempts},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_pool_connections=max(10, pool_size),
        parameter_validation=validate,
        s3=s3_options,
    )
    session = boto3.session.Session()
    client = session.client(service, region_name=config.region or session.region_name or DEFAULT_REGION, config=client_config)
    for observe in list(_CLIENT_OBSERVERS):
        observe(client)
    return client


# -- errors ---------------------------------------------------------------------


def error_code(exc: BaseException) -> str:
    """The AWS error code of a `ClientError` (`""` for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def one_line(exc: BaseException) -> str:
    """A short, secret-free description of an AWS failure."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip().rstrip(":")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def startup_call(what: str, call: Callable[[], T]) -> T:
    """Run a start-up AWS call; any failure becomes one `AwsError` line."""
    try:
        return call()
    except AwsError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise AwsError(f"{what}: {one_line(exc)}") from None


# -- resources ------------------------------------------------------------------

_MISSING_HINT = "; create it or pass --create-resources"


def ensure_stream(client: Any, name: str, create: bool, shard_count: int = 2) -> None:
    """The Kinesis stream exists and is ACTIVE (created when `create`)."""

    def check() -> None:
        try:
            status = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        except client.exceptions.ResourceNotFoundException:
            if not create:
                raise MissingResource(f"kinesis stream {name!r} not found{_MISSING_HINT}") from None
            try:
                client.create_stream(StreamName=name, ShardCount=shard_count)
            except client.exceptions.ResourceInUseException:
                pass  # someone else is creating it at the same time
            status = "CREATING"
        if status != "ACTIVE":
            client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    startup_call(f"kinesis stream {name!r}", check)


def ensure_table(client: Any, name: str, create: bool, hash_key: str, range_key: str | None = None) -> None:
    """The DynamoDB table (string keys, on-demand billing) exists and is ACTIVE."""

    def check() -> None:
        try:
            status = client.describe_table(TableName=name)["Table"]["TableStatus"]
        except client.exceptions.ResourceNotFoundException:
            if not create:
                raise MissingResource(f"dynamodb table {name!r} not found{_MISSING_HINT}") from None
            keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
            try:
                client.create_table(
                    TableName=name,
                    KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
                    AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
                    BillingMode="PAY_PER_REQUEST",
                )
            except client.exceptions.ResourceInUseException:
                pass
            status = "CREATING"
        if status != "ACTIVE":
            client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})

    startup_call(f"dynamodb table {name!r}", check)


def ensure_bucket(client: Any, name: str, create: bool) -> None:
    """The S3 bucket exists and is ours (created in the client's region when `create`)."""

    def check() -> None:
        try:
            client.head_bucket(Bucket=name)
            return
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not create:
            raise MissingResource(f"s3 bucket {name!r} not found{_MISSING_HINT}")
        region = client.meta.region_name
        options: dict[str, Any] = {}
        if region and region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(Bucket=name, **options)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        client.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    startup_call(f"s3 bucket {name!r}", check)


def ensure_queue(client: Any, name: str, create: bool, visibility_timeout: int = 120) -> str:
    """The SQS queue's URL (the queue is created when `create`)."""

    def check() -> str:
        try:
            return client.get_queue_url(QueueName=name)["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                raise
        if not create:
            raise MissingResource(f"sqs queue {name!r} not found{_MISSING_HINT}")
        try:
            return client.create_queue(
                QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout)}
            )["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            # Created concurrently with other attributes: use it as it is.
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            return client.get_queue_url(QueueName=name)["QueueUrl"]

    return startup_call(f"sqs queue {name!r}", check)


def checkpoint_table_name(config: AwsConfig, group: str) -> str:
    """One checkpoint table per consumer group, as the KCL has one per application."""
    base = config.lease_table or config.checkpoint_table
    return base if group == "default" else f"{base}-{group}"


def ensure_profile_resources(settings: Settings | None, config: AwsConfig, create: bool) -> None:
    """With `create` (`--create-resources`), everything else the profile names:
    with the aws backend, the count table and the bucket the sinks write to.
    (The Kinesis transports create their lease table: `ensure_lease_table`.)

    The transports call this, so one flag on `produce`, `consume` or `serve`
    creates every table, stream, bucket and queue a later command needs.
    """
    if not create:
        return
    if settings is not None and settings.backend == "aws":
        from consumers.dynamodb_count_store import HASH_KEY, RANGE_KEY, TTL_ATTRIBUTE

        dynamodb = aws_client("dynamodb", config)
        ensure_table(dynamodb, config.count_table, True, HASH_KEY, RANGE_KEY)
        if config.count_ttl_days:
            enable_ttl(dynamodb, config.count_table, TTL_ATTRIBUTE)
        ensure_bucket(aws_client("s3", config), config.bucket, True)


def enable_ttl(client: Any, table: str, attribute: str) -> None:
    """Turn on DynamoDB TTL on `attribute` (already on: nothing to do)."""

    def call() -> None:
        status = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and status.get("AttributeName") == attribute:
            return
        try:
            client.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})
        except botocore.exceptions.ClientError as exc:
            if "already enabled" not in one_line(exc).lower():
                raise

    startup_call(f"dynamodb table {table!r} time to live", call)


def backoff_delay(attempt: int, base: float, cap: float, uniform: Callable[[float, float], float]) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base·2^attempt))."""
    return uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


def sleep_unless(stopped: Callable[[], bool], seconds: float, slice_seconds: float = 0.05) -> None:
    """Sleep in short slices so that a stop flag is noticed promptly."""
    deadline = time.monotonic() + seconds
    while not stopped():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, slice_seconds))
