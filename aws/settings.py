"""`AwsConfig`: every `[aws]` key, typed, with its defaults and checks.

`config/settings.py` reads the `[aws]` table into this dataclass
(`Settings.aws`: unknown keys and wrong types are refused there); `validate`
holds the rules between values, which any builder of an `AwsConfig` may ask.

Usage::

    config = AwsConfig(stream="events", shard_count=4)
    config.validate()          # AwsConfigError names the key
"""

from __future__ import annotations

from dataclasses import dataclass

RETRY_MODES = ("standard", "adaptive")
ITERATOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")


class AwsConfigError(ValueError):
    """An `[aws]` value breaks a rule; the message names the key."""


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

    def validate(self) -> None:
        """Raise `AwsConfigError` for the first value outside its range."""
        if self.retry_mode not in RETRY_MODES:
            raise AwsConfigError(f"config key aws.retry_mode: expected one of {', '.join(RETRY_MODES)}, got {self.retry_mode!r}")
        if self.iterator_type not in ITERATOR_TYPES:
            raise AwsConfigError(
                f"config key aws.iterator_type: expected one of {', '.join(ITERATOR_TYPES)}, got {self.iterator_type!r}")
        if self.iterator_type == "AT_TIMESTAMP" and not self.start_timestamp:
            raise AwsConfigError("config key aws.start_timestamp: required when iterator_type is AT_TIMESTAMP")
        if self.s3_sse not in ("", "AES256", "aws:kms"):
            raise AwsConfigError(f"config key aws.s3_sse: expected '', 'AES256' or 'aws:kms', got {self.s3_sse!r}")
        if self.count_ttl_days < 0:
            raise AwsConfigError("config key aws.count_ttl_days: must be >= 0 (0 = no expiry)")
        if self.multipart_part_size < 5 << 20:
            raise AwsConfigError("config key aws.multipart_part_size: S3 needs parts of at least 5 MiB")
        if not 0 < self.get_records_limit <= 10_000:
            raise AwsConfigError("config key aws.get_records_limit: must be in 1..10000")
        if not 0 < self.polls_per_second <= 5:
            raise AwsConfigError("config key aws.polls_per_second: must be in (0, 5] (Kinesis allows 5 GetRecords/s per shard)")
        if not 0 <= self.sqs_wait_seconds <= 20:
            raise AwsConfigError("config key aws.sqs_wait_seconds: must be in 0..20")
        if not 0 < self.sqs_message_bytes <= 256 * 1024:
            raise AwsConfigError("config key aws.sqs_message_bytes: must be in 1..262144")
        for name in ("max_attempts", "shard_count", "queue_batches", "write_threads", "scan_segments", "sqs_max_held_messages",
                     "s3_upload_threads"):
            if getattr(self, name) < 1:
                raise AwsConfigError(f"config key aws.{name}: must be positive")
