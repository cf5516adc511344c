"""`kinesis:STREAM` writer: PutRecords in batches, resending only what failed.

Usage::

    writer = KinesisWriter("events", settings.aws, create_resources=True)   # creates the stream
    accepted = writer.send(lines)          # NDJSON lines, without newline
    for rejected in writer.take_rejected():
        ...                                # dead-letter them (reason: oversize)
    writer.close()

- A call carries at most 500 records and 5 MiB (data plus partition keys).
- A record whose data plus partition key exceeds 1 MiB can never be written:
  it is not sent, `send` does not count it, and it is kept for
  `take_rejected()` so the caller dead-letters it.
- The partition key is the record's `partition_key` field (JSON; default
  `customer_id`), so one customer's events share a shard (and their
  duplicates meet in one partition's dedup). A record without it gets a digest
  of its bytes, which is stable for the same record.
- A 200 response with FailedRecordCount > 0: only the entries that came back
  with an ErrorCode are resent. Throttling (ProvisionedThroughputExceeded) and
  other retryable errors of the whole call are retried the same way. Waits are
  capped exponential backoff with full jitter. After `send_timeout` seconds
  without getting everything accepted, `send` raises `TransportFull`.
- `send` returns only once every counted record was accepted by Kinesis; a
  record is never reported written unless it was.

Retries can reorder records within a shard; the window counter does not rely
on order beyond the configured lateness. One PutRecords is in flight per
writer, which keeps per-shard order otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from typing import Any, Callable, Sequence

import botocore.exceptions

from aws.clients import aws_client
from aws.errors import error_code
from aws.resources import ensure_stream
from aws.settings import AwsConfig
from producers.transport import RejectedRecord, TransportFull
from resilience.backoff import Backoff

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 << 20
MAX_RECORD_BYTES = 1 << 20  # data + partition key
MAX_PARTITION_KEY_CHARS = 256

# Whole-call failures worth another try; anything else is a bug or a
# configuration error and is raised at once.
RETRYABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
    "RequestLimitExceeded",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSThrottlingException",
})

log = logging.getLogger(__name__)


def partition_key_of(record: bytes, field: str) -> str:
    """The record's `field` as a Kinesis partition key (1..256 characters)."""
    try:
        value = json.loads(record).get(field)
    except (ValueError, AttributeError):
        value = None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value)
        if 0 < len(text) <= MAX_PARTITION_KEY_CHARS:
            return text
    return hashlib.md5(record).hexdigest()


class KinesisWriter:
    def __init__(
        self,
        stream: str,
        config: AwsConfig,
        create_resources: bool = False,
        client: Any = None,
        partition_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.stream = stream
        self.partition_key = partition_key or config.partition_key
        self.client = client or aws_client("kinesis", config)
        self._sleep = sleep
        self._backoff = Backoff(config.backoff_base, config.backoff_cap, rng=rng or random.Random())
        if client is None or create_resources:
            ensure_stream(self.client, stream, create_resources, config.shard_count)
        self._rejected: list[RejectedRecord] = []
        # Statistics, for the bench and the tests.
        self.calls = 0
        self.records_accepted = 0
        self.entries_resent = 0
        self.throttled_calls = 0

    def send(self, records: Sequence[bytes]) -> int:
        """Write `records`; returns how many Kinesis accepted (all but the rejected)."""
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        accepted = 0
        for index, record in enumerate(records):
            data = bytes(record)
            key = partition_key_of(data, self.partition_key)
            size = len(data) + len(key.encode())
            if size > MAX_RECORD_BYTES:
                self._rejected.append(
                    RejectedRecord(index, data, f"record and partition key are {size} bytes, Kinesis takes at most {MAX_RECORD_BYTES}")
                )
                continue
            if batch and (len(batch) == MAX_BATCH_RECORDS or batch_bytes + size > MAX_BATCH_BYTES):
                accepted += self._put(batch)
                batch, batch_bytes = [], 0
            batch.append({"Data": data, "PartitionKey": key})
            batch_bytes += size
        if batch:
            accepted += self._put(batch)
        return accepted

    def take_rejected(self) -> list[RejectedRecord]:
        """Records `send` refused since the last call (and forget them)."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _put(self, entries: list[dict[str, Any]]) -> int:
        pending = entries
        attempt = 0
        deadline = time.monotonic() + self.config.send_timeout
        while True:
            try:
                self.calls += 1
                response = self.client.put_records(StreamName=self.stream, Records=pending)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in RETRYABLE_CODES:
                    raise
                self.throttled_calls += 1
                reason = error_code(exc)
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                reason = type(exc).__name__
            else:
                results = response["Records"]
                failed = [entry for entry, result in zip(pending, results) if result.get("ErrorCode")]
                self.records_accepted += len(pending) - len(failed)
                if not failed:
                    return len(entries)
                codes = sorted({result["ErrorCode"] for result in results if result.get("ErrorCode")})
                reason = f"{len(failed)} of {len(pending)} entries failed: {', '.join(codes)}"
                self.entries_resent += len(failed)
                pending = failed
            if time.monotonic() >= deadline:
                raise TransportFull(
                    f"kinesis stream {self.stream!r}: {len(pending)} records not accepted after "
                    f"{self.config.send_timeout:g}s ({reason})"
                )
            delay = self._backoff.delay(attempt)
            log.debug("kinesis %s: %s; retrying in %.3fs", self.stream, reason, delay)
            self._sleep(delay)
            attempt += 1

    def close(self) -> None:
        pass
