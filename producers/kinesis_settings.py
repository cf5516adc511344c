"""The typed settings of a Kinesis reader: which stream, where to start, how
fast to poll, and the lease timings.

Usage::

    reader_settings = KinesisReaderSettings.from_aws("events", settings.aws, batch_size=5000)
    reader_settings = dataclasses.replace(reader_settings, iterator_type="LATEST")   # in tests
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping

from aws.settings import ITERATOR_TYPES, AwsConfig


@dataclass(frozen=True)
class KinesisReaderSettings:
    stream: str
    worker_id: str = ""  # "" = <hostname>-<pid>
    batch_size: int = 5000  # records per batch at most
    poll_interval: float = 0.2  # seconds after an empty poll
    # Where a shard without a checkpoint starts: `start_after[shard]`
    # (AFTER_SEQUENCE_NUMBER), else TRIM_HORIZON for a child shard, else this.
    iterator_type: str = "TRIM_HORIZON"
    start_timestamp: datetime | None = None  # for AT_TIMESTAMP, with a UTC offset
    start_after: Mapping[str, str] = field(default_factory=dict)
    polls_per_second: float = 5.0  # GetRecords calls per shard
    get_records_limit: int = 10_000
    queue_batches: int = 32  # batches read ahead of the pipeline, over all shards
    failover_seconds: float = 10.0
    lease_renew_seconds: float = 0.0  # 0 = failover_seconds / 3
    shard_discovery_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.iterator_type not in ITERATOR_TYPES:
            raise ValueError(f"iterator_type: expected one of {', '.join(ITERATOR_TYPES)}, got {self.iterator_type!r}")
        if self.iterator_type == "AT_TIMESTAMP" and (self.start_timestamp is None or self.start_timestamp.tzinfo is None):
            raise ValueError("AT_TIMESTAMP needs a start_timestamp with a UTC offset")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")

    @classmethod
    def from_aws(cls, stream: str, aws: AwsConfig, batch_size: int = 5000, poll_interval: float = 0.2) -> "KinesisReaderSettings":
        """The reader's part of `[aws]`, with the pipeline's batch size and idle poll interval."""
        start_timestamp = None
        if aws.iterator_type == "AT_TIMESTAMP":
            start_timestamp = datetime.fromisoformat(aws.start_timestamp)
            if start_timestamp.tzinfo is None:
                raise ValueError(f"[aws] start_timestamp needs a UTC offset: {aws.start_timestamp!r}")
        return cls(
            stream=stream,
            worker_id=aws.worker_id,
            batch_size=max(1, batch_size),
            poll_interval=poll_interval,
            iterator_type=aws.iterator_type,
            start_timestamp=start_timestamp,
            polls_per_second=aws.polls_per_second,
            get_records_limit=aws.get_records_limit,
            queue_batches=aws.queue_batches,
            failover_seconds=aws.failover_seconds,
            lease_renew_seconds=aws.lease_renew_seconds,
            shard_discovery_seconds=aws.shard_discovery_seconds,
        )
